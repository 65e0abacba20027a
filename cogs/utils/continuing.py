"""Continuing a posted clip from a form: the modal the "Continue with MusicGen" context menu and the
Continue button under a result both open, and the flow after it.

A modal must be the first response, so what can be checked is checked before it opens (the bot
takes jobs, the message has audio, every gate); after it, the clip is downloaded and the job queued
through its interaction. A reply that mentions the bot builds its request with the same `prepare`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import discord

from bot.admission import JobAsk
from bot.audio.editing import context_window
from bot.continuation import (
    DEFAULT_NEW_SECONDS,
    audio_attachments,
    continuation_request,
    continuation_source,
    parse_seconds,
)
from bot.replies import answer_error, defer_publicly
from bot.storage.jobs import ContinuationSource, Job
from cogs.utils.forms import prompt_input
from inference.request import MAX_PROMPT_CHARS, GenerationRequest, RequestError

if TYPE_CHECKING:
    from bot.app import MusicGenBot

CONTEXT_MENU_NAME = "Continue with MusicGen"
MODAL_TITLE_LIMIT = 45


def modal_title(clip_count: int) -> str:
    """The modal must be the first response, so it is where a member learns which clip is used."""
    if clip_count > 1:
        return f"Continue the first of {clip_count} clips"[:MODAL_TITLE_LIMIT]
    return CONTEXT_MENU_NAME


class ContinueModal(discord.ui.Modal):
    """The prompt and the seconds to add, for continuing the first audio clip of a message."""

    prompt: discord.ui.TextInput[ContinueModal] = prompt_input(
        "prompt (optional)", required=False, placeholder="What the continuation should sound like"
    )
    # Added per form: its label shows the range configured here (`[limits] max_duration_s`).
    seconds: discord.ui.TextInput[ContinueModal]

    def __init__(
        self, continuing: ClipContinuation, source: discord.Message, clips: list[discord.Attachment]
    ) -> None:
        super().__init__(title=modal_title(len(clips)), timeout=15 * 60)
        self.continuing = continuing
        self.max_seconds = continuing.bot.config.limits.max_duration_s
        self.seconds = discord.ui.TextInput(
            label=f"seconds to add (1–{self.max_seconds})",
            custom_id="seconds",
            required=False,
            default=str(DEFAULT_NEW_SECONDS),
            max_length=10,
        )
        self.add_item(self.seconds)
        self.source = source
        self.clip = clips[0]

    async def on_submit(self, interaction: discord.Interaction) -> None:
        seconds = parse_seconds(self.seconds.value, max_seconds=self.max_seconds)
        await self.continuing.continue_from_interaction(
            cast("discord.Interaction[MusicGenBot]", interaction),
            self.source,
            self.clip,
            prompt=self.prompt.value or None,
            seconds=seconds,
        )

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:  # type: ignore[override]
        await answer_error(interaction, error)


class ClipContinuation:
    """Continuing the first audio clip of a posted message: the modal, the download and the job."""

    def __init__(self, bot: MusicGenBot) -> None:
        self.bot = bot

    async def open_modal(
        self,
        interaction: discord.Interaction[MusicGenBot],
        message: discord.Message,
        *,
        clip: discord.Attachment | None = None,
    ) -> None:
        """Check what can be checked, then ask for the prompt and seconds (a modal is the first response).

        `clip`: the message's clip to continue (one take of several); else its first audio clip.
        """
        self.bot.admission.check_accepting_jobs()
        clips = [clip] if clip is not None else audio_attachments(message)
        if not clips:
            raise RequestError(
                "That message has no audio I can continue. Use it on a message with an audio file or a "
                "voice message attached (MP3, WAV, OGG, FLAC, M4A…)."
            )
        self.bot.uploads.check_before_download(clips[0])
        await self.bot.admission.check(JobAsk.of_interaction(interaction))
        await interaction.response.send_modal(ContinueModal(self, message, clips))

    async def continue_from_interaction(
        self,
        interaction: discord.Interaction[MusicGenBot],
        source: discord.Message,
        clip: discord.Attachment,
        *,
        prompt: str | None,
        seconds: int,
    ) -> Job:
        """After the modal: defer publicly (the status message), fetch the clip and queue the job."""
        assert interaction.guild_id is not None
        await self.bot.admission.check(JobAsk.of_interaction(interaction))
        model_version = self.bot.default_model_for(interaction.guild_id)
        await defer_publicly(interaction)
        async with self.bot.clip_intake.slot(interaction.user.id):
            request, continues, stored = await self.prepare(source, clip, model_version, prompt, seconds)
        try:
            return await self.bot.admission.queue_for_interaction(
                interaction, request, input_audio_filename=clip.filename, continues=continues
            )
        except BaseException:
            stored.unlink(missing_ok=True)
            raise

    async def prepare(
        self,
        source: discord.Message,
        clip: discord.Attachment,
        model_version: str,
        prompt: str | None,
        seconds: int,
    ) -> tuple[GenerationRequest, ContinuationSource, Path]:
        """Download the clip and build the request: its tail as context, `seconds` new ones."""
        if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
            # Before the download: a prompt over the limit is refused at once.
            raise RequestError(
                f"The prompt is too long ({len(prompt)} characters, at most {MAX_PROMPT_CHARS})."
            )
        stored, source_seconds = await self.bot.uploads.store(clip, exact=True)
        try:
            limits = self.bot.config.limits
            window = context_window(source_seconds, limits.continuation_context_s)
            request = continuation_request(
                model_version=model_version,
                prompt=prompt,
                source_path=stored,
                seconds=seconds,
                window=window,
                max_seconds=limits.max_duration_s,
            )
        except BaseException:
            stored.unlink(missing_ok=True)
            raise
        return request, continuation_source(source, window), stored
