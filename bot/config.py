"""The bot's typed configuration: config.toml (or --config / $MUSICGEN_BOT_CONFIG) over embedded defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inference.backends.base import BackendOptions
from inference.catalogue import ModelCatalogue
from inference.request import DEFAULT_MAX_DURATION_S, MODEL_VERSIONS
from inference.settings import LIMITS_SHARED_WITH_ENGINE, EngineSettings, read_config_file, with_limits


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
    # The longest `duration` a member may ask for (with continuation: the seconds added). Past the
    # model's window (30 s) a piece is made window by window, as audiocraft extends it.
    max_duration_s: int = Field(default=DEFAULT_MAX_DURATION_S, ge=1)
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
    # Worker processes, one batch at a time each: a number, or "auto" for one per visible GPU (one on
    # a machine without). A number spreads the workers over the visible GPUs in turn.
    processes: int | Literal["auto"] = 1
    # Explicit devices, one worker per entry (["cuda:0", "cuda:1"], ["cpu", "cpu"]); empty: from
    # `processes` and `[engine] device`. Each worker has its own model cache of `[engine] model_cache_gb`.
    devices: list[str] = Field(default_factory=list)
    job_retries: int = Field(default=1, ge=0)
    # Jobs a worker runs together in one batch (1 turns batching off).
    max_batch_size: int = Field(default=4, ge=1)
    # Every row of a batch is generated to its longest job, so a batch holds rows x longest seconds of
    # audio in memory (the decoder's KV cache grows with both): this caps that product.
    max_batch_audio_s: float = Field(default=120.0, gt=0)
    # A free worker waits up to this long after a job arrives for others to join its batch (only while
    # the batch could still grow): commands sent together then run together.
    batch_wait_s: float = Field(default=0.2, ge=0)
    # While every worker is busy, queued jobs join a running batch they can share between two decoder
    # steps (within max_batch_size and max_batch_audio_s) instead of waiting for it to end. Needs our
    # decoder pass ([engine] decoder = "own", without static_cache or compile).
    continuous_batching: bool = True
    # Where the workers run: "local" = worker processes on this machine, "ray" = replicas on a Ray
    # cluster (`processes` of them; the optional ray extra must be installed).
    backend: Literal["local", "ray"] = "local"
    # "" starts a Ray runtime on this machine; "auto" joins the cluster this machine belongs to; or an
    # address such as "10.0.0.5:6379" or "ray://10.0.0.5:10001".
    ray_address: str = ""
    # GPUs each replica reserves; "auto" = 1 when the cluster has GPUs, else 0 (CPU replicas).
    ray_num_gpus: float | Literal["auto"] = "auto"
    # CPUs each replica reserves (a CPU replica's torch threads; Ray sets OMP_NUM_THREADS to it).
    ray_num_cpus: float = Field(default=1.0, gt=0)
    # A job (or batch) still running after base + per_audio x its seconds of audio (a clip it reads
    # counts 30 s), or without a new step for stall seconds, is presumed hung: its worker is killed and
    # the job retried or failed as after a crash.
    job_deadline_base_s: float = Field(default=600.0, gt=0)
    job_deadline_per_audio_s: float = Field(default=60.0, ge=0)
    job_stall_s: float = Field(default=300.0, gt=0)

    def model_post_init(self, _context: object) -> None:
        if not isinstance(self.ray_num_gpus, str) and self.ray_num_gpus < 0:
            raise ValueError('[worker] ray_num_gpus must be "auto" or a number of GPUs (0 or more)')
        if isinstance(self.processes, int) and self.processes < 1:
            raise ValueError('[worker] processes must be at least 1, or "auto"')
        if any(not device.strip() for device in self.devices):
            raise ValueError("[worker] devices cannot contain an empty name")
        if (
            self.devices
            and "processes" in self.model_fields_set
            and self.processes not in ("auto", len(self.devices))
        ):
            raise ValueError(
                f"[worker] processes = {self.processes} but devices lists {len(self.devices)}: "
                'one worker runs per listed device (leave processes out, or set it to "auto")'
            )

    @property
    def ray_gpus_per_replica(self) -> float | None:
        """GPUs per replica, None when Ray should look at the cluster ("auto")."""
        return None if self.ray_num_gpus == "auto" else float(self.ray_num_gpus)


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
    def _limits_shared_with_engine(cls, data: Any) -> Any:
        """The worker decodes clips under the same `max_input_seconds` the bot admits them with, and
        accepts the same `max_duration_s`; it times its kernels up to `[worker] max_batch_size`."""
        if not isinstance(data, dict):
            return data
        limits = data.get("limits", Limits())
        limits = limits if isinstance(limits, Limits) else Limits(**limits)
        worker = data.get("worker", WorkerOptions())
        worker = worker if isinstance(worker, WorkerOptions) else WorkerOptions(**worker)
        settings = data.get("engine_settings", EngineSettings())
        settings = settings if isinstance(settings, EngineSettings) else EngineSettings(**settings)
        shared: dict[str, Any] = {key: getattr(limits, key) for key in LIMITS_SHARED_WITH_ENGINE}
        shared["max_batch_size"] = worker.max_batch_size
        if all(getattr(settings.engine, key) == value for key, value in shared.items()):
            return data
        engine = settings.engine.model_copy(update=shared)
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
    def backend_options(self) -> BackendOptions:
        """The inference back end `[worker]` names, as the bot and `doctor` build it."""
        worker = self.worker
        return BackendOptions(
            backend=worker.backend,
            processes=worker.processes,
            devices=tuple(worker.devices),
            ray_address=worker.ray_address,
            ray_num_gpus=worker.ray_gpus_per_replica,
            ray_num_cpus=worker.ray_num_cpus,
        )

    @property
    def database_path(self) -> Path:
        return self.data_dir / "musicgen-bot.sqlite3"


def load_config(path: str | os.PathLike[str] | None = None) -> BotConfig:
    raw = read_config_file(path)
    engine_tables: dict[str, Any] = {k: raw.pop(k) for k in ("models", "engine", "melody") if k in raw}
    return BotConfig(**raw, engine_settings=EngineSettings(**with_limits(engine_tables, raw.get("limits"))))
