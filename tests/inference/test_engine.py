"""The engine end to end on tiny random-weight models (CPU): every input of a request has an effect
that a test here would notice losing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from inference.engine.audio import write_generated
from inference.engine.decoding import Sampling, pick_codes
from inference.engine.musicgen_engine import GenerationCancelled, MusicGenEngine
from inference.request import GenerationRequest, RequestError
from inference.settings import EngineSettings, MelodyOptions
from tests.inference.audio_checks import same

SAMPLE_RATE = 32_000
HOP = 640  # samples per EnCodec frame at 32 kHz / 50 Hz


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def text_request(**changes: object) -> GenerationRequest:
    base = GenerationRequest(
        model_version="small", prompt="calm acoustic guitar melody", duration=1, seed=1234
    )
    return base.replace(**changes)


def write_clip(path: Path, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str:
    soundfile.write(str(path), wav.T if wav.ndim == 2 else wav, sample_rate, subtype="FLOAT")
    return str(path)


def tone(frequency: float, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def noise(seconds: float, seed: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(int(seconds * sample_rate))).astype(np.float32)


def encodec_round_trip(engine: MusicGenEngine, version: str, wav: torch.Tensor) -> torch.Tensor:
    """What the model's own EnCodec makes of `wav` [C, T]: the reference for re-decoded prompts."""
    codec = engine.cache.get(version).model.audio_encoder
    with torch.inference_mode():
        encoded = codec.encode(wav[None])
        return codec.decode(encoded.audio_codes, encoded.audio_scales).audio_values[0]


# -- text-to-music --------------------------------------------------------------------------------
@pytest.mark.parametrize("duration", [1, 2])
def test_a_text_prompt_gives_exactly_the_requested_seconds(engine: MusicGenEngine, duration: int) -> None:
    result = engine.generate(text_request(duration=duration))
    assert result.sample_rate == SAMPLE_RATE
    assert result.wav.shape == (1, duration * SAMPLE_RATE)
    assert result.wav.dtype == torch.float32 and result.wav.device.type == "cpu"
    assert torch.isfinite(result.wav).all()
    assert result.wav[:, -HOP:].abs().max() > 0  # generated to the end, not padded with silence
    assert {"load", "prepare", "generate", "decode", "total"} <= set(result.timings)


def generate_file(engine: MusicGenEngine, request: GenerationRequest, path: Path) -> tuple[Path, int]:
    generated = engine.generate(request)
    return write_generated(generated, request, path), generated.seed


def test_the_same_seed_writes_identical_bytes_and_another_seed_does_not(
    engine: MusicGenEngine, tmp_path: Path
) -> None:
    first, first_seed = generate_file(engine, text_request(seed=7), tmp_path / "a")
    again, _ = generate_file(engine, text_request(seed=7), tmp_path / "b")
    other, other_seed = generate_file(engine, text_request(seed=8), tmp_path / "c")
    assert first == tmp_path / "a.wav"
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    assert (first_seed, other_seed) == (7, 8)


def test_no_seed_picks_a_random_one_that_reproduces_the_audio(engine: MusicGenEngine, tmp_path: Path) -> None:
    random_a, seed_a = generate_file(engine, text_request(seed=None), tmp_path / "r1")
    _, seed_b = generate_file(engine, text_request(seed=-1), tmp_path / "r2")
    assert seed_a != seed_b  # two fresh seeds out of 2^32
    replay, _ = generate_file(engine, text_request(seed=seed_a), tmp_path / "r3")
    assert replay.read_bytes() == random_a.read_bytes()


def test_the_prompt_conditions_the_music(engine: MusicGenEngine) -> None:
    jazz = engine.generate(text_request(prompt="jazz trio with walking bass"))
    rock = engine.generate(text_request(prompt="rock anthem with distorted electric guitars"))
    assert not same(jazz, rock)


def test_written_audio_is_normalised_as_the_request_says(engine: MusicGenEngine, tmp_path: Path) -> None:
    request = text_request(duration=2, normalization_strategy="peak")
    path, _ = generate_file(engine, request, tmp_path / "out" / "job-42.wav")
    written, rate = soundfile.read(path, always_2d=True)
    assert path == tmp_path / "out" / "job-42.wav"
    assert rate == SAMPLE_RATE and written.shape == (2 * SAMPLE_RATE, 1)
    # peak normalisation: -1 dBFS (16-bit rounding aside)
    assert np.abs(written).max() == pytest.approx(10 ** (-1 / 20), abs=1e-3)


