"""/generate and /replay: turn a slash command into a queued generation job.

Flow of /generate: build and validate the request from the options (cheap checks, answered
ephemerally before anything is public), check the caps, defer publicly within Discord's 3 s, then
download and decode the attachment. Problems found after deferring delete the public "thinking…"
message and are answered ephemerally too, so a mistake never leaves a public trace or a job row.
Only a request that passed every check becomes a row, and only a row is queued.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import Choice, Range
from discord.ext import commands

from bot.access import can_see_job
from bot.audio_files import looks_like_audio, measure_upload
from bot.downloads import DownloadFailed, DownloadTooLarge
from bot.jobs import ContinuationSource, Job, JobOrigin
from bot.replies import clip_text, defer_publicly, escape_member_text
from inference.request import (
    MAX_DURATION_S,
    MAX_GUIDANCE,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_TEMPERATURE,
    MAX_TOP_K,
    MIN_DURATION_S,
    MODEL_VERSIONS,
    NORMALIZATION_STRATEGIES,
    OUTPUT_FORMATS,
    REQUEST_DEFAULTS,
    GenerationRequest,
    RequestError,
)

if TYPE_CHECKING:
    from bot.bot import MusicGenBot

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


def choices(values: tuple[str, ...]) -> list[Choice[str]]:
    return [Choice(name=value, value=value) for value in values]


def shown_filename(attachment: discord.Attachment) -> str:
    """The upload's name as a reply may quote it: the member chose it, so it is cut and escaped."""
    return escape_member_text(clip_text(attachment.filename, 100))


