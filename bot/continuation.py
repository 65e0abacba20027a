"""Continuing audio posted on Discord: which clip, how many seconds, the request, and the whole piece.

Shared by every way of asking (the message context menu, a reply that mentions the bot, the
Continue button under a result, jam turns): they all build the request with `continuation_request`
and their finished job becomes the whole piece through `finish_continuation`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

import discord

from bot.audio.editing import ContextWindow, stitch_files
from bot.audio.files import looks_like_audio
from bot.storage.jobs import ContinuationSource, Job
from inference.protocol import GenerationResult
from inference.request import DEFAULT_MAX_DURATION_S, MIN_DURATION_S, GenerationRequest, RequestError

DEFAULT_NEW_SECONDS = 8

# "12s", "12 s", "12 sec", "12 secs", "12 second(s)"; a number alone is part of the prompt.
_UNIT = r"(?:seconds|second|secs|sec|s)"
_NUMBER = r"\d+(?:[.,]\d+)?"
# A duration stands first or last in a mention (a "12s, " or " - " after it goes with it): in the
# middle of the words it is too often part of the description ("a 2 second pause every bar").
_LEADING_DURATION = re.compile(
    rf"^\s*(?P<number>{_NUMBER})\s*(?P<unit>{_UNIT})(?=[\s,;:.!?]|$)(?:\s*[,;:]|\s+[-–—](?=\s))?",
    re.IGNORECASE,
)
_TRAILING_DURATION = re.compile(
    rf"(?:^|(?<=[\s,;:]))(?P<number>{_NUMBER})\s*(?P<unit>{_UNIT})[.!?]*\s*$", re.IGNORECASE
)
# "1 sec of silence", "10 seconds of rain": a length inside the description, not the job's.
# A number with `s` alone past this reads as a plural ("spin old 45s"): longer durations are typed
# with a longer unit ("45 sec").
_MOST_SECONDS_WITH_S_ALONE = 30
_FOLLOWED_BY_OF = re.compile(r"\s+of\b", re.IGNORECASE)


def audio_attachments(message: discord.Message) -> list[discord.Attachment]:
    """The message's attachments that look like audio (voice messages included), in order."""
    return [a for a in message.attachments if looks_like_audio(a.filename, a.content_type)]


def posted_audio_of(message: discord.Message, job_id: int) -> discord.Attachment | None:
    """A job's own audio in a message the bot posted (one of several under a request's takes; never
    its waveform picture, `musicgen-<id>.png`)."""
    prefix = f"musicgen-{job_id}."
    return next((clip for clip in audio_attachments(message) if clip.filename.startswith(prefix)), None)


def parse_seconds(text: str | None, *, max_seconds: int = DEFAULT_MAX_DURATION_S) -> int:
    """The seconds to add, as typed in a modal ("8", "8s", "8 seconds"); empty means the default.
    `max_seconds`: the most a member may ask for here (`[limits] max_duration_s`)."""
    text = (text or "").strip()
    if not text:
        return DEFAULT_NEW_SECONDS
    match = re.fullmatch(rf"([^\s]+?)\s*{_UNIT}?", text, re.IGNORECASE)
    value = match.group(1) if match else text
    try:
        number = float(value.replace(",", "."))
    except ValueError:
        raise RequestError(
            f"seconds must be a whole number of seconds, like 8 (not {text[:20]!r})."
        ) from None
    return _whole_seconds(number, text, max_seconds)


def _whole_seconds(number: float, typed: str, max_seconds: int) -> int:
    if not math.isfinite(number) or number != int(number):
        raise RequestError(f"seconds must be a whole number of seconds, like 8 (not {typed[:20]!r}).")
    if not MIN_DURATION_S <= number <= max_seconds:
        raise RequestError(
            f"seconds must be between {MIN_DURATION_S} and {max_seconds} (got {int(number)}): "
            f"this bot makes at most {max_seconds} s at a time."
        )
    return int(number)


@dataclass(frozen=True)
class MentionRequest:
    """What a reply that mentions the bot asks for: "@bot 12s add brass and drums"."""

    prompt: str | None
    seconds: int | None  # None: no duration was typed (the caller's default applies)

    def seconds_or(self, default: int) -> int:
        return self.seconds if self.seconds is not None else default


def mentions_bot(content: str, bot_user_id: int) -> bool:
    """A mention typed in the text (the automatic ping of a reply puts none there)."""
    return re.search(rf"<@!?{bot_user_id}>", content) is not None


