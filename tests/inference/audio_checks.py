"""Comparisons of the engine's outputs shared by the engine tests."""

from __future__ import annotations

import torch

from inference.engine import GeneratedAudio


def audio_of(outcome: GeneratedAudio | Exception | None) -> GeneratedAudio:
    """The audio of a job's outcome; fails the test with the outcome when it is anything else."""
    assert isinstance(outcome, GeneratedAudio), outcome
    return outcome


def same(a: GeneratedAudio | Exception | None, b: GeneratedAudio | Exception | None) -> bool:
    """Whether two outcomes are the same audio, sample for sample."""
    first, second = audio_of(a), audio_of(b)
    return first.wav.shape == second.wav.shape and torch.equal(first.wav, second.wav)
