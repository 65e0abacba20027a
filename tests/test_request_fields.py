"""Each request field (and takes) is declared once (inference.request): /generate, the CLI and validation
agree with it."""

from __future__ import annotations

from typing import Any

import click
import pytest
from discord import AppCommandOptionType, app_commands

from bot.app import MusicGenBot
from bot.config import BotConfig
from cogs.generate import GenerateCog
from inference.__main__ import generate as generate_command
from inference.request import (
    GENERATE_FIELDS,
    TAKES_FIELDS,
    GenerationRequest,
    RequestError,
    RequestField,
    Takes,
)

SLASH_TYPES = {
    str: AppCommandOptionType.string,
    int: AppCommandOptionType.integer,
    float: AppCommandOptionType.number,
    bool: AppCommandOptionType.boolean,
}
# The CLI works these out itself when they are left out: the model from the config, the format
# from the --output extension.
CLI_PICKED = {"model_version", "output_format"}


def declared_slash_option(request_field: RequestField) -> dict[str, Any]:
    """The /generate option Discord should be sent for a field, as discord.py writes it."""
    option_type = AppCommandOptionType.attachment if request_field.clip else SLASH_TYPES[request_field.type]
    option: dict[str, Any] = {
        "type": option_type.value,
        "name": request_field.name,
        "description": request_field.help,
        "required": False,
    }
    bounds = ("min_length", "max_length") if request_field.type is str else ("min_value", "max_value")
    for key, bound in zip(bounds, (request_field.lowest_input, request_field.maximum), strict=True):
        if bound is not None:
            option[key] = bound
    if request_field.choices:
        option["choices"] = [{"name": value, "value": value} for value in request_field.choices]
    return option


def declared_slash_default(request_field: RequestField) -> Any:
    if request_field.picked_when_left_out:
        return None
    if request_field.default is None and request_field.unset is not None:
        return request_field.unset
    return request_field.default


async def test_the_generate_command_offers_every_field_as_declared() -> None:
    bot = MusicGenBot(BotConfig())
    await bot.add_cog(GenerateCog(bot))
    command = bot.tree.get_command("generate")
    assert isinstance(command, app_commands.Command)
    sent = {option["name"]: option for option in command.to_dict(bot.tree)["options"]}

    assert sent == {f.name: declared_slash_option(f) for f in GENERATE_FIELDS}
    defaults = {parameter.name: parameter.default for parameter in command.parameters}
    assert defaults == {f.name: declared_slash_default(f) for f in GENERATE_FIELDS}
    assert all(len(f.help) <= 100 for f in GENERATE_FIELDS)  # Discord's limit for a description


def cli_option(name: str) -> click.Option:
    (option,) = [p for p in generate_command.params if isinstance(p, click.Option) and p.name == name]
    return option


@pytest.mark.parametrize("request_field", GENERATE_FIELDS, ids=lambda f: f.name)
def test_the_cli_flag_of_each_field_is_built_from_its_declaration(request_field: RequestField) -> None:
    option = cli_option(request_field.name)
    flag = "--" + request_field.name.replace("_", "-")
    assert option.opts == [flag]
    assert option.help is not None and option.help.startswith(request_field.help)
    assert request_field.cli_help in option.help
    if request_field.type is bool:
        assert option.is_flag and option.secondary_opts == ["--no-" + flag[2:]]
    elif request_field.clip:
        assert isinstance(option.type, click.Path) and option.type.exists
    elif request_field.choices:
        assert isinstance(option.type, click.Choice) and tuple(option.type.choices) == request_field.choices
    else:
        assert option.type.name == {str: "text", int: "integer", float: "float"}[request_field.type]
    expected_default = None if request_field.name in CLI_PICKED else request_field.default
    assert option.default == expected_default


def with_value(request_field: RequestField, value: Any) -> GenerationRequest | Takes:
    """What a front end validates with `request_field` set to `value`: a request, or the takes."""
    if request_field in TAKES_FIELDS:
        return Takes(**{request_field.name: value})
    base = GenerationRequest(model_version="small", prompt="a tune", input_audio="clip.wav")
    return base.replace(**{request_field.name: value})


def values_outside(request_field: RequestField) -> list[Any]:
    """Just below the lowest input and just above the highest (a text: one character too many)."""
    if request_field.type is str:
        return ["x" * (int(request_field.maximum) + 1)] if request_field.maximum is not None else []
    step = 1 if request_field.type is int else 0.5
    outside = []
    if request_field.lowest_input is not None:
        outside.append(request_field.lowest_input - step)
    if request_field.unset is not None and request_field.minimum is not None:
        between = request_field.minimum - step  # below the range, above the "unset" spelling
        if between > request_field.unset:
            outside.append(between)
    if request_field.maximum is not None:
        outside.append(request_field.maximum + step)
    return outside


BOUNDED = [f for f in GENERATE_FIELDS if f.minimum is not None or f.maximum is not None]


@pytest.mark.parametrize("request_field", BOUNDED, ids=lambda f: f.name)
def test_validation_refuses_exactly_what_the_declared_range_leaves_out(request_field: RequestField) -> None:
    for value in values_outside(request_field):
        with pytest.raises(RequestError):
            with_value(request_field, value).validate()
    inside = [request_field.maximum, request_field.unset]
    # continuation_end must also come after continuation_start (0 or more): its bound 0 itself never passes.
    if request_field.name != "continuation_end":
        inside.append(request_field.minimum)
    for bound in inside:
        if bound is None:
            continue
        value = "x" * int(bound) if request_field.type is str else bound
        with_value(request_field, value).validate()