class GenerateCog(commands.Cog):
    """Making music: /generate and /replay."""

    def __init__(self, bot: MusicGenBot) -> None:
        self.bot = bot

    @app_commands.command(
        name="generate", description="Make music with MusicGen from a prompt and/or an audio clip."
    )
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="What the music should sound like.",
        model_version="Which model; encode-decode only runs your clip through EnCodec. Default: the server's default.",
        input_audio="A melody to follow (melody model), or with continuation, a clip to continue.",
        duration="Seconds to generate (with continuation: seconds added after the clip).",
        continuation="Continue input_audio instead of following its melody.",
        continuation_start="Use input_audio from this second on.",
        continuation_end="Use input_audio up to this second (-1 = to the end).",
        normalization_strategy="How the output loudness is normalized.",
        top_k="Sample among the k most likely tokens (0 = all of them).",
        top_p="Nucleus sampling when above 0 (then top_k is ignored).",
        temperature="Randomness; 0 = always the most likely token.",
        classifier_free_guidance="How closely to follow the prompt.",
        output_format="File format of the result.",
        seed="Same seed + same settings = same music; -1 = random.",
    )
    @app_commands.choices(
        model_version=choices(MODEL_VERSIONS),
        normalization_strategy=choices(NORMALIZATION_STRATEGIES),
        output_format=choices(OUTPUT_FORMATS),
    )
    async def generate(
        self,
        interaction: discord.Interaction[MusicGenBot],
        prompt: Range[str, 1, MAX_PROMPT_CHARS] | None = None,
        model_version: str | None = None,
        input_audio: discord.Attachment | None = None,
        duration: Range[int, MIN_DURATION_S, MAX_DURATION_S] = REQUEST_DEFAULTS.duration,
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
    ) -> None:
        self.check_accepting_jobs()
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
        ).validate()
        self.check_model_available(request, default_model)
        if input_audio is not None:
            self.check_attachment_before_download(input_audio)
        self.check_admission(interaction)

        await defer_publicly(interaction)
        # After the defer: acknowledging within 3 s never waits on the database.
        await self.check_server_controls(interaction)
        upload: Path | None = None
        try:
            if input_audio is not None:
                async with self.bot.clip_intake.slot(interaction.user.id):
                    upload = await self.download_and_measure(input_audio, request)
                request = request.replace(input_audio=str(upload))
            await self.queue_job(
                interaction, request, input_audio_filename=input_audio.filename if input_audio else None
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
        self.check_accepting_jobs()
        original = await self.bot.jobs.get(job_id)
        # Others' jobs only once posted in a channel the member can read: the same answer as for a
        # job that does not exist, so job numbers reveal nothing about private channels.
        if original is None or not can_see_job(interaction, original):
            raise RequestError(
                f"There is no job #{job_id} here that you can replay: your own jobs, and jobs posted in "
                "channels you can read, can be replayed. `/history` lists yours."
            )
        request = original.request
        if request.input_audio is not None and not Path(request.input_audio).is_file():
            await self.replay_from_discord(interaction, original)
            return
        self.check_model_available(request, self.bot.default_model_for(original.guild_id))
        self.check_admission(interaction)
        await defer_publicly(interaction)
        await self.check_server_controls(interaction)
        await self.queue_job(
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
        await self.check_server_controls(interaction)
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
                embeds=message.embeds[:1],
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
        audio = [a for a in message.attachments if a.filename.startswith(f"musicgen-{job.id}.")]
        return (message, audio[0]) if audio else None

    # -- checks ---------------------------------------------------------------------------------------
    def check_accepting_jobs(self) -> None:
        if not self.bot.accepting_jobs:
            raise RequestError(
                "The bot is restarting and is not taking new jobs right now. Try again in a minute."
            )
        if (refusal := self.bot.low_disk_refusal()) is not None:
            raise RequestError(refusal)

    def check_model_available(self, request: GenerationRequest, default_model: str) -> None:
        catalogue = self.bot.catalogue
        if not catalogue.is_configured(request.model_version):
            raise RequestError(
                f"No fine-tuned model is configured on this bot. Pick another model_version (the default here is {default_model})."
            )
        if (
            request.input_audio is not None
            and not request.continuation
            and catalogue.cannot_follow_melody(request.model_version)
        ):
            raise RequestError(
                f"The {request.model_version} model cannot follow a melody. Use model_version melody to follow "
                "your clip's melody, or set continuation to True to continue the clip instead."
            )

    def check_attachment_before_download(self, attachment: discord.Attachment) -> None:
        max_mb = self.bot.config.limits.max_attachment_mb
        if attachment.size > max_mb * MIB:
            raise RequestError(
                f"{shown_filename(attachment)} is {attachment.size / MIB:.1f} MiB; this bot accepts clips up to {max_mb:g} MiB."
            )
        if not looks_like_audio(attachment.filename, attachment.content_type):
            raise RequestError(
                f"{shown_filename(attachment)} does not look like audio. Attach an audio file such as MP3, WAV, OGG or FLAC."
            )

    def check_admission(self, interaction: discord.Interaction[MusicGenBot]) -> None:
        assert interaction.guild_id is not None
        self.check_member_admission(interaction.guild_id, interaction.user.id)

    def check_member_admission(self, guild_id: int, user_id: int) -> None:
        """The per-member and per-server caps (a full queue is refused with what to do)."""
        refusal = self.bot.scheduler.admission_refusal(guild_id, user_id)
        if refusal is not None:
            raise RequestError(refusal)

    async def check_server_controls(self, interaction: discord.Interaction[MusicGenBot]) -> None:
        """The server's own rules: the channels the bot works in, the daily quota per member."""
        assert interaction.guild_id is not None and interaction.channel_id is not None
        await self.check_channel_controls(
            interaction.guild_id, interaction.channel_id, interaction.channel, interaction.user.id
        )

    async def check_channel_controls(
        self, guild_id: int, channel_id: int, channel: object | None, user_id: int
    ) -> None:
        """`check_server_controls` for a job without an interaction (a reply, a jam turn)."""
        parent_id = getattr(channel, "parent_id", None) if isinstance(channel, discord.Thread) else None
        channel_ids = (channel_id,) + ((parent_id,) if parent_id else ())
        refusal = await self.bot.controls.refusal_for(guild_id, channel_ids, user_id)
        if refusal is not None:
            raise RequestError(refusal)

    # -- after deferring --------------------------------------------------------------------------
    async def download_and_measure(self, attachment: discord.Attachment, request: GenerationRequest) -> Path:
        """Store the upload in the data dir (kept for /replay) and check it decodes and fits."""
        path, seconds = await self.download_upload(attachment)
        try:
            request.check_input_length(seconds)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    async def download_upload(self, attachment: discord.Attachment) -> tuple[Path, float]:
        """Store an attachment in the data dir (kept for /replay); returns it and its seconds of audio."""
        self.check_attachment_before_download(attachment)
        suffix = Path(attachment.filename).suffix.lower()
        if not suffix[1:].isalnum():
            suffix = ".audio"
        path = self.bot.uploads_dir / f"{uuid.uuid4().hex}{suffix}"
        try:
            try:
                await self.bot.clip_intake.download(
                    attachment.url, path, max_bytes=int(self.bot.config.limits.max_attachment_mb * MIB)
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
                measure_upload,
                path,
                max_seconds=self.bot.config.limits.max_input_seconds,
                timeout_s=self.bot.config.engine_settings.engine.decode_timeout_s,
            )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, seconds

    async def queue_job(
        self,
        interaction: discord.Interaction[MusicGenBot],
        request: GenerationRequest,
        *,
        input_audio_filename: str | None,
        replay_of: int | None = None,
        continues: ContinuationSource | None = None,
    ) -> Job:
        """Insert the job row and queue it (re-checking the caps: the download gave others time to queue)."""
        assert interaction.guild_id is not None and interaction.channel_id is not None
        return await self.admit_and_queue(
            JobOrigin(
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
                user_id=interaction.user.id,
                application_id=interaction.application_id,
                interaction_id=interaction.id,
            ),
            request,
            interaction=interaction,
            input_audio_filename=input_audio_filename,
            replay_of=replay_of,
            continues=continues,
        )

    async def admit_and_queue(
        self,
        origin: JobOrigin,
        request: GenerationRequest,
        *,
        interaction: discord.Interaction[MusicGenBot] | None,
        input_audio_filename: str | None,
        replay_of: int | None = None,
        continues: ContinuationSource | None = None,
        status_message_id: int | None = None,
    ) -> Job:
        """Check the caps, insert the row and queue it, under the admission lock (with or without an interaction)."""
        seed_was_random = request.seed is None
        if seed_was_random:
            # Chosen here, not in the worker, so the row records it before the job runs and a retry
            # after a crash or restart makes the same music.
            request = request.replace(seed=secrets.randbelow(MAX_SEED + 1))
        async with self.bot.admission_lock:
            self.check_member_admission(origin.guild_id, origin.user_id)
            # Again under the lock: two quick commands must not both take the member's last job of the day.
            channel = (
                interaction.channel if interaction is not None else self.bot.get_channel(origin.channel_id)
            )
            await self.check_channel_controls(origin.guild_id, origin.channel_id, channel, origin.user_id)
            job = await self.bot.jobs.create(
                origin,
                request,
                seed_was_random=seed_was_random,
                input_audio_filename=input_audio_filename,
                replay_of=replay_of,
                continues=continues,
            )
            if status_message_id is not None:
                await self.bot.jobs.set_status_message(job.id, status_message_id)
            self.bot.dispatcher.add(job, interaction, status_message_id=status_message_id)
        return job


async def setup(bot: MusicGenBot) -> None:
    await bot.add_cog(GenerateCog(bot))
