"""What the jam cog (cogs/jam.py) posts in a jam's thread: its name, the welcome, the credits, and
the piece with its picture, as files that each try of a post can upload again."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import discord

from bot.audio.editing import encode_to_fit, new_part_path_for
from bot.audio.waveform import MarkedPart, waveform_png_of_file
from bot.pipeline.delivery import EMBED_COLOUR, REQUEST_LIMIT_BYTES, Attachment
from bot.replies import clip_text, shown_member_text
from bot.storage.jams import Contributor, Jam, JamState, JamTurn

logger = logging.getLogger(__name__)

THREAD_NAME_LIMIT = 100  # Discord's limit on channel (thread) names
PICTURE_ALLOWANCE_BYTES = 256 * 1024
NO_MENTIONS = discord.AllowedMentions.none()
CREDITS_CHARS = 3500
# Characters that would turn a thread name into markup or a mention where it is quoted.
_NAME_MARKUP = re.compile(r"[\\*_~|`>#\[\]()<@:]")


def thread_name(prompt: str) -> str:
    """The prompt as a thread name: one line without markdown or mention syntax, cut to 100 characters.

    A name is shown as typed wherever Discord lists threads, so escaping would show backslashes:
    the characters that make links, mentions and markup are left out instead.
    """
    plain = _NAME_MARKUP.sub(" ", prompt)
    return " ".join(plain.split())[:THREAD_NAME_LIMIT] or "jam"


def clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


def post_nonce(jam: Jam, post: str) -> str:
    """A nonce for one of the jam's posts (Discord returns the message a nonce already made, so a
    retry whose answer was lost posts nothing twice). Discord keeps nonces per author, not per
    channel, and allows 25 characters: the thread's id makes it unique, hashed to fit."""
    return "jam-" + hashlib.blake2b(f"{jam.thread_id}:{post}".encode(), digest_size=8).hexdigest()


def picture_name(attachments: Sequence[Attachment]) -> str | None:
    return next((a.filename for a in attachments if a.filename.endswith(".png")), None)


def credits_lines(state: JamState) -> list[str]:
    """One line per finished turn: who, what, and where it lies in the piece."""
    lines = []
    for turn in state.done:
        prompt = shown_member_text(turn.prompt or state.jam.prompt, 80)
        lines.append(
            f"{turn.number}. <@{turn.user_id}> · *{prompt}* · {clock(turn.start_s or 0)}–{clock(turn.end_s or 0)}"
        )
    return lines


def credits_embed(state: JamState, title: str, *, footer: str, picture_name: str | None) -> discord.Embed:
    """The jam's prompt, who added what, the length so far, and the picture of the piece."""
    jam = state.jam
    embed = discord.Embed(title=clip_text(title, 256), colour=EMBED_COLOUR)
    lines = credits_lines(state)
    # The latest turns that fit, well inside Discord's 4096 characters (and 6000 for the whole embed).
    shown: list[str] = []
    for line in reversed(lines):
        if sum(len(kept) + 1 for kept in shown) + len(line) > CREDITS_CHARS:
            shown.append("…")
            break
        shown.append(line)
    embed.description = "\n".join(reversed(shown)) or "No turn has been played yet."
    embed.add_field(
        name="Piece", value=f"{state.piece_seconds:.1f} s · {len(lines)} of {jam.max_turns} turns"
    )
    embed.add_field(name="Model", value=jam.model_version)
    embed.add_field(name="Started by", value=f"<@{jam.starter_id}>")
    if picture_name is not None:
        embed.set_image(url=f"attachment://{picture_name}")
    embed.set_footer(text=footer[:2048])
    return embed


def welcome_text(jam: Jam, max_seconds: float) -> str:
    return (
        f"🎶 **Jam: {shown_member_text(jam.prompt, 300)}** · started by <@{jam.starter_id}> · model {jam.model_version} · "
        f"{jam.turn_seconds} s a turn · up to {jam.max_turns} turns or {max_seconds:g} s.\n"
        "Take a turn with `/jam add prompt` here (or mention me with your prompt); each turn continues the "
        "piece so far, one at a time, in order. `/jam export` posts the whole piece; the starter (or Manage "
        "Threads) ends the jam with `/jam end`."
    )


def permission_text(missing: Sequence[str], channel: discord.abc.GuildChannel) -> str:
    names = " and ".join(f"**{name}**" for name in missing)
    return (
        f"I can't run a jam in #{channel.name}: a jam lives in its own thread, and I need the {names} "
        f"permission{'s' if len(missing) > 1 else ''} there. Someone with Manage Channels can grant "
        "them to my role in the channel's settings → Permissions."
    )


