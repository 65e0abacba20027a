"""The bot's typed configuration: config.toml (or --config / $MUSICGEN_BOT_CONFIG) over embedded defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inference.catalogue import ModelCatalogue
from inference.request import MODEL_VERSIONS
from inference.settings import EngineSettings, read_config_file, with_input_limit


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BotOptions(_Section):
    default_model_version: str = "small"
    data_dir: str = "data"
    command_guilds: list[int] = Field(default_factory=list)
    # The privileged intent: without it, replies only continue the bot's own results.
    message_content_intent: bool = False

    def model_post_init(self, _context: object) -> None:
        if self.default_model_version not in MODEL_VERSIONS:
            raise ValueError(f"[bot] default_model_version must be one of {', '.join(MODEL_VERSIONS)}")


class Limits(_Section):
    max_pending_per_user: int = Field(default=2, ge=1)
    max_pending_per_guild: int = Field(default=20, ge=1)
    max_attachment_mb: float = Field(default=25, gt=0)
    max_input_seconds: float = Field(default=600, gt=0)
    progress_interval_s: float = Field(default=2.5, ge=0)
    continuation_context_s: float = Field(default=10, ge=0.02, le=29)
    # Attached clips being downloaded and probed at once, per member and for the whole bot.
    max_concurrent_downloads_per_member: int = Field(default=1, ge=1)
    max_concurrent_downloads: int = Field(default=4, ge=1)


class StorageOptions(_Section):
    # Uploads and generated audio older than this are deleted (jobs still waiting keep theirs).
    keep_days: float = Field(default=30, gt=0)
    # ... and the oldest go first while uploads + outputs take more than this.
    max_gb: float = Field(default=20, gt=0)
    # New jobs are refused while the data dir's disk has less free space than this.
    min_free_mb: float = Field(default=500, ge=0)


class WorkerOptions(_Section):
    processes: int = Field(default=1, ge=1)
    job_retries: int = Field(default=1, ge=0)
    # Jobs a worker runs together in one batch (1 turns batching off).
    max_batch_size: int = Field(default=4, ge=1)
    # Every row of a batch is generated to its longest job, so a batch holds rows x longest seconds of
    # audio in memory (the decoder's KV cache grows with both): this caps that product.
    max_batch_audio_s: float = Field(default=120.0, gt=0)
    # A free worker waits up to this long after a job arrives for others to join its batch (only while
    # the batch could still grow): commands sent together then run together.
    batch_wait_s: float = Field(default=0.2, ge=0)
    # A job (or batch) still running after base + per_audio x its seconds of audio (a clip it reads
    # counts 30 s), or without a new step for stall seconds, is presumed hung: its worker is killed and
    # the job retried or failed as after a crash.
    job_deadline_base_s: float = Field(default=600.0, gt=0)
    job_deadline_per_audio_s: float = Field(default=60.0, ge=0)
    job_stall_s: float = Field(default=300.0, gt=0)


class JamOptions(_Section):
    # The longest piece a jam may grow to, in seconds: reaching it ends the jam.
    max_seconds: float = Field(default=300, ge=2)


class BotConfig(_Section):
    bot: BotOptions = BotOptions()
    limits: Limits = Limits()
    worker: WorkerOptions = WorkerOptions()
    storage: StorageOptions = StorageOptions()
    jam: JamOptions = JamOptions()
    engine_settings: EngineSettings = EngineSettings()

    @model_validator(mode="before")
    @classmethod
    def _one_input_limit(cls, data: Any) -> Any:
        """The worker decodes clips under the same `max_input_seconds` the bot admits them with."""
        if not isinstance(data, dict):
            return data
        limits = data.get("limits", Limits())
        limits = limits if isinstance(limits, Limits) else Limits(**limits)
        settings = data.get("engine_settings", EngineSettings())
        settings = settings if isinstance(settings, EngineSettings) else EngineSettings(**settings)
        if settings.engine.max_input_seconds == limits.max_input_seconds:
            return data
        engine = settings.engine.model_copy(update={"max_input_seconds": limits.max_input_seconds})
        return {**data, "engine_settings": settings.model_copy(update={"engine": engine})}

    def model_post_init(self, _context: object) -> None:
        # The default model is what every /generate without model_version runs: it must make music.
        default = self.bot.default_model_version
        catalogue = ModelCatalogue(self.engine_settings.models)
        if not catalogue.traits(default).makes_music:
            raise ValueError(
                f"[bot] default_model_version cannot be {default}: it only re-encodes an attached clip "
                f"(pick one of {', '.join(catalogue.music_versions())})"
            )
        if not catalogue.is_configured(default):
            raise ValueError(
                f'[bot] default_model_version is "{default}" but [models] {default} is empty: '
                "point it at your checkpoint, or pick another default"
            )
        # Every turn continues the whole piece so far, which is read back as an input clip.
        if self.jam.max_seconds > self.limits.max_input_seconds:
            raise ValueError(
                f"[jam] max_seconds ({self.jam.max_seconds:g}) cannot exceed [limits] max_input_seconds "
                f"({self.limits.max_input_seconds:g}): each turn reads the whole piece so far as its input"
            )

    @property
    def data_dir(self) -> Path:
        return Path(self.bot.data_dir)

    @property
    def database_path(self) -> Path:
        return self.data_dir / "musicgen-bot.sqlite3"


def load_config(path: str | os.PathLike[str] | None = None) -> BotConfig:
    raw = read_config_file(path)
    engine_tables: dict[str, Any] = {k: raw.pop(k) for k in ("models", "engine", "melody") if k in raw}
    return BotConfig(
        **raw, engine_settings=EngineSettings(**with_input_limit(engine_tables, raw.get("limits")))
    )
