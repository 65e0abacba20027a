"""Private (ephemeral) replies that work whatever state the interaction is in."""

from __future__ import annotations

import contextlib

import discord

# interaction.extras key set when a command deferred publicly ("… is thinking" visible to all).
PUBLIC_DEFER = "musicgen_public_defer"
# What a member is told when the bot itself failed (the details go to the log).
INTERNAL_ERROR_TEXT = "Something went wrong on the bot's side. It has been logged; please try again."


async def defer_publicly(interaction: discord.Interaction) -> None:
    """Acknowledge within Discord's 3 s with a public "thinking…" message that becomes the status message."""
    await interaction.response.defer(thinking=True)
    interaction.extras[PUBLIC_DEFER] = True


async def reply_privately(interaction: discord.Interaction, text: str) -> None:
    """Send `text` so that only the member sees it.

    Before any response this is an ephemeral response. After a public defer, the first followup
    would replace the public "thinking…" message (and take its visibility). So the placeholder is
    completed with a neutral edit and deleted, and the text goes out as a new ephemeral followup.
    (Editing first makes the followup a new message whether or not Discord still considers the
    deleted placeholder pending.)
    """
    if not interaction.response.is_done():
        await interaction.response.send_message(text, ephemeral=True)
        return
    if interaction.extras.pop(PUBLIC_DEFER, False):
        with contextlib.suppress(discord.HTTPException):
            await interaction.edit_original_response(content="Not queued.")
            await interaction.delete_original_response()
    await interaction.followup.send(text, ephemeral=True)