async def piece_attachments(
    state: JamState, stem: str, limit: int, *, output_format: str = "wav"
) -> tuple[list[Attachment], str]:
    """The whole piece (MP3 when asked, or when a WAV is too large) and its picture, with a note."""
    assert state.piece_path is not None
    piece = Path(state.piece_path)
    if output_format == "mp3":
        # Under the WAV's own size, so that the MP3 is made (at the best bitrate that fits).
        limit = min(limit, piece.stat().st_size - 1)
    fitted = await asyncio.to_thread(encode_to_fit, piece, limit)
    attachments: list[Attachment] = []
    note = ""
    if fitted is None:
        note = f"The whole piece ({state.piece_seconds:.0f} s) is too large for this server's uploads even as MP3."
    else:
        attachments.append(Attachment(f"{stem}.{fitted.format}", path=fitted.path))
        if output_format == "wav" and fitted.format == "mp3":
            note = f"The WAV would be over this server's upload limit, so the piece is MP3 ({fitted.bitrate_kbps} kbit/s)."
    picture = await piece_picture(state)
    if picture is not None:
        attachments.append(Attachment(f"{stem}.png", data=picture))
    return attachments, note


async def piece_picture(state: JamState) -> bytes | None:
    """The whole piece with each member's part marked (None if it cannot be drawn)."""
    if state.piece_path is None:
        return None
    parts = [MarkedPart(t.start_s or 0.0, t.end_s or 0.0, f"{t.number}. {t.user_name}") for t in state.done]
    try:
        return await asyncio.to_thread(waveform_png_of_file, state.piece_path, parts=parts)
    except Exception:
        logger.warning("jam %s: could not draw the piece", state.jam.id, exc_info=True)
        return None


async def final_attachments(state: JamState, limit: int) -> tuple[list[Attachment], str]:
    """The final piece and its picture, or a note saying why there is none."""
    if state.piece_path is None:
        return [], ""
    if state.piece_missing:
        return [], "The piece's audio is missing from the bot's storage, so only the credits are posted."
    return await piece_attachments(state, f"jam-{state.jam.id}-final", limit)


def turn_text(state: JamState, turn: JamTurn, *, next_turn_open: bool) -> str:
    """A played turn's post: who added what, and how long the piece is now (`state`: with the turn).

    `next_turn_open`: the jam may grow further, so the post invites the next turn when none waits.
    """
    jam = state.jam
    text = (
        f"🎶 **Turn {turn.number} of {jam.max_turns}** by <@{turn.user_id}>: "
        f"*{shown_member_text(turn.prompt or jam.prompt, 200)}* (+{turn.seconds} s). "
        f"The piece is now **{state.piece_seconds:.1f} s**."
    )
    if not state.waiting and next_turn_open:
        text += " `/jam add` takes the next turn."
    return text


async def turn_attachments(
    state: JamState, turn: JamTurn, output_path: str, limit: int
) -> tuple[list[Attachment], str]:
    """A played turn's files: its new part (after the opening turn), the whole piece and its picture,
    within `limit` per file and Discord's limit on the whole request; and a note on what changed."""
    jam = state.jam
    attachments: list[Attachment] = []
    new_part = new_part_path_for(output_path)
    if turn.number != 1 and new_part.is_file():
        attachments.append(Attachment(f"jam-{jam.id}-turn-{turn.number}-new.wav", path=new_part))
    used = new_part.stat().st_size if attachments else 0
    piece, note = await piece_attachments(
        state,
        f"jam-{jam.id}-turn-{turn.number}-piece",
        min(limit, REQUEST_LIMIT_BYTES - used - PICTURE_ALLOWANCE_BYTES),
    )
    return attachments + piece, note


def final_text(state: JamState, contributors: Sequence[Contributor], reason: str, note: str) -> str:
    """The final post: why the jam is over, and who played how much of the piece."""
    summary = (
        f"{len(state.done)} turn{'s' if len(state.done) != 1 else ''}, {state.piece_seconds:.1f} s, by "
        + ", ".join(f"<@{c.user_id}> ({c.seconds:.0f} s)" for c in contributors)
        if contributors
        else "no turn was played"
    )
    return clip_text(
        "\n".join(part for part in (f"🏁 **The jam is over**: {reason}. {summary}.", note) if part), 2000
    )
