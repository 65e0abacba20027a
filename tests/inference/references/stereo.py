"""The `stereo_greedy` reference: greedy generation of two test-made stereo audiocraft checkpoints.

Two tiny exports of audiocraft's stereo recipe (interleaved codebooks, `channels = 2`, delays
[0, 0, 1, 1, 2, 2, 3, 3]): "stereo-small", a text model (cross-attention), and "stereo-melody", a
melody model (chroma prefix). Every case is greedy (temperature 0) with guidance 3 and makes 1 s of
new audio: text alone, the continuation of a stereo and of a mono clip (audiocraft's `convert_audio`
puts a mono clip on both channels), and the melody of a stereo and of a mono clip (audiocraft mixes a
melody down to mono before demucs). demucs' htdemucs weights cannot be fetched here, so both engines
separate stems with `MelodyStemStandIn`, a fixed mix of the input.

Both sides are here except audiocraft's: building the checkpoints, the clips and the requests, and
running our engine. tests/audiocraft_tier/audiocraft_models.py runs audiocraft on the same cases.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile
import torch

from inference.checkpoints.loading import LoadedMusicGen
from inference.checkpoints.random_models import (
    COMPRESSION_DIR,
    TEXT_ENCODER_DIR,
    ModelArchitecture,
    make_test_model,
)
from inference.request import GenerationRequest
from inference.settings import EngineOptions, EngineSettings, MelodyOptions, ModelSources

NAME = "stereo_greedy"
SAMPLE_RATE = 32_000
GUIDANCE = 3.0
PROMPT = "lofi hip hop beat with warm piano chords"

ClipKind = Literal["stereo", "mono"]


@dataclass(frozen=True)
class CheckpointRecipe:
    """A tiny stereo audiocraft export, the same bits wherever it is built (same torch and transformers)."""

    architecture: ModelArchitecture
    seed: int

    def build(self, folder: Path) -> Path:
        return make_test_model(
            self.architecture, folder, tiny=True, fmt="audiocraft", seed=self.seed, stereo=True
        )


# The checkpoint names are the model versions our engine serves them as.
CHECKPOINTS: dict[str, CheckpointRecipe] = {
    "stereo-small": CheckpointRecipe("small", seed=21),
    "stereo-melody": CheckpointRecipe("melody", seed=22),
}


@dataclass(frozen=True)
class StereoCase:
    """One generation of the reference."""

    checkpoint: str  # a key of CHECKPOINTS
    prompt: str | None = PROMPT
    clip: ClipKind | None = None
    continuation: bool = False
    duration: int = 1  # new seconds

    @property
    def clip_seconds(self) -> float:
        # A continuation's prompt is 1 s; a melody is followed for 2 s (longer than the piece).
        return 1.0 if self.continuation else 2.0

    def request(self, clip_path: Path | None) -> GenerationRequest:
        return GenerationRequest(
            model_version=self.checkpoint,  # type: ignore[arg-type]
            prompt=self.prompt,
            input_audio=None if clip_path is None else str(clip_path),
            continuation=self.continuation,
            duration=self.duration,
            temperature=0.0,
            classifier_free_guidance=GUIDANCE,
            seed=1,
            output_format="wav",
        )


CASES: dict[str, StereoCase] = {
    "text": StereoCase("stereo-small"),
    "continuation_of_a_stereo_clip": StereoCase("stereo-small", clip="stereo", continuation=True),
    "continuation_of_a_mono_clip": StereoCase("stereo-small", clip="mono", continuation=True),
    "text_on_the_melody_model": StereoCase("stereo-melody"),
    "melody_of_a_stereo_clip": StereoCase("stereo-melody", clip="stereo"),
    "melody_of_a_mono_clip": StereoCase("stereo-melody", prompt=None, clip="mono"),
}


def build_checkpoints(root: Path) -> dict[str, Path]:
    return {name: recipe.build(root / name) for name, recipe in CHECKPOINTS.items()}


# -- clips -----------------------------------------------------------------------------------------


def clip_audio(kind: ClipKind, seconds: float) -> torch.Tensor:
    """A clip [channels, samples] at 32 kHz: a tune on the left (A, C, E), another under noise on the
    right (D, F); the mono clip is the left's tune alone. Different channels, so a swap shows."""
    generator = torch.Generator().manual_seed(5)
    t = torch.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE

    def tune(notes_hz: list[float]) -> torch.Tensor:
        note = torch.clamp((t * len(notes_hz) / seconds).long(), max=len(notes_hz) - 1)
        frequency = torch.tensor(notes_hz)[note]
        return sum(torch.sin(2 * math.pi * frequency * h * t) / h for h in (1, 2, 3))  # type: ignore[return-value]

    left = 0.3 * tune([440.0, 523.25, 659.25])
    if kind == "mono":
        return left[None]
    right = 0.2 * tune([293.66, 349.23]) + 0.02 * torch.randn(t.shape, generator=generator)
    return torch.stack([left, right])


def write_clip(kind: ClipKind, seconds: float, folder: Path) -> Path:
    """The clip as a 32 kHz float WAV (decoded bit for bit by both sides)."""
    path = folder / f"{kind}-{seconds:g}s.wav"
    soundfile.write(path, clip_audio(kind, seconds).T.numpy(), SAMPLE_RATE, subtype="FLOAT")
    return path


def read_clip(path: Path) -> torch.Tensor:
    """A clip file's samples [channels, samples], as audiocraft is given them."""
    samples, _ = soundfile.read(path, dtype="float32", always_2d=True)
    return torch.from_numpy(np.ascontiguousarray(samples.T))


class MelodyStemStandIn(torch.nn.Module):
    """A demucs-shaped separator whose stems are fixed parts of the mix (pointwise, so demucs'
    random time shifts and overlapping chunks change nothing): what both engines separate a melody
    with, where htdemucs' weights cannot be fetched."""

    sources = ["drums", "bass", "other", "vocals"]
    samplerate = 44_100
    audio_channels = 2
    segment = 4.0

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return torch.stack([0.5 * mix, 0.25 * mix, 0.75 * mix, 0.25 * mix], dim=1)


# -- our engine ------------------------------------------------------------------------------------


def engine_settings_for(checkpoint: str, folder: Path, conversion_cache: Path) -> EngineSettings:
    """Settings serving `folder` as model version `checkpoint`, with the T5 and EnCodec beside it (what
    audiocraft uses), on the CPU in float32, taking the melody from stems."""
    models = ModelSources.model_validate(
        {
            checkpoint: str(folder),
            "text_encoder": str(folder / TEXT_ENCODER_DIR),
            "compression": str(folder / COMPRESSION_DIR),
            "conversion_cache": str(conversion_cache),
        }
    )
    return EngineSettings(
        models=models,
        engine=EngineOptions(device="cpu", dtype="float32", cpu_threads=1, model_cache_gb=4.0),
        melody=MelodyOptions(stem_separation=True),
    )


@contextmanager
def recording_codes() -> Iterator[list[torch.Tensor]]:
    """The codes [codebooks, frames] our engine hands to EnCodec while the block runs, in order."""
    from inference.engine import musicgen_engine

    recorded: list[torch.Tensor] = []
    decode = musicgen_engine.decode_codes

    def recording_decode(loaded: LoadedMusicGen, codes: torch.Tensor) -> torch.Tensor:
        recorded.append(codes.detach().cpu().clone())
        return decode(loaded, codes)

    musicgen_engine.decode_codes = recording_decode
    try:
        yield recorded
    finally:
        musicgen_engine.decode_codes = decode
