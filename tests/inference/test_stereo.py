"""Stereo models: the stereo-* versions make two channels at 32 kHz with audiocraft's semantics.

A stereo MusicGen's decoder predicts 8 codebooks, left and right interleaved over the mono EnCodec's
4 (L0 R0 L1 R1 ...), with the stereo delay pattern; EnCodec codes and decodes each channel alone.
The tiny stereo models come in both checkpoint formats (tests/conftest.py: a transformers folder
and an audiocraft export); greedy output is compared with audiocraft's own, kept in
tests/inference/references/stereo_greedy.pt (made by scripts/make-audiocraft-references.py).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import soundfile
import torch

from inference.backends.base import JobSubmission
from inference.backends.local import InferenceClient
from inference.catalogue import VERSION_TRAITS, ModelCatalogue
from inference.checkpoints.convert import UnsupportedCheckpoint, convert_audiocraft_checkpoint
from inference.checkpoints.random_models import (
    COMPRESSION_DIR,
    TEXT_ENCODER_DIR,
    build_random_musicgen,
    make_test_model,
    write_audiocraft_checkpoint,
)
from inference.engine.musicgen_engine import EngineJob, GeneratedAudio, MusicGenEngine
from inference.protocol import GenerationResult
from inference.request import MODEL_VERSIONS, GenerationRequest, batch_key
from inference.settings import EngineSettings, ModelSources
from tests.inference.references import SAMPLE_STRIDE, checkpoint_digest, load_reference
from tests.inference.references import stereo as stereo_reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAMPLE_RATE = 32_000
STEREO_VERSIONS = ("stereo-small", "stereo-medium", "stereo-large", "stereo-melody", "stereo-melody-large")


@pytest.fixture(scope="module")
def stereo_engine(stereo_engine_settings: EngineSettings) -> MusicGenEngine:
    return MusicGenEngine(stereo_engine_settings)


def stereo_request(**changes: object) -> GenerationRequest:
    return GenerationRequest(
        model_version="stereo-small", prompt="calm acoustic guitar", duration=1, seed=3
    ).replace(**changes)


def write_clip(path: Path, channels: list[np.ndarray]) -> Path:
    soundfile.write(path, np.stack(channels, axis=1), SAMPLE_RATE, subtype="FLOAT")
    return path


def tone(frequency: float, seconds: float = 1.0, level: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (level * np.sin(2 * math.pi * frequency * t)).astype(np.float32)


# -- the model versions ----------------------------------------------------------------------------


def test_the_stereo_versions_and_melody_large_are_offered_with_their_published_checkpoints() -> None:
    sources = ModelSources()
    published = {
        "melody-large": "facebook/musicgen-melody-large",
        "stereo-small": "facebook/musicgen-stereo-small",
        "stereo-medium": "facebook/musicgen-stereo-medium",
        "stereo-large": "facebook/musicgen-stereo-large",
        "stereo-melody": "facebook/musicgen-stereo-melody",
        "stereo-melody-large": "facebook/musicgen-stereo-melody-large",
    }
    for version, hub_id in published.items():
        assert version in MODEL_VERSIONS
        assert sources.source_for(version) == hub_id
        assert version in ModelCatalogue(sources).music_versions()
    follows_melody = {version for version in published if VERSION_TRAITS[version].follows_melody}
    assert follows_melody == {"melody-large", "stereo-melody", "stereo-melody-large"}
    assert {version for version in MODEL_VERSIONS if VERSION_TRAITS[version].stereo} == set(STEREO_VERSIONS)
    assert len(MODEL_VERSIONS) <= 25  # a Discord choice list holds at most 25


def test_a_models_key_may_be_spelled_as_its_version_or_as_in_the_shipped_config() -> None:
    hyphenated = ModelSources.model_validate({"stereo-melody-large": "/models/a"})
    underscored = ModelSources.model_validate({"stereo_melody_large": "/models/a"})
    assert hyphenated == underscored
    assert hyphenated.source_for("stereo-melody-large") == "/models/a"


# -- checkpoints -----------------------------------------------------------------------------------


def test_a_stereo_audiocraft_export_converts_to_the_stereo_model_it_was_written_from(tmp_path: Path) -> None:
    export = make_test_model("small", tmp_path / "export", tiny=True, fmt="audiocraft", seed=12, stereo=True)
    converted = convert_audiocraft_checkpoint(
        export,
        tmp_path / "converted",
        text_encoder=str(export / TEXT_ENCODER_DIR),
        compression=str(export / COMPRESSION_DIR),
    )
    from transformers import MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(converted)
    original = build_random_musicgen("small", tiny=True, seed=12, stereo=True)

    decoder = model.config.decoder
    assert (decoder.audio_channels, decoder.num_codebooks, model.config.audio_encoder.audio_channels) == (
        2,
        8,
        1,
    )
    # audiocraft interleaves (k c): its codebook k is transformers' codebook k, heads and embeddings alike.
    theirs = original.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith(("decoder.", "enc_to_dec_proj.")):
            assert torch.equal(value, theirs[key]), key


STEREO_LAYOUTS_REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "interleaved per time step": ({"interleave_stereo_codebooks.per_timestep": True}, "per_timestep=True"),
    "two channels not interleaved": ({"interleave_stereo_codebooks.use": False}, "channels=2"),
    "mono delays on stereo codebooks": (
        {"codebooks_pattern.delay.delays": list(range(8))},
        "delays [0, 0, 1, 1, 2, 2, 3, 3]",
    ),
    "another number of codebooks per channel": ({"compression_model_n_q": 2}, "compression_model_n_q=2"),
}


@pytest.mark.parametrize("layout", list(STEREO_LAYOUTS_REFUSED))
def test_stereo_layouts_transformers_cannot_express_are_refused_by_name(tmp_path: Path, layout: str) -> None:
    override, named_in_message = STEREO_LAYOUTS_REFUSED[layout]
    model = build_random_musicgen("small", tiny=True, seed=0, stereo=True)
    write_audiocraft_checkpoint(
        model, tmp_path, model_version="small", embedded_compression=False, cfg_overrides=override
    )
    with pytest.raises(UnsupportedCheckpoint, match="cannot express") as refused:
        convert_audiocraft_checkpoint(tmp_path, tmp_path / "out", text_encoder="unused", compression="unused")
    assert named_in_message in str(refused.value)


# -- the engine ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["stereo-small", "stereo-melody"], ids=["transformers", "audiocraft"])
def test_a_stereo_model_of_either_checkpoint_format_makes_two_channels_at_32_khz(
    stereo_engine: MusicGenEngine, version: str
) -> None:
    generated = stereo_engine.generate(stereo_request(model_version=version))
    assert generated.sample_rate == SAMPLE_RATE
    assert generated.wav.shape == (2, SAMPLE_RATE)
    left, right = generated.wav
    assert not torch.allclose(left, right, atol=1e-3)  # two channels, not one twice


def test_a_stereo_fine_tune_is_served_as_finetuned(
    stereo_engine_settings: EngineSettings, tiny_stereo_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    export = tiny_stereo_model_dirs["stereo-melody"]  # an audiocraft export of the stereo recipe
    models = stereo_engine_settings.models.model_copy(
        update={
            "finetuned": str(export),
            "text_encoder": str(export / TEXT_ENCODER_DIR),
            "compression": str(export / COMPRESSION_DIR),
            "conversion_cache": str(tmp_path),
        }
    )
    engine = MusicGenEngine(stereo_engine_settings.model_copy(update={"models": models}))
    clip = write_clip(tmp_path / "tune.wav", [tone(440.0, 2.0), tone(523.25, 2.0)])
    generated = engine.generate(stereo_request(model_version="finetuned", input_audio=str(clip)))
    assert generated.wav.shape == (2, SAMPLE_RATE)


@pytest.fixture(scope="module")
def stereo_melody_engines(
    stereo_engine: MusicGenEngine,
    stereo_engine_settings: EngineSettings,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, MusicGenEngine]:
    """Engines whose stereo-melody is an audiocraft export (the session's) or a transformers folder."""
    folder = make_test_model(
        "melody", tmp_path_factory.mktemp("stereo_melody"), tiny=True, seed=13, stereo=True
    )
    models = stereo_engine_settings.models.model_copy(update={"stereo_melody": str(folder)})
    transformers_engine = MusicGenEngine(stereo_engine_settings.model_copy(update={"models": models}))
    return {"audiocraft": stereo_engine, "transformers": transformers_engine}


@pytest.mark.parametrize("checkpoint_format", ["audiocraft", "transformers"])
@pytest.mark.parametrize("clip_channels", [2, 1], ids=["stereo-clip", "mono-clip"])
def test_a_stereo_melody_model_follows_a_clips_melody_in_stereo(
    stereo_melody_engines: dict[str, MusicGenEngine],
    tmp_path: Path,
    clip_channels: int,
    checkpoint_format: str,
) -> None:
    engine = stereo_melody_engines[checkpoint_format]
    channels = [tone(440.0, 2.0), tone(659.25, 2.0)][:clip_channels]
    clip = write_clip(tmp_path / "tune.wav", channels)
    following = engine.generate(stereo_request(model_version="stereo-melody", input_audio=str(clip)))
    text_only = engine.generate(stereo_request(model_version="stereo-melody"))
    assert following.wav.shape == text_only.wav.shape == (2, SAMPLE_RATE)
    assert not torch.equal(following.wav, text_only.wav)


def prompt_codes_of(engine: MusicGenEngine, clip: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A stereo-small continuation of `clip` (1 s): the codes it decoded and its audio."""
    with stereo_reference.recording_codes() as recorded:
        generated = engine.generate(stereo_request(input_audio=str(clip), continuation=True))
    (codes,) = recorded
    return codes, generated.wav


def mono_codec_codes(engine: MusicGenEngine, channel: np.ndarray) -> torch.Tensor:
    """The mono EnCodec's codes [4, frames] of one channel."""
    codec = engine.cache.get("stereo-small").model.audio_encoder
    with torch.inference_mode():
        return codec.encode(torch.from_numpy(channel)[None, None]).audio_codes[0, 0]


def test_a_stereo_clip_continued_by_a_stereo_model_stays_stereo_channel_by_channel(
    stereo_engine: MusicGenEngine, tmp_path: Path
) -> None:
    left, right = tone(220.0), tone(330.0, level=0.2)
    codes, wav = prompt_codes_of(stereo_engine, write_clip(tmp_path / "clip.wav", [left, right]))
    assert wav.shape == (2, 2 * SAMPLE_RATE)  # the clip, then 1 s more, in stereo
    assert codes.shape == (8, 100)
    # The prompt's codebooks alternate left and right, each the mono EnCodec's codes of its channel.
    assert torch.equal(codes[0::2, :50], mono_codec_codes(stereo_engine, left))
    assert torch.equal(codes[1::2, :50], mono_codec_codes(stereo_engine, right))

    swapped, _ = prompt_codes_of(stereo_engine, write_clip(tmp_path / "swapped.wav", [right, left]))
    assert torch.equal(swapped[0::2, :50], codes[1::2, :50])


def test_a_mono_clip_continued_by_a_stereo_model_is_put_on_both_channels(
    stereo_engine: MusicGenEngine, tmp_path: Path
) -> None:
    # audiocraft's convert_audio: a mono clip given to a stereo model is the same signal on both channels.
    codes, wav = prompt_codes_of(stereo_engine, write_clip(tmp_path / "mono.wav", [tone(220.0)]))
    assert wav.shape == (2, 2 * SAMPLE_RATE)
    assert torch.equal(codes[0::2, :50], codes[1::2, :50])
    assert not torch.equal(codes[0::2, 50:], codes[1::2, 50:])  # what follows is stereo


def test_a_stereo_job_counts_the_stereo_delay_patterns_steps_and_batches_with_mono_jobs(
    stereo_engine: MusicGenEngine,
) -> None:
    progress: list[tuple[int, int]] = []
    jobs = [
        EngineJob(stereo_request(seed=1), on_progress=lambda done, total: progress.append((done, total))),
        EngineJob(stereo_request(seed=2, temperature=0.0)),
        EngineJob(stereo_request(model_version="small", seed=3)),
    ]
    stereo, greedy_stereo, mono = stereo_engine.generate_batch(jobs)

    # Each channel's 4 codebooks are delayed 0..3 steps: 50 frames take 53 steps, as in mono.
    assert progress[-1] == (53, 53)
    assert isinstance(stereo, GeneratedAudio) and isinstance(mono, GeneratedAudio)
    assert stereo.wav.shape == (2, SAMPLE_RATE) and mono.wav.shape == (1, SAMPLE_RATE)
    # A row of a batch makes what it makes alone (greedy, so no random stream to compare).
    alone = stereo_engine.generate(stereo_request(seed=2, temperature=0.0))
    assert isinstance(greedy_stereo, GeneratedAudio)
    torch.testing.assert_close(greedy_stereo.wav, alone.wav, atol=1e-5, rtol=0)


def test_transformers_decoder_pass_makes_the_same_stereo_music_as_ours(
    stereo_engine_settings: EngineSettings, stereo_engine: MusicGenEngine
) -> None:
    engine_options = stereo_engine_settings.engine.model_copy(update={"decoder": "transformers"})
    theirs = MusicGenEngine(stereo_engine_settings.model_copy(update={"engine": engine_options}))
    request = stereo_request(temperature=0.0)
    torch.testing.assert_close(
        theirs.generate(request).wav, stereo_engine.generate(request).wav, atol=1e-5, rtol=0
    )


def test_encode_decode_through_a_stereo_fine_tune_keeps_both_channels(
    stereo_engine_settings: EngineSettings, tiny_stereo_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    # audiocraft's stereo compression model codes each channel with the mono EnCodec and decodes both.
    models = stereo_engine_settings.models.model_copy(
        update={"finetuned": str(tiny_stereo_model_dirs["stereo-small"]), "conversion_cache": str(tmp_path)}
    )
    engine = MusicGenEngine(stereo_engine_settings.model_copy(update={"models": models}))
    left, right = tone(220.0), tone(330.0, level=0.2)
    clip = write_clip(tmp_path / "clip.wav", [left, right])
    generated = engine.generate(GenerationRequest(model_version="encode-decode", input_audio=str(clip)))

    assert generated.wav.shape == (2, SAMPLE_RATE)
    codec = engine.cache.get("finetuned").model.audio_encoder
    with torch.inference_mode():
        for channel, samples in enumerate((left, right)):
            encoded = codec.encode(torch.from_numpy(samples)[None, None])
            alone = codec.decode(encoded.audio_codes, encoded.audio_scales).audio_values[0, 0]
            torch.testing.assert_close(generated.wav[channel], alone[:SAMPLE_RATE])


# -- audiocraft's own output -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference() -> dict:
    return load_reference(stereo_reference.NAME)


@pytest.fixture(scope="module")
def reference_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return stereo_reference.build_checkpoints(tmp_path_factory.mktemp("stereo_reference"))


@pytest.fixture(scope="module")
def reference_engines(
    reference_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, MusicGenEngine]:
    conversions = tmp_path_factory.mktemp("stereo_reference_converted")
    return {
        name: MusicGenEngine(
            stereo_reference.engine_settings_for(name, folder, conversions),
            stem_separator=stereo_reference.MelodyStemStandIn(),
        )
        for name, folder in reference_checkpoints.items()
    }


def test_the_reference_checkpoints_are_rebuilt_bit_for_bit(
    reference: dict, reference_checkpoints: dict[str, Path]
) -> None:
    rebuilt = {name: checkpoint_digest(folder) for name, folder in reference_checkpoints.items()}
    assert rebuilt == reference["checkpoints"], (
        f"the test checkpoints differ from those audiocraft's references were made from (made with "
        f"{reference['made_with']}): remake them with scripts/make-audiocraft-references.py"
    )


@pytest.mark.parametrize("case_name", list(stereo_reference.CASES))
def test_greedy_stereo_output_equals_audiocrafts(
    case_name: str, reference: dict, reference_engines: dict[str, MusicGenEngine], tmp_path: Path
) -> None:
    case = stereo_reference.CASES[case_name]
    expected = reference["cases"][case_name]
    clip = None if case.clip is None else stereo_reference.write_clip(case.clip, case.clip_seconds, tmp_path)
    with stereo_reference.recording_codes() as recorded:
        generated = reference_engines[case.checkpoint].generate(case.request(clip))

    (codes,) = recorded
    assert codes.shape == expected["codes"].shape
    agreement = (codes == expected["codes"].long()).float().mean().item()
    assert agreement == 1.0, f"{agreement:.1%} of the codes are audiocraft's"
    assert list(generated.wav.shape) == expected["shape"]
    torch.testing.assert_close(generated.wav[..., ::SAMPLE_STRIDE], expected["samples"], atol=1e-5, rtol=0)


# -- the worker --------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def stereo_worker(stereo_engine_settings: EngineSettings) -> AsyncIterator[InferenceClient]:
    """One worker process on the stereo settings for the module's worker tests (starting one takes seconds)."""
    async with InferenceClient(stereo_engine_settings, processes=1) as client:
        yield client


async def test_the_worker_writes_stereo_wav_and_mp3_files_for_text_continuation_and_melody(
    stereo_worker: InferenceClient, tmp_path: Path
) -> None:
    clip = write_clip(tmp_path / "clip.wav", [tone(220.0), tone(330.0, level=0.2)])
    client = stereo_worker
    text = client.submit("stereo-text", stereo_request(output_format="mp3"), tmp_path / "out")
    continued = client.submit(
        "stereo-continued",
        stereo_request(model_version="stereo-melody", input_audio=str(clip), continuation=True),
        tmp_path / "out",
    )
    melody = client.submit(
        "stereo-melody",
        stereo_request(model_version="stereo-melody", input_audio=str(clip)),
        tmp_path / "out",
    )
    results = await asyncio.wait_for(asyncio.gather(text, continued, melody), 120)

    for result, seconds in zip(results, (1, 2, 1), strict=True):
        assert isinstance(result, GenerationResult)
        info = soundfile.info(result.output_path)
        assert (info.channels, info.samplerate) == (2, SAMPLE_RATE)
        assert info.duration == pytest.approx(seconds, abs=0.06)  # mp3 frames pad the end a little
    assert results[0].output_path.endswith(".mp3") and results[1].output_path.endswith(".wav")


async def test_a_mono_and_a_stereo_job_submitted_together_come_back_as_each_would_alone(
    stereo_worker: InferenceClient, tmp_path: Path
) -> None:
    mono = stereo_request(model_version="small", temperature=0.0)
    stereo = stereo_request(temperature=0.0)
    # The bot's scheduler batches by this key: a mono and a stereo model never share a batch there.
    assert batch_key(mono) != batch_key(stereo)
    # Handed to the worker as one batch anyway, the engine decodes each model's rows apart.
    together = stereo_worker.submit_batch(
        [JobSubmission("mono", mono), JobSubmission("stereo", stereo)], tmp_path / "together"
    )
    mixed = await asyncio.wait_for(asyncio.gather(*together), 120)
    alone = [
        await asyncio.wait_for(stereo_worker.submit(f"{name}-alone", request, tmp_path / "alone"), 120)
        for name, request in (("mono", mono), ("stereo", stereo))
    ]

    for result, by_itself, channels in zip(mixed, alone, (1, 2), strict=True):
        samples, rate = soundfile.read(result.output_path, dtype="float32", always_2d=True)
        assert (samples.shape, rate) == ((SAMPLE_RATE, channels), SAMPLE_RATE)
        # Greedy: the same music as the job alone (up to a PCM step where a batch's GEMM rounds apart).
        expected, _ = soundfile.read(by_itself.output_path, dtype="float32", always_2d=True)
        np.testing.assert_allclose(samples, expected, atol=2 / 32768)
    stereo_samples, _ = soundfile.read(mixed[1].output_path, dtype="float32")
    assert np.abs(stereo_samples[:, 0] - stereo_samples[:, 1]).max() > 0.01  # its own two channels
