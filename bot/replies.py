"""Private (ephemeral) replies that work whatever state the interaction is in."""

from __future__ import annotations

import contextlib
import logging
import re

import discord

from inference.errors import OWNER_DETAILS_MARK
from inference.request import RequestError

logger = logging.getLogger(__name__)

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
    text = clip_text(text, CONTENT_LIMIT)
    if not interaction.response.is_done():
        await interaction.response.send_message(text, ephemeral=True)
        return
    if interaction.extras.pop(PUBLIC_DEFER, False):
        with contextlib.suppress(discord.HTTPException):
            await interaction.edit_original_response(content="Not queued.")
            await interaction.delete_original_response()
    await interaction.followup.send(text, ephemeral=True)


async def answer_error(interaction: discord.Interaction, error: Exception) -> None:
    """A friendly private answer to a failed form or button: the request's own message, or the
    internal-error text (the error is logged)."""
    if isinstance(error, RequestError):
        await answer_privately(interaction, str(error))
        return
    logger.error("interaction %s failed", interaction.id, exc_info=error)
    await answer_privately(interaction, INTERNAL_ERROR_TEXT)


async def answer_privately(interaction: discord.Interaction, text: str) -> None:
    """`reply_privately` for an answer to an error: logged, not raised, when Discord refuses it."""
    try:
        await reply_privately(interaction, text)
    except discord.HTTPException:
        logger.warning("could not send an error message for interaction %s", interaction.id)


async def answer_message(message: discord.Message, text: str) -> discord.Message | None:
    """Reply to a member's message, pinging them; None (logged) if Discord refuses."""
    try:
        return await message.reply(
            text, mention_author=True, allowed_mentions=discord.AllowedMentions(replied_user=True)
        )
    except discord.HTTPException as error:
        logger.warning("could not answer message %s: %s", message.id, error)
        return None


# -- Discord's text limits -------------------------------------------------------------------------
# Discord answers 400 (50035) to a message over any of these; the bot fits its texts instead.
CONTENT_LIMIT = 2000
EMBED_TITLE_LIMIT = 256
EMBED_DESCRIPTION_LIMIT = 4096
EMBED_FIELDS_LIMIT = 25
EMBED_FIELD_NAME_LIMIT = 256
EMBED_FIELD_VALUE_LIMIT = 1024
EMBED_FOOTER_LIMIT = 2048
EMBED_AUTHOR_LIMIT = 256
EMBED_TOTAL_LIMIT = 6000
ELLIPSIS = "…"

# Characters that start markdown, masked links, mentions, headings, quotes or lists. Discord shows a
# backslash-escaped punctuation character as itself, so escaping them all costs nothing visible.
_MARKDOWN_CHARACTERS = re.compile(r"([\\*_~|`>#\-\[\]()<@:])")


def escape_member_text(text: str) -> str:
    """Text a member typed (a prompt, a file name), made safe to show in the bot's own messages.

    Escaped, it renders as typed: `[free nitro](https://…)` cannot become a masked link that looks
    like the bot's, `<@id>` / `@everyone` cannot ping or render as a mention, and `# ` no heading.
    Line breaks become spaces, so one entry stays one line.
    """
    return _MARKDOWN_CHARACTERS.sub(r"\\\1", " ".join(text.split()))


def shown_member_text(text: str, limit: int) -> str:
    """A member's text (a prompt) as the bot shows it in a message: escaped, so it renders as typed, and cut."""
    return clip_text(escape_member_text(text), limit)


def clip_text(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, with an ellipsis when something was cut.

    A cut never leaves a lone escaping backslash at the end (it would escape the ellipsis).
    """
    if len(text) <= limit:
        return text
    cut = text[: max(limit - len(ELLIPSIS), 0)]
    trailing_backslashes = len(cut) - len(cut.rstrip("\\"))
    if trailing_backslashes % 2:
        cut = cut[:-1]
    return cut + ELLIPSIS


def join_lines_within(
    lines: list[str], limit: int = CONTENT_LIMIT, *, hidden: int = 0, more: str = "… and {count} more."
) -> str:
    """Join as many leading `lines` as fit in `limit` characters, then say how many were left out
    (those cut here plus `hidden`, the ones the caller chose not to list)."""
    kept = list(lines)
    while True:
        dropped = hidden + len(lines) - len(kept)
        text = "\n".join([*kept, more.format(count=dropped)] if dropped else kept)
        if len(text) <= limit or not kept:
            return clip_text(text, limit)
        kept.pop()


def fit_embed(embed: discord.Embed) -> discord.Embed:
    """Bring an embed within every Discord limit (each part, 25 fields, 6000 characters in all).

    Parts are cut where needed; if the whole is still over 6000, the description and then the
    last fields give way, so the title, the first fields and the footer survive.
    """
    if embed.title:
        embed.title = clip_text(embed.title, EMBED_TITLE_LIMIT)
    if embed.description:
        embed.description = clip_text(embed.description, EMBED_DESCRIPTION_LIMIT)
    if embed.footer.text:
        embed.set_footer(
            text=clip_text(embed.footer.text, EMBED_FOOTER_LIMIT), icon_url=embed.footer.icon_url
        )
    if embed.author.name:
        embed.set_author(
            name=clip_text(embed.author.name, EMBED_AUTHOR_LIMIT),
            url=embed.author.url,
            icon_url=embed.author.icon_url,
        )
    fields = [
        (
            clip_text(field.name or "\u200b", EMBED_FIELD_NAME_LIMIT),
            clip_text(field.value or "\u200b", EMBED_FIELD_VALUE_LIMIT),
            bool(field.inline),
        )
        for field in embed.fields[:EMBED_FIELDS_LIMIT]
    ]
    embed.clear_fields()
    for name, value, inline in fields:
        embed.add_field(name=name, value=value, inline=inline)
    excess = len(embed) - EMBED_TOTAL_LIMIT
    if excess > 0 and embed.description:
        room = max(len(embed.description) - excess, 0)
        embed.description = clip_text(embed.description, room) if room > len(ELLIPSIS) else None
        excess = len(embed) - EMBED_TOTAL_LIMIT
    while excess > 0 and embed.fields:
        embed.remove_field(len(embed.fields) - 1)
        excess = len(embed) - EMBED_TOTAL_LIMIT
    return embed


def text_for_requester(text: str, interaction: discord.Interaction | None, job_id: int) -> str:
    """What a member is told of a refusal from the worker.

    Details meant for the bot owner (configuration, paths, exception text) go to the log, and to
    the member only if they can manage the server; everyone else gets the short sentence.
    """
    member_text, _, owner_details = text.partition(OWNER_DETAILS_MARK)
    if not owner_details:
        return text
    logger.warning("job %s was refused: %s", job_id, owner_details)
    if interaction is not None and interaction.permissions.manage_guild:
        return f"{member_text}\n(You can manage this server: {owner_details})"
    return member_text
