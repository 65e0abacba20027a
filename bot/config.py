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

    def model_post_init(self, _context: object) -> None:
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
