"""/generate and /replay: turn a slash command into a queued generation job.

Flow of /generate: build and validate the request from the options (cheap checks, answered
ephemerally before anything is public), check the caps, defer publicly within Discord's 3 s, then
download and decode the attachment. Problems found after deferring delete the public "thinking…"
message and are answered ephemerally too, so a mistake never leaves a public trace or a job row.
Only a request that passed every check becomes a row, and only a row is queued. With `takes`, that
many variations of the request (each its own row and seed) are admitted, queued and posted together.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import Range
from discord.ext import commands

from bot.access import can_see_job
from bot.admission import JobAsk
from bot.continuation import posted_audio_of
from bot.downloads import DownloadFailed, DownloadTooLarge
from bot.pipeline.delivery import is_embed_of
from bot.replies import clip_text, defer_publicly, escape_member_text
from bot.storage.jobs import Job
from cogs.utils.options import request_choices, request_descriptions, set_option_maximum
from inference.request import (
    DEFAULT_MAX_DURATION_S,
    MAX_GUIDANCE,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_TAKES,
    MAX_TEMPERATURE,
    MAX_TOP_K,
    MIN_DURATION_S,
    REQUEST_DEFAULTS,
    TAKES_DEFAULTS,
    GenerationRequest,
    RequestError,
    Takes,
)

if TYPE_CHECKING:
    from bot.app import MusicGenBot

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


def shown_filename(attachment: discord.Attachment) -> str:
    """The upload's name as a reply may quote it: the member chose it, so it is cut and escaped."""
    return escape_member_text(clip_text(attachment.filename, 100))


