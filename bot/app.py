"""The bot: one `commands.AutoShardedBot` subclass holding the shared services the cogs use.

`setup_hook` opens the database, starts the inference client, loads the cogs, syncs the slash
commands when (and only when) they changed, and resumes the job queue left by the previous run.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.admission import Admission
from bot.config import BotConfig
from bot.continuation import finish_continuation
from bot.downloads import ClipIntake
from bot.pipeline.deadlines import DeadlinePolicy, JobWatchdog
from bot.pipeline.delivery import ResultPoster
from bot.pipeline.dispatcher import DispatcherOptions, JobDispatcher
from bot.pipeline.scheduler import BatchLimits, FairScheduler, QueueLimits
from bot.replies import INTERNAL_ERROR_TEXT, reply_privately
from bot.storage.database import Database
from bot.storage.jams import JamStore
from bot.storage.jobs import Job
from bot.storage.patience import PatientJobStore
from bot.storage.retention import GIB, MIB, RetentionPolicy, StorageJanitor, files_in_use, low_disk_refusal
from bot.storage.server_controls import ServerControls
from bot.uploads import Uploads
from inference.backends.base import InferenceBackend
from inference.backends.factory import create_backend
from inference.catalogue import ModelCatalogue
from inference.media.ffmpeg import use_ffmpeg
from inference.protocol import GenerationResult
from inference.request import RequestError

logger = logging.getLogger(__name__)

EXTENSIONS = (
    "cogs.generate",
    "cogs.queue",
    "cogs.settings",
    "cogs.status",
    "cogs.continue_audio",
    "cogs.result_buttons",
    "cogs.jam",
)


def bot_intents(*, message_content: bool = False) -> discord.Intents:
    """Guilds, and guild messages for replies that mention the bot. Slash commands, context menus and
    buttons carry what they need themselves; a reply that mentions the bot is readable without the
    privileged message-content intent, which is asked for only when the config says so."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.message_content = message_content
    return intents


class MusicGenCommandTree(app_commands.CommandTree["MusicGenBot"]):
    """Turns every command error into a friendly ephemeral message."""

    async def on_error(
        self, interaction: discord.Interaction[MusicGenBot], error: app_commands.AppCommandError
    ) -> None:
        original = getattr(error, "original", error)
        if isinstance(original, RequestError):
            text = str(original)
        elif isinstance(error, app_commands.MissingPermissions):
            text = "You need the Manage Server permission for that."
        elif isinstance(error, app_commands.NoPrivateMessage):
            text = "This command works in servers only."
        elif isinstance(error, app_commands.TransformerError):
            text = f"That value is not valid for this option: {error.value!r}."
        elif isinstance(error, app_commands.CheckFailure):
            text = "You cannot use this command here."
        else:
            command = interaction.command.qualified_name if interaction.command else "?"
            logger.error("command /%s failed", command, exc_info=original)
            text = INTERNAL_ERROR_TEXT
        try:
            await reply_privately(interaction, text)
        except discord.HTTPException:
            logger.warning("could not send an error message for interaction %s", interaction.id)


