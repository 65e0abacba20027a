"""Stereo against audiocraft 1.3.0 itself: conversion, greedy generation, and the stored references.

Runs only in `.venv-audiocraft` (see test_against_audiocraft.py). The checkpoints and cases are the
`stereo_greedy` reference's (tests/inference/references/stereo.py): tiny exports of audiocraft's stereo
recipe, which audiocraft loads with its own loaders and wraps in its `InterleaveStereoCompressionModel`.
Each case is run by both engines here; the same cases' stored outputs, which the main suite checks our
engine against, must be what audiocraft makes now.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("audiocraft")

import torch

from inference.engine.musicgen_engine import MusicGenEngine
from tests.audiocraft_tier.audiocraft_models import audiocraft_generates, load_audiocraft_musicgen
from tests.inference.references import SAMPLE_STRIDE, checkpoint_digest, load_reference
from tests.inference.references import stereo as stereo_reference

pytestmark = pytest.mark.audiocraft


@pytest.fixture(scope="module", autouse=True)
def _few_threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return stereo_reference.build_checkpoints(tmp_path_factory.mktemp("stereo_exports"))


@pytest.fixture(scope="module")
def audiocraft_models(
    checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("stereo_audiocraft")
    separator = stereo_reference.MelodyStemStandIn()
    return {
        name: load_audiocraft_musicgen(folder, workdir, separator=separator)
        for name, folder in checkpoints.items()
    }


@pytest.fixture(scope="module")
def our_engines(
    checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, MusicGenEngine]:
    conversions = tmp_path_factory.mktemp("stereo_converted")
    return {
        name: MusicGenEngine(
            stereo_reference.engine_settings_for(name, folder, conversions),
            stem_separator=stereo_reference.MelodyStemStandIn(),
        )
        for name, folder in checkpoints.items()
    }


def test_audiocraft_loads_the_exports_as_stereo_models(audiocraft_models: dict[str, Any]) -> None:
    from audiocraft.models.encodec import InterleaveStereoCompressionModel

    for model in audiocraft_models.values():
        assert model.audio_channels == 2 and model.lm.num_codebooks == 8
        assert isinstance(model.compression_model, InterleaveStereoCompressionModel)
        delays = model.lm.pattern_provider.delays
        assert list(delays) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_the_converted_stereo_model_computes_audiocraft_logits(
    audiocraft_models: dict[str, Any], our_engines: dict[str, MusicGenEngine]
) -> None:
    """The same next-code logits for the same text and the same stereo-delay-patterned codes."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    lm = audiocraft_models["stereo-small"].lm
    ours = our_engines["stereo-small"].cache.get("stereo-small")
    frames, num_codebooks = 20, lm.num_codebooks
    codes = torch.randint(0, lm.card, (1, num_codebooks, frames), generator=torch.Generator().manual_seed(7))
    pattern = lm.pattern_provider.get_pattern(frames)
    sequence, _, _ = pattern.build_pattern_sequence(codes, lm.special_token_id, keep_only_valid_steps=True)
    steps = sequence.shape[-1]

    with torch.no_grad():
        attributes = [ConditioningAttributes(text={"description": stereo_reference.PROMPT})]
        condition_tensors = lm.condition_provider(lm.condition_provider.tokenize(attributes))
        expected = lm(sequence, conditions=[], condition_tensors=condition_tensors)
        text = ours.tokenizer([stereo_reference.PROMPT], return_tensors="pt")
        logits = ours.model(
            input_ids=text["input_ids"],
            attention_mask=text["attention_mask"],
            decoder_input_ids=sequence.reshape(num_codebooks, steps),
        ).logits.reshape(1, num_codebooks, steps, -1)

    difference = (logits - expected).abs().max().item()
    print(f"\nstereo logits max abs diff: {difference:.3g}")
    assert difference < 1e-4


@pytest.mark.parametrize("case_name", list(stereo_reference.CASES))
def test_greedy_stereo_generation_gives_audiocraft_codes_and_audio_and_the_stored_reference(
    case_name: str,
    audiocraft_models: dict[str, Any],
    our_engines: dict[str, MusicGenEngine],
    checkpoints: dict[str, Path],
    tmp_path: Path,
) -> None:
    case = stereo_reference.CASES[case_name]
    clip_path = (
        None if case.clip is None else stereo_reference.write_clip(case.clip, case.clip_seconds, tmp_path)
    )
    clip = None if clip_path is None else stereo_reference.read_clip(clip_path)
    with stereo_reference.recording_codes() as recorded:
        generated = our_engines[case.checkpoint].generate(case.request(clip_path))
    their_codes, their_wav = audiocraft_generates(
        audiocraft_models[case.checkpoint],
        prompt=case.prompt,
        new_seconds=case.duration,
        guidance=stereo_reference.GUIDANCE,
        melody=None if case.continuation else clip,
        continued=clip if case.continuation else None,
    )

    (our_codes,) = recorded
    assert our_codes.shape == their_codes.shape
    agreement = (our_codes == their_codes).float().mean().item()
    difference = (generated.wav - their_wav).abs().max().item()
    print(f"\n{case_name}: codes identical {agreement:.2%}, audio max abs diff {difference:.3g}")
    assert agreement == 1.0
    assert generated.wav.shape == their_wav.shape and generated.wav.shape[0] == 2
    assert difference < 1e-5

    reference = load_reference(stereo_reference.NAME)
    assert reference["checkpoints"][case.checkpoint] == checkpoint_digest(checkpoints[case.checkpoint])
    stored = reference["cases"][case_name]
    assert torch.equal(stored["codes"].long(), their_codes)
    torch.testing.assert_close(stored["samples"], their_wav[..., ::SAMPLE_STRIDE].float(), atol=1e-6, rtol=0)
