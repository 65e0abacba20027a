"""Members' clips stored for their jobs: checked before the download, streamed to disk, measured.

Shared by every entry point that takes a clip (`/generate`, the context menu, replies): the upload
is kept in the data dir for `/replay`, under a name the bot chose (never the member's).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import discord

from bot.audio.editing import clip_seconds
from bot.audio.files import looks_like_audio, measure_upload
from bot.config import Limits
from bot.downloads import ClipIntake, DownloadFailed, DownloadTooLarge
from bot.replies import clip_text, escape_member_text
from inference.request import RequestError

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


def shown_filename(attachment: discord.Attachment) -> str:
    """The upload's name as a reply may quote it: the member chose it, so it is cut and escaped."""
    return escape_member_text(clip_text(attachment.filename, 100))


class Uploads:
    """Checks, downloads and measures members' clips into the uploads folder."""

    def __init__(self, folder: Path, intake: ClipIntake, limits: Limits, *, decode_timeout_s: float) -> None:
        self.folder = folder
        self.intake = intake
        self.limits = limits
        self.decode_timeout_s = decode_timeout_s

    def check_before_download(self, attachment: discord.Attachment) -> None:
        max_mb = self.limits.max_attachment_mb
        if attachment.size > max_mb * MIB:
            raise RequestError(
                f"{shown_filename(attachment)} is {attachment.size / MIB:.1f} MiB; this bot accepts clips up to {max_mb:g} MiB."
            )
        if not looks_like_audio(attachment.filename, attachment.content_type):
            raise RequestError(
                f"{shown_filename(attachment)} does not look like audio. Attach an audio file such as MP3, WAV, OGG or FLAC."
            )

    async def store(self, attachment: discord.Attachment, *, exact: bool = False) -> tuple[Path, float]:
        """Store an attachment in the data dir (kept for /replay); returns it and its seconds of audio.

        `exact`: the length to the sample at 32 kHz, as the worker will decode it (a continuation's
        context window must end where the clip does); else a cheaper probe. Either way the clip is
        decoded once here.
        """
        self.check_before_download(attachment)
        suffix = Path(attachment.filename).suffix.lower()
        if not suffix[1:].isalnum():
            suffix = ".audio"
        path = self.folder / f"{uuid.uuid4().hex}{suffix}"
        try:
            try:
                await self.intake.download(
                    attachment.url, path, max_bytes=int(self.limits.max_attachment_mb * MIB)
                )
            except DownloadTooLarge:
                raise RequestError(
                    f"{shown_filename(attachment)} is larger than it said it was; it was refused."
                ) from None
            except DownloadFailed as error:
                logger.warning("download of %s failed: %s", attachment.url, error)
                raise RequestError(
                    f"I could not download {shown_filename(attachment)} from Discord. Try again in a moment."
                ) from error
            seconds = await asyncio.to_thread(
                clip_seconds if exact else measure_upload,
                path,
                max_seconds=self.limits.max_input_seconds,
                timeout_s=self.decode_timeout_s,
            )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, seconds