def test_mp3_output_is_written_with_the_mp3_extension(engine: MusicGenEngine, tmp_path: Path) -> None:
    path, _ = generate_file(engine, text_request(output_format="mp3"), tmp_path / "song")
    assert path == tmp_path / "song.mp3"
    assert path.read_bytes()[:3] in (b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xfa")


# -- sampling -------------------------------------------------------------------------------------
def test_temperature_zero_is_greedy_whatever_the_seed(engine: MusicGenEngine) -> None:
    greedy = engine.generate(text_request(temperature=0, seed=1))
    assert same(greedy, engine.generate(text_request(temperature=0, seed=2)))
    assert not same(greedy, engine.generate(text_request(seed=1)))


def test_top_k_one_and_a_tiny_top_p_are_greedy(engine: MusicGenEngine) -> None:
    greedy = engine.generate(text_request(temperature=0))
    assert same(greedy, engine.generate(text_request(top_k=1, seed=5)))
    assert same(greedy, engine.generate(text_request(top_p=1e-6, top_k=250, seed=6)))


def test_top_k_changes_the_tokens_for_the_same_seed(engine: MusicGenEngine) -> None:
    assert not same(engine.generate(text_request(top_k=250)), engine.generate(text_request(top_k=5)))


def test_top_k_zero_samples_from_the_whole_distribution_as_audiocraft_does(engine: MusicGenEngine) -> None:
    # Every code of a uniform distribution is drawn sometimes when nothing restricts it.
    uniform = torch.zeros(4, 8)
    generator = torch.Generator().manual_seed(0)
    drawn = {int(c) for _ in range(200) for c in pick_codes(uniform, Sampling(top_k=0), generator)}
    assert drawn == set(range(8))
    whole = engine.generate(text_request(top_k=0))
    assert not same(whole, engine.generate(text_request(top_k=250)))
    assert same(whole, engine.generate(text_request(top_k=0)))


def test_top_p_overrides_top_k_as_in_audiocraft(engine: MusicGenEngine) -> None:
    # With top_p set, top_k is ignored: top_k=1 would otherwise force the greedy result.
    nucleus_k1 = engine.generate(text_request(top_p=0.9, top_k=1))
    nucleus_k250 = engine.generate(text_request(top_p=0.9, top_k=250))
    assert same(nucleus_k1, nucleus_k250)
    assert not same(nucleus_k1, engine.generate(text_request(temperature=0)))


def test_temperature_changes_the_tokens_for_the_same_seed(engine: MusicGenEngine) -> None:
    assert not same(
        engine.generate(text_request(temperature=1.0)), engine.generate(text_request(temperature=2.5))
    )


def test_classifier_free_guidance_changes_the_music(engine: MusicGenEngine) -> None:
    guided = engine.generate(text_request(temperature=0, classifier_free_guidance=3))
    plain = engine.generate(text_request(temperature=0, classifier_free_guidance=1))
    assert not same(guided, plain)


def test_guidance_zero_ignores_the_prompt_as_audiocraft_does(engine: MusicGenEngine) -> None:
    # audiocraft: uncond + cfg * (cond - uncond); at 0 only the unconditional branch counts.
    a = engine.generate(text_request(temperature=0, classifier_free_guidance=0, prompt="jazz trio"))
    b = engine.generate(
        text_request(temperature=0, classifier_free_guidance=0, prompt="dark techno at 130 bpm")
    )
    assert same(a, b)
    # Sampling (same seed) reacts to any change of the distribution, where argmax may not.
    unguided = engine.generate(text_request(classifier_free_guidance=0, prompt="jazz trio"))
    half = engine.generate(text_request(classifier_free_guidance=0.5, prompt="jazz trio"))
    assert not same(unguided, half)


def test_sampling_keeps_top_k_codes_or_the_nucleus_as_audiocraft_does() -> None:
    # Probabilities 0.4, 0.3, 0.2, 0.1 over codes 0..3 (the rest impossible).
    scores = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1] + [0.0] * 4]))
    generator = torch.Generator().manual_seed(0)

    def drawn(sampling: Sampling) -> set[int]:
        return {int(pick_codes(scores, sampling, generator)[0]) for _ in range(300)}

    assert drawn(Sampling(top_k=2)) == {0, 1}
    # top_p: the most likely codes until their mass reaches p; top_k is then ignored.
    assert drawn(Sampling(top_p=0.65, top_k=1)) == {0, 1}
    assert drawn(Sampling(top_p=0.75, top_k=1)) == {0, 1, 2}
    assert drawn(Sampling(temperature=0, top_k=250)) == {0}


