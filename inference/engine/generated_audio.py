"""What the engine gives back for one job: the audio, its seed and the time each phase took.

A module of its own so that the engine and the audio post-processing both import it, and neither
imports the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class GeneratedAudio:
    """Audio produced by the engine (not normalised)."""

    wav: torch.Tensor  # [channels, samples] float32 on the CPU
    sample_rate: int
    seed: int
    # Named phases in seconds: "load", "prepare", "generate", "decode", "total".
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.wav.shape[0])

    @property
    def duration_s(self) -> float:
        return self.wav.shape[-1] / self.sample_rate
