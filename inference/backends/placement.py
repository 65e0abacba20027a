"""Where inference workers run and which free worker takes a batch: pure logic, no torch.

One worker per device: `[worker] processes = "auto"` gives one per visible GPU (one on the CPU when
there is none), an explicit `[worker] devices` list one per entry, and a number N spreads N workers
over the visible GPUs in turn. Device indices are torch's: they count within CUDA_VISIBLE_DEVICES
(with CUDA_VISIBLE_DEVICES=2,3, `cuda:0` is the third card), and the workers inherit that variable
unchanged, so an index means the same card in the bot and in every worker.

A free worker that already holds a batch's model takes it (loading a model costs seconds on a GPU
and minutes from a cold disk); among the others, the one holding the fewest models, so different
models spread over the devices instead of evicting each other from one cache.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

# Counting GPUs imports torch (seconds): done in a child process, the bot process never imports it.
_COUNT_GPUS = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
GPU_COUNT_TIMEOUT_S = 120.0


def visible_gpu_count() -> int:
    """How many CUDA devices torch sees on this machine (honouring CUDA_VISIBLE_DEVICES); 0 if none."""
    completed = subprocess.run(
        [sys.executable, "-c", _COUNT_GPUS],
        capture_output=True,
        text=True,
        timeout=GPU_COUNT_TIMEOUT_S,
        check=True,
    )
    return int(completed.stdout.strip().splitlines()[-1])


def needs_gpu_count(processes: int | Literal["auto"], devices: Sequence[str], engine_device: str) -> bool:
    """Whether `worker_devices` needs the GPU count (asking for it costs a torch import)."""
    if devices:
        return False
    if engine_device.strip().lower() not in ("auto", "cuda"):
        return False
    return processes == "auto" or processes > 1


def worker_devices(
    processes: int | Literal["auto"], devices: Sequence[str], engine_device: str, gpu_count: int
) -> list[str]:
    """The device of each worker to start, in order (one worker per entry).

    `devices` (the explicit list) wins. Otherwise `[engine] device` decides what may be used:
    "auto" or "cuda" means every visible GPU (the CPU when there is none); any other value ("cpu",
    "cuda:1") pins every worker to that one device.
    """
    if devices:
        return [device.strip() for device in devices]
    requested = engine_device.strip().lower()
    spread_over_gpus = requested in ("auto", "cuda") and gpu_count > 0
    if processes == "auto":
        if spread_over_gpus:
            return [f"cuda:{index}" for index in range(gpu_count)]
        return ["cpu" if requested in ("auto", "cuda") else engine_device]
    if spread_over_gpus and processes > 1:
        return [f"cuda:{index % gpu_count}" for index in range(processes)]
    return [engine_device] * processes


@dataclass(frozen=True)
class FreeWorker:
    """What the choice needs to know about a free worker: its name and the models it holds."""

    name: str
    # Model versions it ran recently, the most recent first (what its model cache most likely holds).
    models: tuple[str, ...]


def choose_worker(free: Sequence[FreeWorker], model_version: str | None) -> FreeWorker:
    """The free worker that takes a batch of `model_version`: one that holds the model, else the one
    holding the fewest models; ties go to the earliest in `free`."""
    if not free:
        raise ValueError("no free worker to choose from")
    return min(
        free,
        key=lambda worker: (model_version is None or model_version not in worker.models, len(worker.models)),
    )
