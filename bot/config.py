"""The bot's typed configuration: config.toml (or --config / $MUSICGEN_BOT_CONFIG) over embedded defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from inference.catalogue import ModelCatalogue
from inference.request import MODEL_VERSIONS
from inference.settings import EngineSettings, read_config_file


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BotOptions(_Section):
    default_model_version: str = "small"
    data_dir: str = "data"
    command_guilds: list[int] = Field(default_factory=list)

    def model_post_init(self, _context: object) -> None:
        if self.default_model_version not in MODEL_VERSIONS:
            raise ValueError(f"[bot] default_model_version must be one of {', '.join(MODEL_VERSIONS)}")


class Limits(_Section):
    max_pending_per_user: int = Field(default=2, ge=1)
    max_pending_per_guild: int = Field(default=20, ge=1)
    max_attachment_mb: float = Field(default=25, gt=0)
    max_input_seconds: float = Field(default=600, gt=0)
    progress_interval_s: float = Field(default=2.5, ge=0)


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

    def model_post_init(self, _context: object) -> None:
        if not isinstance(self.ray_num_gpus, str) and self.ray_num_gpus < 0:
            raise ValueError('[worker] ray_num_gpus must be "auto" or a number of GPUs (0 or more)')

    @property
    def ray_gpus_per_replica(self) -> float | None:
        """GPUs per replica, None when Ray should look at the cluster ("auto")."""
        return None if self.ray_num_gpus == "auto" else float(self.ray_num_gpus)


class BotConfig(_Section):
    bot: BotOptions = BotOptions()
    limits: Limits = Limits()
    worker: WorkerOptions = WorkerOptions()
    engine_settings: EngineSettings = EngineSettings()

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

    @property
    def data_dir(self) -> Path:
        return Path(self.bot.data_dir)

    @property
    def database_path(self) -> Path:
        return self.data_dir / "musicgen-bot.sqlite3"


def load_config(path: str | os.PathLike[str] | None = None) -> BotConfig:
    raw = read_config_file(path)
    engine_tables = {k: raw.pop(k) for k in ("models", "engine", "melody") if k in raw}
    return BotConfig(**raw, engine_settings=EngineSettings(**engine_tables))