# -- progress and cancellation --------------------------------------------------------------------
def test_progress_counts_every_decoder_step_to_the_total(engine: MusicGenEngine) -> None:
    calls: list[tuple[int, int]] = []
    engine.generate(text_request(duration=1), on_progress=lambda done, total: calls.append((done, total)))
    total = 50 + 3  # 50 frames plus the delay pattern's 3 extra steps
    assert calls == [(step, total) for step in range(1, total + 1)]


def test_cancelling_stops_between_steps_and_raises(engine: MusicGenEngine) -> None:
    calls: list[int] = []
    with pytest.raises(GenerationCancelled):
        engine.generate(
            text_request(duration=2),
            on_progress=lambda done, total: calls.append(done),
            is_cancelled=lambda: len(calls) >= 10,
        )
    assert calls[-1] == 10  # it stopped at the next step, far before the 103 steps


# -- continuation ---------------------------------------------------------------------------------
def test_continuation_returns_the_prompt_then_the_requested_new_seconds(
    engine: MusicGenEngine, tmp_path: Path
) -> None:
    clip = noise(1.5, seed=3)
    path = write_clip(tmp_path / "clip.wav", clip)
    result = engine.generate(text_request(input_audio=path, continuation=True, duration=1))
    prompt_frames = math.ceil(len(clip) / HOP)
    assert result.wav.shape == (1, (prompt_frames + 50) * HOP)
    # The first part is the clip as the model's EnCodec re-decodes it (audiocraft returns it too).
    reference = encodec_round_trip(engine, "small", torch.from_numpy(clip)[None])
    head = (
        len(clip) - SAMPLE_RATE // 10
    )  # the last frames feel the new codes through the decoder's convolutions
    assert torch.allclose(result.wav[:, :head], reference[:, :head], atol=1e-4)
    assert not torch.allclose(result.wav[:, len(clip) :], torch.zeros(1), atol=1e-3)


def test_continuation_trims_the_clip_to_start_and_end(engine: MusicGenEngine, tmp_path: Path) -> None:
    first, second = noise(1.0, seed=10), noise(1.0, seed=11)
    path = write_clip(tmp_path / "two_parts.wav", np.concatenate([first, second, noise(1.0, seed=12)]))
    result = engine.generate(
        text_request(
            input_audio=path, continuation=True, continuation_start=1.0, continuation_end=2.0, duration=1
        )
    )
    assert result.wav.shape == (1, (50 + 50) * HOP)
    reference = encodec_round_trip(engine, "small", torch.from_numpy(second)[None])
    head = SAMPLE_RATE - SAMPLE_RATE // 10
    assert torch.allclose(result.wav[:, :head], reference[:, :head], atol=1e-4)


def test_a_half_precision_engine_continues_a_clip_with_its_float32_codec(
    engine_settings: EngineSettings, tmp_path: Path
) -> None:
    # [engine] dtype = "bfloat16" (the CPU's half precision; float16 on CUDA takes the same path).
    options = engine_settings.engine.model_copy(update={"dtype": "bfloat16"})
    half_engine = MusicGenEngine(engine_settings.model_copy(update={"engine": options}))
    path = write_clip(tmp_path / "clip.wav", noise(0.5, seed=4))
    result = half_engine.generate(text_request(input_audio=path, continuation=True, duration=1))
    assert result.wav.dtype == torch.float32 and result.wav.shape == (1, (25 + 50) * HOP)
    assert torch.isfinite(result.wav).all()
    # The clip is re-decoded exactly as the float32 EnCodec alone makes it.
    reference = encodec_round_trip(half_engine, "small", torch.from_numpy(noise(0.5, seed=4))[None])
    head = 25 * HOP - SAMPLE_RATE // 10
    assert torch.allclose(result.wav[:, :head], reference[:, :head], atol=1e-4)


def test_continuation_without_a_text_prompt_works(engine: MusicGenEngine, tmp_path: Path) -> None:
    path = write_clip(tmp_path / "clip.wav", noise(0.5, seed=4))
    result = engine.generate(text_request(prompt=None, input_audio=path, continuation=True, duration=1))
    assert result.wav.shape == (1, (25 + 50) * HOP)


def test_without_a_prompt_the_text_condition_is_null_so_guidance_has_nothing_to_push(
    engine: MusicGenEngine, tmp_path: Path
) -> None:
    # audiocraft conditions a missing description on the null condition, the same as the
    # unconditional branch of classifier-free guidance: the guidance coefficient cannot matter.
    path = write_clip(tmp_path / "clip.wav", noise(0.5, seed=4))
    request = text_request(prompt=None, input_audio=path, continuation=True, temperature=0)
    assert same(
        engine.generate(request.replace(classifier_free_guidance=1)),
        engine.generate(request.replace(classifier_free_guidance=3)),
    )