class GenerateCog(commands.Cog):
    """Making music: /generate and /replay."""

    def __init__(self, bot: MusicGenBot) -> None:
        self.bot = bot
        set_option_maximum(self.generate, "duration", bot.config.limits.max_duration_s)

    @app_commands.command(
        name="generate", description="Make music with MusicGen from a prompt and/or an audio clip."
    )
    @app_commands.guild_only()
    # Each option's description and choices come from its field's declaration in inference.request.
    @app_commands.describe(**request_descriptions())
    @app_commands.choices(**request_choices())
    # discord.py reads the options' types, ranges and defaults from this signature: a test checks
    # them against the same declarations (tests/test_request_fields.py).
    async def generate(
        self,
        interaction: discord.Interaction[MusicGenBot],
        prompt: Range[str, 1, MAX_PROMPT_CHARS] | None = None,
        model_version: str | None = None,
        input_audio: discord.Attachment | None = None,
        # Its maximum is `[limits] max_duration_s`, set in __init__ (the annotation holds the default's).
        duration: Range[int, MIN_DURATION_S, DEFAULT_MAX_DURATION_S] = REQUEST_DEFAULTS.duration,
        continuation: bool = REQUEST_DEFAULTS.continuation,
        continuation_start: Range[float, 0.0, None] = REQUEST_DEFAULTS.continuation_start,
        continuation_end: Range[float, -1.0, None] = -1.0,
        normalization_strategy: str = REQUEST_DEFAULTS.normalization_strategy,
        top_k: Range[int, 0, MAX_TOP_K] = REQUEST_DEFAULTS.top_k,
        top_p: Range[float, 0.0, 1.0] = REQUEST_DEFAULTS.top_p,
        temperature: Range[float, 0.0, MAX_TEMPERATURE] = REQUEST_DEFAULTS.temperature,
        classifier_free_guidance: Range[float, 0.0, MAX_GUIDANCE] = REQUEST_DEFAULTS.classifier_free_guidance,
        output_format: str = REQUEST_DEFAULTS.output_format,
        seed: Range[int, -1, MAX_SEED] = -1,
        takes: Range[int, 1, MAX_TAKES] = TAKES_DEFAULTS.takes,
    ) -> None:
        self.bot.admission.check_accepting_jobs()
        asked = Takes(takes).validate()
        assert interaction.guild_id is not None
        default_model = self.bot.default_model_for(interaction.guild_id)
        request = GenerationRequest(
            model_version=model_version or default_model,  # type: ignore[arg-type]
            prompt=prompt,
            # A placeholder until the upload is stored: validation only needs to know there is one.
            input_audio="pending-upload" if input_audio is not None else None,
            duration=duration,
            continuation=continuation,
            continuation_start=continuation_start,
            continuation_end=continuation_end,
            normalization_strategy=normalization_strategy,  # type: ignore[arg-type]
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            classifier_free_guidance=classifier_free_guidance,
            output_format=output_format,  # type: ignore[arg-type]
            seed=seed,
        ).validate(max_duration_s=self.bot.config.limits.max_duration_s)
        self.bot.admission.check_model_available(request, default_model)
        if input_audio is not None:
            self.bot.uploads.check_before_download(input_audio)
        # Every take counts as a job at every gate.
        await self.bot.admission.check(JobAsk.of_interaction(interaction, jobs=asked.takes))

        await defer_publicly(interaction)
        upload: Path | None = None
        try:
            if input_audio is not None:
                async with self.bot.clip_intake.slot(interaction.user.id):
                    upload = await self.download_and_measure(input_audio, request)
                request = request.replace(input_audio=str(upload))
            await self.bot.admission.queue_for_interaction(
                interaction,
                request,
                input_audio_filename=input_audio.filename if input_audio else None,
                takes=asked,
            )
        except Exception:
            if upload is not None:
                upload.unlink(missing_ok=True)
            raise

    @app_commands.command(
        name="replay", description="Run one of this server's jobs again: same settings and seed, same music."
    )
    @app_commands.guild_only()
    @app_commands.describe(job_id="The job number (see /history).")
    async def replay(
        self, interaction: discord.Interaction[MusicGenBot], job_id: Range[int, 1, None]
    ) -> None:
        self.bot.admission.check_accepting_jobs()
        original = await self.bot.jobs.get(job_id)
        # Others' jobs only once posted in a channel the member can read: the same answer as for a
        # job that does not exist, so job numbers reveal nothing about private channels.
        if original is None or not can_see_job(interaction, original):
            raise RequestError(
                f"There is no job #{job_id} here that you can replay: your own jobs, and jobs posted in "
                "channels you can read, can be replayed. `/history` lists yours."
            )
        request = original.request
        await self.bot.admission.check(JobAsk.of_interaction(interaction))
        if request.input_audio is not None and not Path(request.input_audio).is_file():
            await self.replay_from_discord(interaction, original)
            return
        self.bot.admission.check_model_available(request, self.bot.default_model_for(original.guild_id))
        await defer_publicly(interaction)
        await self.bot.admission.queue_for_interaction(
            interaction,
            request,
            input_audio_filename=original.input_audio_filename,
            replay_of=original.id,
            continues=original.continues,
        )

    async def replay_from_discord(self, interaction: discord.Interaction[MusicGenBot], original: Job) -> None:
        """The job's upload was swept from the disk: post again the audio the bot posted for it then.

        The same settings and seed make the same music, so that audio is what a replay would make.
        """
        await defer_publicly(interaction)  # fetching from Discord may take longer than the 3 s to answer
        found = await self.posted_audio(original)
        if found is None:
            raise RequestError(
                f"Job #{original.id}'s input audio is no longer stored and its result is not on Discord any "
                "more, so it cannot be replayed."
            )
        message, audio = found
        path = self.bot.uploads_dir / f"replay-{uuid.uuid4().hex}{Path(audio.filename).suffix}"
        try:
            async with self.bot.clip_intake.slot(interaction.user.id):
                try:
                    await self.bot.clip_intake.download(audio.url, path, max_bytes=interaction.filesize_limit)
                except (DownloadFailed, DownloadTooLarge) as error:
                    logger.warning("replay of job %s: fetching %s failed: %s", original.id, audio.url, error)
                    raise RequestError(
                        f"Job #{original.id}'s input audio is no longer stored, and I could not fetch the audio "
                        "I posted for it. Try again in a moment."
                    ) from error
            await interaction.followup.send(
                f"{interaction.user.mention} here is job #{original.id} again. Its clip is no longer stored, so "
                "this is the audio posted for it (the same settings and seed make the same music).",
                file=discord.File(path, filename=audio.filename),
                # The job's own embed (a message of takes has one per take).
                embeds=[e for e in message.embeds if is_embed_of(e, original.id)][:1] or message.embeds[:1],
                allowed_mentions=discord.AllowedMentions(users=[interaction.user]),
            )
        finally:
            path.unlink(missing_ok=True)

    async def posted_audio(self, job: Job) -> tuple[discord.Message, discord.Attachment] | None:
        """The bot's own message with the job's audio, and that audio, if Discord still has them."""
        if job.result_message_id is None:
            return None
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        try:
            message = await channel.fetch_message(job.result_message_id)
        except discord.HTTPException as error:  # deleted, or the bot may no longer read the channel
            logger.info("job %s: its result message cannot be fetched: %s", job.id, error)
            return None
        audio = posted_audio_of(message, job.id)
        return (message, audio) if audio is not None else None

    # -- checks ---------------------------------------------------------------------------------------
    # -- after deferring --------------------------------------------------------------------------
    async def download_and_measure(self, attachment: discord.Attachment, request: GenerationRequest) -> Path:
        """Store the upload in the data dir (kept for /replay) and check it decodes and fits."""
        path, seconds = await self.bot.uploads.store(attachment)
        try:
            request.check_input_length(seconds)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path


async def setup(bot: MusicGenBot) -> None:
    await bot.add_cog(GenerateCog(bot))
