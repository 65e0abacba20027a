"""What the doctor checks, from config.toml: the engine's settings, the model the bot serves by
default, the data dir, and where and how the workers run.

`musicgen-bot doctor` builds it from the bot's validated configuration; `python -m inference doctor`
reads the same file here, because inference never imports the bot. The few `[bot]`, `[storage]` and
`[worker]` keys it needs are read with the bot's defaults (a test holds both readings equal).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from inference.backends.base import BackendOptions
from inference.request import ModelVersion
from inference.settings import EngineSettings, load_engine_settings, read_config_file, resolve_config_path


@dataclass(frozen=True)
class DoctorPlan:
    settings: EngineSettings
    # The model version /generate runs when none is picked (`[bot] default_model_version`).
    model_version: ModelVersion
    # The file the settings came from (None: the built-in defaults).
    config_path: Path | None
    data_dir: Path
    # New jobs are refused below this much free disk (`[storage] min_free_mb`).
    min_free_mb: float
    backend: BackendOptions

    @property
    def model_source(self) -> str:
        """The configured checkpoint (hub id or folder) of the default model."""
        return self.settings.models.source_for(self.model_version)

    @classmethod
    def from_config_file(cls, path: str | os.PathLike[str] | None = None) -> DoctorPlan:
        """The plan of a config file (an explicit path, else $MUSICGEN_BOT_CONFIG, else ./config.toml,
        else the built-in defaults)."""
        raw = read_config_file(path)
        bot = _BotKeys(**raw.get("bot", {}))
        worker = _WorkerKeys(**raw.get("worker", {}))
        storage = _StorageKeys(**raw.get("storage", {}))
        return cls(
            settings=load_engine_settings(path),
            model_version=bot.default_model_version,
            config_path=resolve_config_path(path),
            data_dir=Path(bot.data_dir),
            min_free_mb=storage.min_free_mb,
            backend=BackendOptions(
                backend=worker.backend,
                processes=worker.processes,
                devices=tuple(worker.devices),
                ray_address=worker.ray_address,
                # "auto": Ray looks at the cluster (as `[worker] ray_num_gpus` reads for the bot).
                ray_num_gpus=None if worker.ray_num_gpus == "auto" else float(worker.ray_num_gpus),
                ray_num_cpus=worker.ray_num_cpus,
            ),
        )


class _Keys(BaseModel):
    # Only the keys the doctor reads; the bot validates the rest when it starts.
    model_config = ConfigDict(extra="ignore", frozen=True)


class _BotKeys(_Keys):
    default_model_version: ModelVersion = "small"
    data_dir: str = "data"


class _StorageKeys(_Keys):
    min_free_mb: float = Field(default=500, ge=0)


class _WorkerKeys(_Keys):
    processes: int | Literal["auto"] = 1
    devices: list[str] = Field(default_factory=list)
    backend: Literal["local", "ray"] = "local"
    ray_address: str = ""
    ray_num_gpus: float | Literal["auto"] = "auto"
    ray_num_cpus: float = 1.0