def test_continuation_on_the_melody_model_continues_without_a_melody(
    engine: MusicGenEngine, tmp_path: Path
) -> None:
    path = write_clip(tmp_path / "clip.wav", noise(0.5, seed=5))
    result = engine.generate(
        text_request(model_version="melody", input_audio=path, continuation=True, duration=1)
    )
    assert result.wav.shape == (1, (25 + 50) * HOP)


def test_a_clip_to_continue_that_fills_the_models_30_s_window_is_refused(
    engine: MusicGenEngine, tmp_path: Path
) -> None:
    # The clip is the first window's prompt and must leave it room (the new seconds may go past the
    # window: tests/inference/test_long_pieces.py).
    path = write_clip(tmp_path / "clip.wav", noise(31.0, seed=6))
    with pytest.raises(RequestError, match="shorter than 30 s"):
        engine.generate(text_request(input_audio=path, continuation=True, duration=1))
    # Trimming the clip makes it fit.
    ok = engine.generate(text_request(input_audio=path, continuation=True, duration=1, continuation_end=0.5))
    assert ok.wav.shape == (1, (25 + 50) * HOP)


def test_a_start_past_the_end_of_the_clip_is_refused(engine: MusicGenEngine, tmp_path: Path) -> None:
    path = write_clip(tmp_path / "clip.wav", noise(1.0, seed=7))
    with pytest.raises(RequestError, match="past the end"):
        engine.generate(text_request(input_audio=path, continuation=True, continuation_start=3.0))


# -- melody ---------------------------------------------------------------------------------------
def test_a_melody_conditions_the_melody_model(engine: MusicGenEngine, tmp_path: Path) -> None:
    a_tone = write_clip(tmp_path / "a.wav", tone(440.0, 2.0))
    c_tone = write_clip(tmp_path / "c.wav", tone(261.63, 2.0))
    request = text_request(model_version="melody", duration=1, temperature=0)
    with_a = engine.generate(request.replace(input_audio=a_tone))
    with_c = engine.generate(request.replace(input_audio=c_tone))
    without = engine.generate(request)
    assert with_a.wav.shape == (1, SAMPLE_RATE)
    assert not same(with_a, without)
    assert not same(with_a, with_c)


def test_melody_trimming_chooses_which_part_of_the_clip_is_followed(
    engine: MusicGenEngine, tmp_path: Path
) -> None:
    path = write_clip(tmp_path / "two_notes.wav", np.concatenate([tone(440.0, 2.0), tone(261.63, 2.0)]))
    request = text_request(model_version="melody", input_audio=path, temperature=0)
    first_note = engine.generate(request.replace(continuation_end=2.0))
    second_note = engine.generate(request.replace(continuation_start=2.0))
    assert not same(first_note, second_note)
    c_only = write_clip(tmp_path / "c.wav", tone(261.63, 2.0))
    assert same(second_note, engine.generate(request.replace(input_audio=c_only)))


def test_a_melody_without_a_prompt_works(engine: MusicGenEngine, tmp_path: Path) -> None:
    path = write_clip(tmp_path / "a.wav", tone(440.0, 1.0))
    result = engine.generate(text_request(model_version="melody", prompt=None, input_audio=path))
    assert result.wav.shape == (1, SAMPLE_RATE)


def test_a_melody_on_a_model_that_cannot_follow_one_is_a_clear_error(
    engine: MusicGenEngine, tmp_path: Path
) -> None:
    path = write_clip(tmp_path / "a.wav", tone(440.0, 1.0))
    with pytest.raises(RequestError, match="can't follow a melody; choose model_version melody"):
        engine.generate(text_request(model_version="small", input_audio=path))


class ToneSeparator(torch.nn.Module):
    """A demucs-shaped separator with known stems: the mix goes to drums and bass, an A (440 Hz) tone
    to "other", silence to "vocals". A melody taken from the right stems is therefore always A."""

    sources = ["drums", "bass", "other", "vocals"]
    samplerate = 44_100
    audio_channels = 2
    segment = 4.0

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        t = torch.arange(mix.shape[-1]) / self.samplerate
        a_tone = (0.5 * torch.sin(2 * math.pi * 440.0 * t)).expand_as(mix)
        return torch.stack([mix, mix, a_tone, torch.zeros_like(mix)], dim=1)


def with_stem_separation(settings: EngineSettings, demucs_model: str = "htdemucs") -> EngineSettings:
    return settings.model_copy(
        update={"melody": MelodyOptions(stem_separation=True, demucs_model=demucs_model)}
    )


