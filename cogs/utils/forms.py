"""Fields the bot's forms (modals) share."""

from __future__ import annotations

from typing import Any

import discord

from inference.request import MAX_PROMPT_CHARS


def prompt_input(label: str, *, required: bool, placeholder: str) -> discord.ui.TextInput[Any]:
    """A paragraph for a prompt, no longer than a request's prompt may be."""
    return discord.ui.TextInput(
        label=label,
        custom_id="prompt",
        style=discord.TextStyle.paragraph,
        required=required,
        max_length=MAX_PROMPT_CHARS,
        placeholder=placeholder,
    )
