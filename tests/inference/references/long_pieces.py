"""The `long_piece_greedy` reference: pieces longer than the model's window, as audiocraft makes them.

A tiny audiocraft export whose training segment (so its window, audiocraft's `max_duration`) is 2 s
makes pieces longer than that with a 1 s stride (`[engine] extend_stride_s`, audiocraft's
`extend_stride`): the first window whole, then windows that each add a second, prompted with the last
second of the window before. Greedy, guidance 3. Cases: 5 s of text (four windows), and a 0.5 s clip
continued by 4 s (the clip counts in the first window; four windows, the last adding half a second).

Both sides are here except audiocraft's: the checkpoint, the clip and the requests, and the settings
our engine runs them with. scripts/make-audiocraft-references.py runs audiocraft on the same cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import soundfile
import torch

from inference.checkpoints.random_models import COMPRESSION_DIR, TEXT_ENCODER_DIR, make_test_model
from inference.request import GenerationRequest
from inference.settings import EngineOptions, EngineSettings, MelodyOptions, ModelSources

NAME = "long_piece_greedy"
SAMPLE_RATE = 32_000
WINDOW_S = 2.0
STRIDE_S = 1.0
GUIDANCE = 3.0
PROMPT = "lofi hip hop beat with warm piano chords"
CHECKPOINT = "window-2s"
CHECKPOINT_SEED = 31


@dataclass(frozen=True)
class LongCase:
    """One generation of the reference: `duration` new seconds, after a clip of `clip_seconds`."""

    duration: int
    clip_seconds: float | None = None

    @property
    def continuation(self) -> bool:
        return self.clip_seconds is not None

    def request(self, clip_path: Path | None) -> GenerationRequest:
        return GenerationRequest(
            model_version="finetuned",
            prompt=PROMPT,
            input_audio=None if clip_path is None else str(clip_path),
            continuation=self.continuation,
            duration=self.duration,
            temperature=0.0,
            classifier_free_guidance=GUIDANCE,
            seed=1,
        )


CASES: dict[str, LongCase] = {
    "text": LongCase(duration=5),
    "continuation": LongCase(duration=4, clip_seconds=0.5),
}


def build_checkpoint(folder: Path) -> Path:
    """The tiny export with a 2 s window, the same bits wherever it is built (same torch and transformers)."""
    return make_test_model(
        "small", folder, tiny=True, fmt="audiocraft", seed=CHECKPOINT_SEED, window_s=WINDOW_S
    )


def clip_audio(seconds: float) -> torch.Tensor:
    """A mono clip [1, samples] at 32 kHz: two tones, a whole number of EnCodec frames long."""
    t = torch.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * torch.sin(2 * math.pi * 330.0 * t) + 0.1 * torch.sin(2 * math.pi * 880.0 * t))[None]


def write_clip(seconds: float, folder: Path) -> Path:
    """The clip as a 32 kHz float WAV (decoded bit for bit by both sides)."""
    path = folder / f"clip-{seconds:g}s.wav"
    soundfile.write(path, clip_audio(seconds)[0].numpy(), SAMPLE_RATE, subtype="FLOAT")
    return path


def engine_settings_for(folder: Path, conversion_cache: Path) -> EngineSettings:
    """Our engine serving the export as the fine-tune, with the T5 and EnCodec beside it (what audiocraft
    uses), on the CPU in float32, striding 1 s."""
    return EngineSettings(
        models=ModelSources(
            finetuned=str(folder),
            text_encoder=str(folder / TEXT_ENCODER_DIR),
            compression=str(folder / COMPRESSION_DIR),
            conversion_cache=str(conversion_cache),
        ),
        engine=EngineOptions(device="cpu", dtype="float32", cpu_threads=1, extend_stride_s=STRIDE_S),
        melody=MelodyOptions(stem_separation=False),
    )
