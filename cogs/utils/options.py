"""Slash command options built from declarations the cogs share (choices, the request's fields)."""

from __future__ import annotations

from collections.abc import Iterable

from discord.app_commands import Choice

from inference.request import REQUEST_FIELDS


def choices(values: Iterable[str]) -> list[Choice[str]]:
    """One choice per value, shown as the value itself."""
    return [Choice(name=value, value=value) for value in values]


def request_descriptions() -> dict[str, str]:
    """Every request field's slash option description, by field name."""
    return {request_field.name: request_field.help for request_field in REQUEST_FIELDS}


def request_choices() -> dict[str, list[Choice[str]]]:
    """The choices of every request field that has them (model_version, output_format, ...)."""
    return {
        request_field.name: choices(request_field.choices)
        for request_field in REQUEST_FIELDS
        if request_field.choices
    }