class MusicGenBot(commands.AutoShardedBot):
    """The shared services hang off the bot: config, database, jobs, scheduler, inference, dispatcher."""

    database: Database
    jobs: PatientJobStore
    jam_store: JamStore
    scheduler: FairScheduler
    inference: InferenceBackend
    dispatcher: JobDispatcher
    clip_intake: ClipIntake
    controls: ServerControls
    janitor: StorageJanitor
    admission: Admission
    uploads: Uploads

    def __init__(
        self,
        config: BotConfig,
        *,
        inference: InferenceBackend | None = None,
        force_command_sync: bool = False,
        **options: Any,
    ) -> None:
        # The bot never joins a voice channel: discord.py's warnings that voice lacks PyNaCl and
        # davey would only alarm whoever reads the start-up log.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=bot_intents(message_content=config.bot.message_content_intent),
            help_command=None,
            tree_cls=MusicGenCommandTree,
            allowed_mentions=discord.AllowedMentions.none(),
            **options,
        )
        self.config = config
        # The ffmpeg every clip and result goes through: the bundled one unless [engine] ffmpeg names another.
        use_ffmpeg(config.engine_settings.engine.ffmpeg)
        # A client passed in (tests share one across bots) is started and closed by its owner.
        self._given_inference = inference
        self._force_command_sync = force_command_sync
        # /generate checks the caps and inserts the row under this lock, so two quick commands from
        # one member cannot both slip under the per-user cap.
        self.admission_lock = asyncio.Lock()
        self._shutdown: asyncio.Task[None] | None = None
        self.started_at = time.time()
        self._guild_default_models: dict[int, str] = {}

    # -- paths --------------------------------------------------------------------------------------
    @functools.cached_property
    def data_dir(self) -> Path:
        # Resolved once: every command checks the disk's free space here before it is acknowledged,
        # and resolving walks the path's folders with a system call each.
        return self.config.data_dir.resolve()

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def accepting_jobs(self) -> bool:
        return hasattr(self, "dispatcher") and not self.dispatcher.stopping and self._shutdown is None

    # -- which model /generate uses when the member picks none --------------------------------------
    @property
    def catalogue(self) -> ModelCatalogue:
        return ModelCatalogue(self.config.engine_settings.models)

    def default_model_choices(self) -> list[str]:
        """The model versions a server may make its default: every one that makes music and is configured."""
        return self.catalogue.music_versions()

    def default_model_refusal(self, model_version: str) -> str | None:
        """Why `model_version` cannot be a server's default model, or None if it can."""
        return self.catalogue.default_refusal(model_version)

    def default_model_for(self, guild_id: int) -> str:
        """The server's default model, or the config's when it has none (or its own is no longer usable).

        Read from memory: /generate needs it before it acknowledges, which must not wait for the
        database behind everyone else's queries.
        """
        chosen = self._guild_default_models.get(guild_id)
        if chosen is not None and self.default_model_refusal(chosen) is None:
            return chosen
        return self.config.bot.default_model_version

    async def prepare_result(self, job: Job, result: GenerationResult) -> GenerationResult:
        """What is posted for a finished job: a continuation of posted audio becomes the whole piece."""
        if job.continues is None or job.request.input_audio is None:
            return result
        return await finish_continuation(
            job,
            result,
            timeout_s=self.config.engine_settings.engine.decode_timeout_s,
            max_seconds=self.config.limits.max_input_seconds,
        )

    async def on_message(self, message: discord.Message) -> None:
        """No prefix commands: messages are read only by the cogs' listeners (replies that mention the bot)."""

    async def set_default_model(self, guild_id: int, model_version: str | None) -> None:
        """Store a server's default model (None: back to the config's), in the database and in memory."""
        await self.jobs.set_guild_default_model(guild_id, model_version)
        if model_version is None:
            self._guild_default_models.pop(guild_id, None)
        else:
            self._guild_default_models[guild_id] = model_version

    # -- start and stop ---------------------------------------------------------------------------
    async def setup_hook(self) -> None:
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        self.database = await Database.open(self.config.database_path)
        # Both stores wait out a locked or full database through one gate (one storage state): the
        # dispatcher's writes and a jam turn's progress wait until it takes them; a new row a
        # member's command waits on gives up after a few seconds, and the member is told the bot is busy.
        self.jobs = PatientJobStore(self.database)
        self.jam_store = JamStore(self.database, gate=self.jobs.gate)
        self.controls = ServerControls(self.database)
        # What admission reads before acknowledging a command, in memory from the start.
        await self.controls.load()
        await self.jam_store.load()
        limits = self.config.limits
        self.clip_intake = ClipIntake(
            per_member=limits.max_concurrent_downloads_per_member, total=limits.max_concurrent_downloads
        )
        self.uploads = Uploads(
            self.uploads_dir,
            self.clip_intake,
            limits,
            decode_timeout_s=self.config.engine_settings.engine.decode_timeout_s,
        )
        self.scheduler = FairScheduler(
            QueueLimits(
                max_pending_per_user=limits.max_pending_per_user,
                max_pending_per_guild=limits.max_pending_per_guild,
            ),
            BatchLimits(
                max_jobs=self.config.worker.max_batch_size,
                max_audio_seconds=self.config.worker.max_batch_audio_s,
            ),
        )
        # Per-server settings live in memory from here on (updated on every write), so what runs
        # before a command is acknowledged needs no database query.
        for guild_id, max_pending in (await self.jobs.guild_limits()).items():
            self.scheduler.set_guild_limit(guild_id, max_pending)
        self._guild_default_models = await self.jobs.guild_default_models()
        if self._given_inference is not None:
            self.inference = self._given_inference
        else:
            self.inference = self._inference_backend()
            await self.inference.start()
        worker = self.config.worker
        self.dispatcher = JobDispatcher(
            # Its writes wait out a locked or full database instead of failing the job.
            store=self.jobs,
            scheduler=self.scheduler,
            inference=self.inference,
            poster=ResultPoster(self),
            options=DispatcherOptions(
                output_dir=self.outputs_dir,
                worker_slots=self.inference.worker_count,
                job_retries=worker.job_retries,
                progress_interval_s=limits.progress_interval_s,
                batch_wait_s=worker.batch_wait_s,
                continuous_batching=(
                    worker.continuous_batching and self.config.engine_settings.engine.runs_our_decoder
                ),
            ),
            watchdog=JobWatchdog(
                self.inference.kill_worker_of,
                DeadlinePolicy(
                    base_s=worker.job_deadline_base_s,
                    per_audio_second_s=worker.job_deadline_per_audio_s,
                    stall_s=worker.job_stall_s,
                    extend_stride_s=self.config.engine_settings.engine.extend_stride_s,
                ),
            ),
            prepare_result=self.prepare_result,
            # A job's end becomes the bot event `job_ended` (the jam cog listens: it moves the jam on).
            on_job_ended=lambda job_id: self.dispatch("job_ended", job_id),
        )
        # Every entry point's gates and job rows (cogs call it rather than each other).
        self.admission = Admission(self)
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self.sync_commands_if_changed(force=self._force_command_sync)
        await self.dispatcher.resume_from_database()
        self.dispatcher.start()
        storage = self.config.storage
        self.janitor = StorageJanitor(
            [self.uploads_dir, self.outputs_dir],
            RetentionPolicy(keep_days=storage.keep_days, max_bytes=int(storage.max_gb * GIB)),
            self.files_in_use,
        )
        self.janitor.start()

    async def files_in_use(self) -> set[Path]:
        """What pending jobs and open jams still need (the storage sweep leaves them alone)."""
        return await files_in_use(self.database.connection, self.outputs_dir)

    def low_disk_refusal(self) -> str | None:
        """Why no new job can be taken while the disk is nearly full, or None."""
        return low_disk_refusal(self.data_dir, int(self.config.storage.min_free_mb * MIB))

    def _inference_backend(self) -> InferenceBackend:
        """The inference back end [worker] backend names; Ray is imported only when it is chosen."""
        return create_backend(self.config.engine_settings, self.config.backend_options)

    async def close(self) -> None:
        """Stop taking jobs, put running ones back in the queue, stop the worker, close the DB."""
        # A signal and the `async with` exit may both close: the second waits for the first.
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(self._shut_down(), name="musicgen-bot-shutdown")
        await asyncio.shield(self._shutdown)

    async def _shut_down(self) -> None:
        if hasattr(self, "janitor"):
            await self.janitor.stop()
        if hasattr(self, "dispatcher"):
            await self.dispatcher.stop()
        if self._given_inference is None and hasattr(self, "inference"):
            await self.inference.close()
        await super().close()
        if hasattr(self, "clip_intake"):
            await self.clip_intake.close()
        if hasattr(self, "database"):
            await self.database.close()

    # -- slash command registration ---------------------------------------------------------------
    async def sync_commands_if_changed(self, *, force: bool = False) -> list[str]:
        """Sync the command tree only where its payload changed since the last sync.

        Discord allows 200 command creates per day per guild, so restarts must not re-sync blindly;
        a hash of the payload is kept in the database per application and scope.
        """
        guilds: list[discord.Object | None] = [
            discord.Object(guild_id) for guild_id in self.config.bot.command_guilds
        ]
        synced: list[str] = []
        for guild in guilds or [None]:
            if guild is not None:
                self.tree.copy_global_to(guild=guild)
            payload = [command.to_dict(self.tree) for command in self.tree.get_commands(guild=guild)]
            digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
            scope = "global" if guild is None else f"guild:{guild.id}"
            key = f"command_sync:{self.application_id}:{scope}"
            if not force and await self.database.get_state(key) == digest:
                continue
            await self.tree.sync(guild=guild)
            await self.database.set_state(key, digest)
            synced.append(scope)
            logger.info("synced %d slash command(s) to %s", len(payload), scope)
        return synced

    async def on_ready(self) -> None:
        logger.info("logged in as %s in %d guild(s)", self.user, len(self.guilds))
        freeze_start_up_heap()


def freeze_start_up_heap() -> None:
    """Keep what start-up made (modules, the command tree, the guild cache) out of later garbage
    collections, once per process.

    A full collection walks every live object: a couple of hundred thousand after start-up, 100 to
    200 ms on a small server CPU, during which no command is acknowledged. A burst of commands
    allocates enough to set one off. Frozen objects are never walked again, so a full collection
    costs only what was made since (the advice of the `gc.freeze` documentation for servers).

    Only the first `on_ready` freezes. A later one (a reconnect that could not resume) would freeze
    the caches of that moment, and the cyclic GC could never free them once they are replaced. The
    process never unfreezes: what start-up made lives as long as the process.
    """
    if gc.get_freeze_count() > 0:
        return
    gc.collect()
    gc.freeze()
