"""Pieces longer than the model's window: our engine against audiocraft 1.3.0's windowed extension.

A tiny audiocraft export whose training segment is 2 s (so audiocraft's `max_duration` and our window
are 2 s) makes 5 s with a 1 s stride: four windows, each after the first prompted with the last
second of the one before. Greedy decoding must give audiocraft's codes, and so its samples, for text
and for a continuation that goes past the window. Runs in the tier venv only (see
test_against_audiocraft.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("audiocraft")

import torch

from inference.checkpoints.random_models import COMPRESSION_DIR, TEXT_ENCODER_DIR, make_test_model
from inference.engine.musicgen_engine import MusicGenEngine
from inference.request import GenerationRequest
from inference.settings import EngineOptions, EngineSettings, MelodyOptions, ModelSources
from tests.audiocraft_tier.audiocraft_models import load_audiocraft_musicgen

pytestmark = pytest.mark.audiocraft

WINDOW_S, STRIDE_S, SECONDS = 2.0, 1.0, 5
PROMPT = "lofi hip hop beat with warm piano chords"
SAMPLE_RATE = 32_000


@pytest.fixture(scope="module", autouse=True)
def _few_threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(
        "small",
        tmp_path_factory.mktemp("window2") / "export",
        tiny=True,
        fmt="audiocraft",
        seed=21,
        window_s=WINDOW_S,
    )


@pytest.fixture(scope="module")
def theirs(export: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    # MusicGen's constructor sets its default 18 s stride, which it refuses for a window under 18 s: it
    # is built with a 30 s window, then given the export's own (what `max_duration=None` would read).
    model = load_audiocraft_musicgen(export, tmp_path_factory.mktemp("views"))
    model.max_duration = float(model.lm.cfg.dataset.segment_duration)
    assert model.max_duration == WINDOW_S
    return model


@pytest.fixture(scope="module")
def ours(export: Path, tmp_path_factory: pytest.TempPathFactory) -> MusicGenEngine:
    settings = EngineSettings(
        models=ModelSources(
            finetuned=str(export),
            text_encoder=str(export / TEXT_ENCODER_DIR),
            compression=str(export / COMPRESSION_DIR),
            conversion_cache=str(tmp_path_factory.mktemp("converted")),
        ),
        engine=EngineOptions(device="cpu", dtype="float32", cpu_threads=1, extend_stride_s=STRIDE_S),
        melody=MelodyOptions(stem_separation=False),
    )
    return MusicGenEngine(settings)


@pytest.fixture
def our_codes(ours: MusicGenEngine, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The codes our engine hands to EnCodec, recorded as it decodes them."""
    recorded: list[torch.Tensor] = []
    codec = ours.cache.get("finetuned").model.audio_encoder
    decode = codec.decode

    def recording_decode(audio_codes: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        recorded.append(audio_codes.detach().clone())
        return decode(audio_codes, *args, **kwargs)

    monkeypatch.setattr(codec, "decode", recording_decode)
    return recorded


def test_a_text_piece_past_the_window_gives_audiocraft_codes_and_samples(
    theirs: Any, ours: MusicGenEngine, our_codes: list[torch.Tensor]
) -> None:
    """5 s from a 2 s model with a 1 s stride: the first window whole, then three that each add 1 s."""
    assert ours.cache.get("finetuned").window_s == WINDOW_S
    generated = ours.generate(
        GenerationRequest(model_version="finetuned", prompt=PROMPT, duration=SECONDS, temperature=0.0, seed=1)
    )
    theirs.set_generation_params(use_sampling=False, duration=SECONDS, extend_stride=STRIDE_S, cfg_coef=3.0)
    with torch.no_grad():
        their_wav, their_codes = theirs.generate([PROMPT], progress=False, return_tokens=True)

    (codes,) = our_codes
    assert codes[0].shape == their_codes.shape == (1, 4, SECONDS * 50)
    assert torch.equal(codes[0], their_codes)
    assert generated.wav.shape == their_wav[0].shape == (1, SECONDS * SAMPLE_RATE)
    assert (generated.wav - their_wav[0]).abs().max().item() < 1e-5


def test_a_continuation_past_the_window_gives_audiocraft_codes_and_samples(
    theirs: Any, ours: MusicGenEngine, our_codes: list[torch.Tensor], tmp_path: Path
) -> None:
    """A 0.5 s clip continued by 4 s: the clip counts in the first window (audiocraft's duration is
    the clip plus the new seconds), and the piece goes on past the window."""
    import soundfile

    t = torch.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
    clip = 0.3 * torch.sin(2 * torch.pi * 330.0 * t) + 0.1 * torch.sin(2 * torch.pi * 880.0 * t)
    path = tmp_path / "clip.wav"
    soundfile.write(path, clip.numpy(), SAMPLE_RATE, subtype="FLOAT")
    generated = ours.generate(
        GenerationRequest(
            model_version="finetuned",
            prompt=PROMPT,
            input_audio=str(path),
            continuation=True,
            duration=4,
            temperature=0.0,
            seed=1,
        )
    )
    theirs.set_generation_params(use_sampling=False, duration=4.5, extend_stride=STRIDE_S, cfg_coef=3.0)
    with torch.no_grad():
        their_wav, their_codes = theirs.generate_continuation(
            clip[None, None], SAMPLE_RATE, [PROMPT], progress=False, return_tokens=True
        )

    (codes,) = our_codes
    assert codes[0].shape == their_codes.shape == (1, 4, 225)
    assert torch.equal(codes[0], their_codes)
    assert generated.wav.shape == their_wav[0].shape
    assert (generated.wav - their_wav[0]).abs().max().item() < 1e-5


class _UnusedSeparator(torch.nn.Module):
    """Stands in for demucs' htdemucs when audiocraft builds its melody conditioner; never run here."""

    sources = ["drums", "bass", "other", "vocals"]
    samplerate = SAMPLE_RATE
    audio_channels = 1

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the separator should not run in this test")


def test_a_melody_is_followed_across_windows_as_audiocraft_slices_it(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each window follows the melody from its own time offset on, a whole window of it, the clip
    repeated where it is shorter than the piece: the samples each window's chroma is taken from are
    audiocraft's. (Both language models are bypassed: only what conditions each window is compared.)"""
    import soundfile

    root = tmp_path_factory.mktemp("melody-window2")
    export = make_test_model(
        "melody", root / "export", tiny=True, fmt="audiocraft", seed=23, window_s=WINDOW_S
    )
    t = torch.arange(int(3.3 * SAMPLE_RATE)) / SAMPLE_RATE
    melody = 0.4 * torch.sin(2 * torch.pi * (220.0 + 60.0 * t) * t)  # a glide: every offset sounds different
    path = root / "melody.wav"
    soundfile.write(path, melody.numpy(), SAMPLE_RATE, subtype="FLOAT")

    theirs = load_audiocraft_musicgen(export, root / "views", separator=_UnusedSeparator())
    theirs.max_duration = WINDOW_S
    their_windows: list[torch.Tensor] = []

    def their_window(prompt: Any, attributes: list[Any], max_gen_len: int, **_: Any) -> torch.Tensor:
        their_windows.append(attributes[0].wav["self_wav"].wav[0].clone())
        return torch.zeros((1, 4, max_gen_len), dtype=torch.long)

    monkeypatch.setattr(theirs.lm, "generate", their_window)
    monkeypatch.setattr(theirs, "generate_audio", lambda tokens: torch.zeros(1, 1, tokens.shape[-1] * 640))
    theirs.set_generation_params(use_sampling=False, duration=SECONDS, extend_stride=STRIDE_S)
    theirs.generate_with_chroma([PROMPT], melody[None, None], SAMPLE_RATE, progress=False)

    settings = EngineSettings(
        models=ModelSources(
            finetuned=str(export),
            text_encoder=str(export / TEXT_ENCODER_DIR),
            compression=str(export / COMPRESSION_DIR),
            conversion_cache=str(root / "converted"),
        ),
        engine=EngineOptions(device="cpu", dtype="float32", cpu_threads=1, extend_stride_s=STRIDE_S),
        melody=MelodyOptions(stem_separation=False),
    )
    ours = MusicGenEngine(settings)
    our_windows: list[torch.Tensor] = []
    chroma_of = ours.inputs.melody_chroma

    def our_window(loaded: Any, clip: torch.Tensor, separator: Any) -> torch.Tensor:
        our_windows.append(clip.clone())
        return chroma_of(loaded, clip, separator)

    monkeypatch.setattr(ours.inputs, "melody_chroma", our_window)
    request = GenerationRequest(
        model_version="finetuned",
        prompt=PROMPT,
        input_audio=str(path),
        duration=SECONDS,
        temperature=0.0,
        seed=1,
    )
    assert ours.generate(request).wav.shape[-1] == SECONDS * SAMPLE_RATE

    assert len(our_windows) == len(their_windows) == 4
    for ours_, theirs_ in zip(our_windows, their_windows, strict=True):
        assert ours_.shape == theirs_.shape == (1, int(WINDOW_S * SAMPLE_RATE))
        assert (ours_ - theirs_).abs().max().item() < 1e-6
