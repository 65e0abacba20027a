"""Discord's rules for message components (buttons in action rows) and modals, as the API enforces them.

Each check raises the 400 50035 Invalid Form Body Discord answers, pointing at the offending field.
"""

from __future__ import annotations

from typing import Any

from .http_utils import form_error


class ComponentLimit:
    CUSTOM_ID = 100
    BUTTON_LABEL = 80
    MODAL_TITLE = 45
    MODAL_ROWS = 5
    TEXT_INPUT_LABEL = 45
    TEXT_INPUT_LENGTH = 4000
    TEXT_INPUT_PLACEHOLDER = 100


ACTION_ROW, BUTTON, TEXT_INPUT = 1, 2, 4
LINK_STYLE, PREMIUM_STYLE = 5, 6


def _check_length(path: str, value: Any, low: int, high: int) -> None:
    if not isinstance(value, str) or not low <= len(value) <= high:
        raise form_error(path, "BASE_TYPE_BAD_LENGTH", f"Must be between {low} and {high} in length.")


def validate_buttons(rows: list[dict[str, Any]]) -> None:
    """Buttons: a custom id of 1..100 characters, unique in the message (links: a url and none), labels ≤ 80."""
    seen: set[str] = set()
    for row_index, row in enumerate(rows):
        for index, component in enumerate(row.get("components") or []):
            path = f"components.{row_index}.components.{index}"
            if component.get("type") != BUTTON:
                continue
            style = component.get("style")
            if style not in (1, 2, 3, 4, LINK_STYLE, PREMIUM_STYLE):
                raise form_error(
                    f"{path}.style", "BASE_TYPE_CHOICES", "Value must be one of (1, 2, 3, 4, 5, 6)."
                )
            if component.get("label") is not None:
                _check_length(f"{path}.label", component["label"], 0, ComponentLimit.BUTTON_LABEL)
            if style == LINK_STYLE:
                if not component.get("url") or "custom_id" in component:
                    raise form_error(
                        path, "BUTTON_COMPONENT_INVALID", "A link button has a url and no custom_id."
                    )
                continue
            if style == PREMIUM_STYLE:
                continue
            custom_id = component.get("custom_id")
            _check_length(f"{path}.custom_id", custom_id, 1, ComponentLimit.CUSTOM_ID)
            if custom_id in seen:
                raise form_error(
                    f"{path}.custom_id",
                    "COMPONENT_CUSTOM_ID_DUPLICATED",
                    "Component custom id cannot be duplicated",
                )
            seen.add(custom_id)
            if not component.get("label") and not component.get("emoji"):
                raise form_error(path, "BUTTON_COMPONENT_INVALID", "A button needs a label or an emoji.")


def validate_modal(data: dict[str, Any]) -> None:
    """A modal (callback type 9): title ≤ 45, custom id ≤ 100, 1..5 action rows of exactly one text input."""
    _check_length("data.title", data.get("title"), 1, ComponentLimit.MODAL_TITLE)
    _check_length("data.custom_id", data.get("custom_id"), 1, ComponentLimit.CUSTOM_ID)
    rows = data.get("components") or []
    if not 1 <= len(rows) <= ComponentLimit.MODAL_ROWS:
        raise form_error("data.components", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length.")
    seen: set[str] = set()
    for row_index, row in enumerate(rows):
        path = f"data.components.{row_index}"
        inputs = row.get("components") or []
        if row.get("type") != ACTION_ROW or len(inputs) != 1 or inputs[0].get("type") != TEXT_INPUT:
            raise form_error(
                path, "MODAL_ROW_INVALID", "Each modal row is an action row with one text input."
            )
        text_input = inputs[0]
        path = f"{path}.components.0"
        _check_length(f"{path}.custom_id", text_input.get("custom_id"), 1, ComponentLimit.CUSTOM_ID)
        if text_input["custom_id"] in seen:
            raise form_error(
                f"{path}.custom_id",
                "COMPONENT_CUSTOM_ID_DUPLICATED",
                "Component custom id cannot be duplicated",
            )
        seen.add(text_input["custom_id"])
        _check_length(f"{path}.label", text_input.get("label"), 1, ComponentLimit.TEXT_INPUT_LABEL)
        if text_input.get("style") not in (1, 2):
            raise form_error(f"{path}.style", "BASE_TYPE_CHOICES", "Value must be one of (1, 2).")
        low = text_input.get("min_length", 0)
        high = text_input.get("max_length", ComponentLimit.TEXT_INPUT_LENGTH)
        if not (
            0 <= low <= ComponentLimit.TEXT_INPUT_LENGTH and 1 <= high <= ComponentLimit.TEXT_INPUT_LENGTH
        ):
            raise form_error(f"{path}.max_length", "NUMBER_TYPE_MAX", "Must be between 1 and 4000.")
        if low > high:
            raise form_error(f"{path}.min_length", "NUMBER_TYPE_MAX", "min_length is over max_length.")
        if "value" in text_input:
            _check_length(f"{path}.value", text_input["value"], 0, high)
        if "placeholder" in text_input:
            _check_length(
                f"{path}.placeholder", text_input["placeholder"], 0, ComponentLimit.TEXT_INPUT_PLACEHOLDER
            )


def modal_text_inputs(modal: dict[str, Any]) -> list[dict[str, Any]]:
    """The text inputs of a modal the bot sent, in order."""
    return [row["components"][0] for row in modal.get("components") or []]