def test_the_melody_comes_from_vocals_and_other_not_drums_and_bass(
    engine: MusicGenEngine, engine_settings: EngineSettings, tmp_path: Path
) -> None:
    separating = MusicGenEngine(
        with_stem_separation(engine_settings), engine.cache, stem_separator=ToneSeparator()
    )
    c_clip = write_clip(tmp_path / "c.wav", tone(261.63, 2.0))
    a_clip = write_clip(tmp_path / "a.wav", tone(440.0, 2.0))
    request = text_request(model_version="melody", temperature=0)
    separated_c = separating.generate(request.replace(input_audio=c_clip))
    assert same(separated_c, engine.generate(request.replace(input_audio=a_clip)))
    assert not same(separated_c, engine.generate(request.replace(input_audio=c_clip)))


def test_a_saved_demucs_model_file_separates_the_melody(
    engine: MusicGenEngine, engine_settings: EngineSettings, tmp_path: Path
) -> None:
    from demucs.demucs import Demucs

    from inference.engine.stems import load_demucs

    torch.manual_seed(0)
    tiny_demucs = Demucs(
        sources=["drums", "bass", "other", "vocals"], channels=8, depth=3, lstm_layers=0, segment=4
    )
    torch.save(tiny_demucs, tmp_path / "demucs.th")
    assert load_demucs(str(tmp_path / "demucs.th")).sources == ["drums", "bass", "other", "vocals"]
    separating = MusicGenEngine(
        with_stem_separation(engine_settings, str(tmp_path / "demucs.th")), engine.cache
    )
    path = write_clip(tmp_path / "a.wav", tone(440.0, 2.0) + noise(2.0, seed=1))
    result = separating.generate(text_request(model_version="melody", input_audio=path))
    assert result.wav.shape == (1, SAMPLE_RATE)


def test_missing_demucs_weights_say_how_to_fix_the_config(
    engine_settings: EngineSettings, tmp_path: Path
) -> None:
    settings = with_stem_separation(engine_settings, str(tmp_path / "missing.th"))
    path = write_clip(tmp_path / "a.wav", tone(440.0, 1.0))
    with pytest.raises(RequestError, match="stem_separation = false"):
        MusicGenEngine(settings).generate(text_request(model_version="melody", input_audio=path))


# -- encode-decode and errors ---------------------------------------------------------------------
def test_encode_decode_round_trips_the_clip_through_encodec(engine: MusicGenEngine, tmp_path: Path) -> None:
    clip = noise(1.3, seed=9)
    path = write_clip(tmp_path / "clip.wav", clip)
    result = engine.generate(
        GenerationRequest(model_version="encode-decode", input_audio=path, duration=5, seed=1)
    )
    assert result.wav.shape == (1, len(clip))  # as long as the clip; duration does not apply
    codec = engine.cache.get_compression().model
    with torch.inference_mode():
        encoded = codec.encode(torch.from_numpy(clip)[None, None])
        reference = codec.decode(encoded.audio_codes, encoded.audio_scales).audio_values[0, :, : len(clip)]
    assert torch.allclose(result.wav, reference, atol=1e-5)
    assert not torch.allclose(
        result.wav, torch.from_numpy(clip)[None], atol=1e-2
    )  # it really went through EnCodec


def test_finetuned_without_a_configured_checkpoint_is_a_clear_error(engine: MusicGenEngine) -> None:
    with pytest.raises(RequestError, match="fine-tuned"):
        engine.generate(text_request(model_version="finetuned"))


def test_an_invalid_request_is_refused_before_any_work(engine: MusicGenEngine) -> None:
    with pytest.raises(RequestError, match="Duration"):
        engine.generate(text_request(duration=121))  # over [limits] max_duration_s


@pytest.mark.parametrize("version", ["small", "melody"])
def test_greedy_decoding_makes_exactly_what_transformers_generate_makes(
    engine: MusicGenEngine, version: str
) -> None:
    # Our decoding loop replaces transformers' generate(); at batch 1 their greedy codes (and so the
    # audio) are identical, guidance included.
    ours = engine.generate(text_request(model_version=version, temperature=0, duration=1))
    loaded = engine.cache.get(version)
    tokens = loaded.tokenizer(["calm acoustic guitar melody"], return_tensors="pt")
    with torch.inference_mode():
        theirs = loaded.model.generate(
            **tokens, do_sample=False, guidance_scale=3.0, max_new_tokens=50 + 3, num_beams=1
        )
    assert torch.equal(ours.wav, theirs[0])
