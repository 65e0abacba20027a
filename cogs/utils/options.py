"""Slash command options built from declarations the cogs share (choices, the request's fields)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from discord import app_commands
from discord.app_commands import Choice

from inference.request import GENERATE_FIELDS


def choices(values: Iterable[str]) -> list[Choice[str]]:
    """One choice per value, shown as the value itself."""
    return [Choice(name=value, value=value) for value in values]


def request_descriptions() -> dict[str, str]:
    """Every request field's (and takes') slash option description, by field name."""
    return {request_field.name: request_field.help for request_field in GENERATE_FIELDS}


def request_choices() -> dict[str, list[Choice[str]]]:
    """The choices of every request field that has them (model_version, output_format, ...)."""
    return {
        request_field.name: choices(request_field.choices)
        for request_field in GENERATE_FIELDS
        if request_field.choices
    }


def set_option_maximum(command: app_commands.Command[Any, ..., Any], name: str, maximum: int) -> None:
    """Give a slash option the maximum this bot is configured with (a `Range` annotation holds the
    default's). discord.py reads the range from the signature once; each cog instance has its own
    copy of its commands' parameters, where a copy of this one with the new maximum takes its place."""
    parameters = command._params  # discord.py has no setter for an option's range
    parameters[name] = dataclasses.replace(parameters[name], max_value=maximum)