def parse_mention_request(
    content: str, bot_user_id: int, *, max_seconds: int = DEFAULT_MAX_DURATION_S
) -> MentionRequest:
    """The prompt and seconds of "@bot [10s] [prompt] [10s]"; every other word is the prompt.

    Only an unambiguous duration is taken: a whole number with a unit, first or last (around the
    mention). `s` alone on a multiple of ten or outside 1-30 is a decade or a plural ("80s
    synthwave", "20s jazz", "1980s disco", "spin old 45s"; "45 sec" asks for 45 s), and a duration
    followed by "of" describes the music ("1 sec of silence"): both stay in the prompt. Two
    durations, or one outside 1 to `max_seconds` (`[limits] max_duration_s`), are refused.
    """
    pieces = [" ".join(piece.split()) for piece in re.split(rf"<@!?{bot_user_id}>", content)]
    found: list[tuple[int, re.Match[str]]] = []
    for index, piece in enumerate(pieces):
        taken_up_to = 0
        leading = _LEADING_DURATION.match(piece)
        if leading is not None and _is_duration(leading, piece, max_seconds):
            found.append((index, leading))
            taken_up_to = leading.end()
        trailing = _TRAILING_DURATION.search(piece, taken_up_to)
        if trailing is not None and _is_duration(trailing, piece, max_seconds):
            found.append((index, trailing))
    if len(found) > 1:
        typed = " and ".join(f"`{match.group('number')} {match.group('unit')}`" for _, match in found)
        raise RequestError(f"Type the seconds once: I found {typed}. Like `12s add brass`.")
    seconds = None
    if found:
        index, match = found[0]
        typed = f"{match.group('number')} {match.group('unit')}"
        seconds = _whole_seconds(float(match.group("number").replace(",", ".")), typed, max_seconds)
        piece = pieces[index]
        before, after = piece[: match.start()], piece[match.end() :]
        # The comma or dash that set the duration off goes with it.
        pieces[index] = re.sub(r"(?:\s*[,;:]|\s+[-–—])?\s*$", "", before) + after
    prompt = " ".join(" ".join(pieces).split()) or None
    return MentionRequest(prompt=prompt, seconds=seconds)


def _is_duration(match: re.Match[str], text: str, max_seconds: int) -> bool:
    """Seconds, not a decade, a plural or a length inside the description."""
    if _FOLLOWED_BY_OF.match(text, match.end("unit")):
        return False
    number, unit = match.group("number"), match.group("unit")
    if unit.lower() == "s" and number.isdigit():
        value = int(number)
        return value % 10 != 0 and MIN_DURATION_S <= value <= min(max_seconds, _MOST_SECONDS_WITH_S_ALONE)
    return True


def continuation_request(
    *,
    model_version: str,
    prompt: str | None,
    source_path: Path,
    seconds: int,
    window: ContextWindow,
    max_seconds: int = DEFAULT_MAX_DURATION_S,
) -> GenerationRequest:
    """The job's request: continue the stored source from the start of its context window, adding
    `seconds` (at most `max_seconds`, `[limits] max_duration_s`: past the model's window the piece is
    made window by window)."""
    return GenerationRequest(
        model_version=model_version,  # type: ignore[arg-type]
        prompt=prompt,
        input_audio=str(source_path),
        duration=seconds,
        continuation=True,
        continuation_start=window.start_s,
        continuation_end=None,
    ).validate(max_duration_s=max_seconds)


def continuation_source(message: discord.Message | None, window: ContextWindow) -> ContinuationSource:
    """What the job row records about the source message and the context window."""
    return ContinuationSource(
        message_id=message.id if message is not None else None,
        channel_id=message.channel.id if message is not None else None,
        source_seconds=window.source_seconds,
        context_start_s=window.start_s,
        context_s=window.seconds,
    )


async def finish_continuation(
    job: Job, result: GenerationResult, *, timeout_s: float, max_seconds: float
) -> GenerationResult:
    """The whole piece (source + new seconds, as WAV) in place of the model's output."""
    assert job.continues is not None and job.request.input_audio is not None
    output = Path(result.output_path)
    stitched = await asyncio.to_thread(
        stitch_files,
        job.request.input_audio,
        output,
        output.with_name(f"{output.stem}-piece.wav"),
        new_seconds=job.request.duration,
        context_start_s=job.request.continuation_start,
        timeout_s=timeout_s,
        max_seconds=max_seconds,
    )
    return dataclasses.replace(
        result, output_path=str(stitched.piece_path), output_format="wav", duration_s=stitched.seconds
    )
