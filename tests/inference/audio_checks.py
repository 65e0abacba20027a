"""Comparisons of the engine's outputs, and clips to give it, shared by the engine tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import torch

from inference.engine.musicgen_engine import GeneratedAudio


def audio_of(outcome: GeneratedAudio | Exception | None) -> GeneratedAudio:
    """The audio of a job's outcome; fails the test with the outcome when it is anything else."""
    assert isinstance(outcome, GeneratedAudio), outcome
    return outcome


def same(a: GeneratedAudio | Exception | None, b: GeneratedAudio | Exception | None) -> bool:
    """Whether two outcomes are the same audio, sample for sample."""
    first, second = audio_of(a), audio_of(b)
    return first.wav.shape == second.wav.shape and torch.equal(first.wav, second.wav)


def continuation_clip(folder: Path, seconds: float, frequency: float) -> str:
    """A sine clip of `seconds` at 32 kHz written into `folder`, for continuation requests."""
    rate = 32_000
    t = np.arange(int(rate * seconds)) / rate
    path = folder / f"clip-{seconds}-{frequency}.wav"
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), rate)
    return str(path)
