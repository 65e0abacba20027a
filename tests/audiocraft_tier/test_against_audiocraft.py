"""Our engine against audiocraft 1.3.0 itself: conversion, sampling, normalization and chroma.

A separate tier: audiocraft cannot live in the project's environment (it pins torch 2.1), so these
tests run only in `.venv-audiocraft` (set up by `scripts/install-audiocraft-tier.sh`) and are skipped
everywhere else:

    scripts/install-audiocraft-tier.sh
    .venv-audiocraft/bin/python -m pytest -m audiocraft tests/audiocraft_tier

Everything runs on tiny random-weight models on the CPU. audiocraft loads our test exports with its
own loaders and builders (tests/audiocraft_tier/audiocraft_models.py says what is adapted: where the
T5 text encoder and the EnCodec come from, as there is no model hub here). Stereo models are compared
in test_stereo_against_audiocraft.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("audiocraft")

import torch
from transformers import MusicgenForConditionalGeneration

from inference.checkpoints.convert import COMPRESSION_STATE_FILE, convert_audiocraft_checkpoint
from inference.checkpoints.loading import LoadedMusicGen
from inference.checkpoints.random_models import COMPRESSION_DIR, TEXT_ENCODER_DIR, make_test_model
from inference.engine.audio import measure_loudness, normalize_audio
from inference.engine.chroma import extract_chroma
from inference.engine.musicgen_engine import MusicGenEngine
from inference.request import GenerationRequest
from inference.settings import EngineOptions, EngineSettings, MelodyOptions, ModelSources
from tests.audiocraft_tier.audiocraft_models import load_audiocraft_lm, load_audiocraft_musicgen

pytestmark = pytest.mark.audiocraft

SAMPLE_RATE = 32_000
PROMPT = "lofi hip hop beat with warm piano chords"


@pytest.fixture(scope="module", autouse=True)
def _few_threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# -- checkpoints ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny audiocraft exports written by our make_test_model: the usual fine-tune layout (EnCodec is a
    pointer to facebook/encodec_32khz) and one with an embedded EnCodec."""
    root = tmp_path_factory.mktemp("audiocraft_exports")
    return {
        "pointer": make_test_model("small", root / "pointer", tiny=True, fmt="audiocraft", seed=3),
        "embedded": make_test_model(
            "small", root / "embedded", tiny=True, fmt="audiocraft", seed=4, embedded_compression=True
        ),
    }


@pytest.fixture(scope="module")
def audiocraft_loader(
    exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Any]:
    """Load an export's LM with audiocraft's own `loaders.load_lm_model` (builders + strict state dict)."""
    root = tmp_path_factory.mktemp("audiocraft_views")
    loaded: dict[str, Any] = {}

    def load(name: str) -> Any:
        if name not in loaded:
            loaded[name] = load_audiocraft_lm(exports[name], root)
        return loaded[name]

    return load


@pytest.fixture(scope="module")
def audiocraft_musicgen(exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """audiocraft's MusicGen for the pointer export; the pointer's facebook/encodec_32khz is served by the
    export's local EnCodec folder through audiocraft's own HF EnCodec wrapper (what get_pretrained does)."""
    return load_audiocraft_musicgen(exports["pointer"], tmp_path_factory.mktemp("audiocraft_musicgen"))


@pytest.fixture(scope="module")
def our_engine(exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> MusicGenEngine:
    """Our engine with the pointer export configured as the fine-tune (converted by the model cache)."""
    export = exports["pointer"]
    settings = EngineSettings(
        models=ModelSources(
            finetuned=str(export),
            text_encoder=str(export / TEXT_ENCODER_DIR),
            compression=str(export / COMPRESSION_DIR),
            conversion_cache=str(tmp_path_factory.mktemp("converted")),
        ),
        engine=EngineOptions(device="cpu", dtype="float32", cpu_threads=1, model_cache_gb=4.0),
        melody=MelodyOptions(stem_separation=False),
    )
    return MusicGenEngine(settings)


@pytest.fixture(scope="module")
def our_model(our_engine: MusicGenEngine) -> LoadedMusicGen:
    return our_engine.cache.get("finetuned")


@pytest.fixture
def decoded_codes(our_model: LoadedMusicGen, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The codes our engine hands to EnCodec, recorded as it generates."""
    recorded: list[torch.Tensor] = []
    codec = our_model.model.audio_encoder
    decode = codec.decode

    def recording_decode(audio_codes: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        recorded.append(audio_codes.detach().clone())
        return decode(audio_codes, *args, **kwargs)

    monkeypatch.setattr(codec, "decode", recording_decode)
    return recorded


# -- 1. conversion -------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [PROMPT, "dark techno at 130 bpm"])
def test_converted_model_computes_audiocraft_logits(
    prompt: str, audiocraft_loader: Callable[[str], Any], our_model: LoadedMusicGen
) -> None:
    """A fine-tune exported by audiocraft and converted by us predicts the same next-code logits for the
    same text and the same delay-patterned codes."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    lm = audiocraft_loader("pointer")
    frames, num_codebooks = 20, lm.num_codebooks
    codes = torch.randint(0, lm.card, (1, num_codebooks, frames), generator=torch.Generator().manual_seed(7))
    pattern = lm.pattern_provider.get_pattern(frames)
    sequence, _, _ = pattern.build_pattern_sequence(codes, lm.special_token_id, keep_only_valid_steps=True)
    steps = sequence.shape[-1]

    with torch.no_grad():
        tokenized = lm.condition_provider.tokenize([ConditioningAttributes(text={"description": prompt})])
        condition_tensors = lm.condition_provider(tokenized)
        expected = lm(sequence, conditions=[], condition_tensors=condition_tensors)  # [1, K, S, card]

        text = our_model.tokenizer([prompt], return_tensors="pt")
        logits = our_model.model(
            input_ids=text["input_ids"],
            attention_mask=text["attention_mask"],
            decoder_input_ids=sequence.reshape(num_codebooks, steps),
        ).logits.reshape(1, num_codebooks, steps, -1)

    assert logits.shape == expected.shape
    difference = (logits - expected).abs().max().item()
    print(
        f"\nlogits max abs diff ({prompt!r}): {difference:.3g} (logit scale {expected.abs().max().item():.3g})"
    )
    assert difference < 1e-4


def test_audiocraft_decodes_our_embedded_encodec_export_like_our_conversion(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    """An export with an embedded EnCodec loads into audiocraft's own SEANet EncodecModel, and it encodes
    and decodes exactly as the transformers EnCodec our converter makes of it."""
    from audiocraft.models import loaders

    export = exports["embedded"]
    theirs = loaders.load_compression_model(str(export / COMPRESSION_STATE_FILE), device="cpu").eval()
    converted = convert_audiocraft_checkpoint(
        export,
        tmp_path / "converted",
        text_encoder=str(export / TEXT_ENCODER_DIR),
        compression=str(export / COMPRESSION_DIR),
    )
    ours = MusicgenForConditionalGeneration.from_pretrained(converted).audio_encoder.eval()

    generator = torch.Generator().manual_seed(11)
    codes = torch.randint(0, theirs.cardinality, (1, theirs.num_codebooks, 25), generator=generator)
    wav = 0.3 * torch.randn(1, 1, SAMPLE_RATE // 2, generator=generator)
    with torch.no_grad():
        their_audio = theirs.decode(codes, None)
        our_audio = ours.decode(codes[None], [None]).audio_values
        their_codes, _ = theirs.encode(wav)
        our_codes = ours.encode(wav, bandwidth=ours.config.target_bandwidths[0]).audio_codes[0]

    difference = (our_audio - their_audio).abs().max().item()
    print(
        f"\nEnCodec decode max abs diff: {difference:.3g}; encode codes equal: "
        f"{(our_codes == their_codes).float().mean().item():.2%}"
    )
    assert difference < 1e-5
    assert torch.equal(our_codes, their_codes)


# -- 2. sampling ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "guidance"),
    [(PROMPT, 3.0), ("epic orchestral soundtrack with strings", 1.0)],
    ids=["cfg3", "cfg1"],
)
def test_greedy_generation_gives_audiocraft_codes_and_audio(
    prompt: str,
    guidance: float,
    audiocraft_musicgen: Any,
    our_engine: MusicGenEngine,
    decoded_codes: list[torch.Tensor],
) -> None:
    """temperature 0: the same codes, so the same audio, as audiocraft's MusicGen (with guidance 1 our
    engine skips the unconditional pass that audiocraft still runs; the result must not change)."""
    request = GenerationRequest(
        model_version="finetuned",
        prompt=prompt,
        duration=1,
        temperature=0.0,
        classifier_free_guidance=guidance,
        seed=5,
    )
    generated = our_engine.generate(request)

    audiocraft_musicgen.set_generation_params(use_sampling=False, duration=1, cfg_coef=guidance)
    with torch.no_grad():
        their_wav, their_codes = audiocraft_musicgen.generate([prompt], progress=False, return_tokens=True)

    (our_codes,) = decoded_codes
    assert our_codes[0].shape == their_codes.shape == (1, 4, 50)
    agreement = (our_codes[0] == their_codes).float().mean().item()
    difference = (generated.wav - their_wav[0]).abs().max().item()
    print(
        f"\ngreedy cfg {guidance:g} ({prompt!r}): codes identical {agreement:.2%}, audio max abs diff {difference:.3g}"
    )
    assert agreement == 1.0
    assert generated.wav.shape == their_wav[0].shape
    assert difference < 1e-5


SAMPLING_CASES = {
    # name: (temperature, top_k, top_p, classifier-free guidance)
    "top_k": (1.0, 250, 0.0, 3.0),
    "top_p_overrides_top_k": (0.8, 250, 0.9, 3.0),
    "small_top_k_hot_no_guidance": (1.4, 20, 0.0, 1.0),
    "weak_guidance": (1.0, 50, 0.0, 0.5),
}


@pytest.mark.parametrize("case", list(SAMPLING_CASES))
def test_sampling_draws_from_audiocraft_distributions(
    case: str,
    audiocraft_musicgen: Any,
    our_engine: MusicGenEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At every decoder step our engine samples from the same distribution as audiocraft: temperature,
    top-k, top-p (alone when > 0) and guidance all act as in audiocraft.

    Both engines draw through torch.multinomial; it is replaced by a recorder that returns the most likely
    code, so both walk the same path and every distribution they sample from can be compared. audiocraft's
    top-p hands multinomial the probabilities sorted in descending order (and maps the draw back), so the
    distributions are compared sorted.
    """
    temperature, top_k, top_p, guidance = SAMPLING_CASES[case]
    recorded: list[torch.Tensor] = []

    def recording_multinomial(
        probs: torch.Tensor, num_samples: int = 1, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        recorded.append(probs.detach().reshape(-1, probs.shape[-1]).clone())
        return probs.argmax(dim=-1, keepdim=True)

    monkeypatch.setattr(torch, "multinomial", recording_multinomial)

    request = GenerationRequest(
        model_version="finetuned",
        prompt=PROMPT,
        duration=1,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        classifier_free_guidance=guidance,
        seed=5,
    )
    generated = our_engine.generate(request)
    ours = torch.stack(recorded)
    recorded.clear()

    audiocraft_musicgen.set_generation_params(
        use_sampling=True,
        top_k=top_k,
        top_p=top_p,
        temperature=temperature,
        duration=1,
        cfg_coef=guidance,
    )
    with torch.no_grad():
        their_wav = audiocraft_musicgen.generate([PROMPT], progress=False)
    theirs = torch.stack(recorded)
    ours = ours.sort(dim=-1, descending=True).values
    theirs = theirs.sort(dim=-1, descending=True).values

    assert ours.shape == theirs.shape  # [steps, codebooks, card]
    support_ours, support_theirs = (ours > 0).sum(-1), (theirs > 0).sum(-1)
    # The nucleus boundary is a float32 cumulative sum (ascending in transformers, descending in
    # audiocraft): on the tiny model's nearly flat distributions a code sitting exactly at the top-p
    # threshold may fall on either side. That is rounding, not semantics: allow one code at the boundary
    # in a few rows, and compare everything else exactly.
    same_support = support_ours == support_theirs
    assert (support_ours - support_theirs).abs().max().item() <= 1
    assert same_support.float().mean().item() >= 0.98
    difference = (ours - theirs)[same_support].abs().max().item()
    print(
        f"\n{case}: {ours.shape[0]} steps, probability max abs diff {difference:.3g}, mean support "
        f"{support_ours.float().mean().item():.1f} codes (audiocraft {support_theirs.float().mean().item():.1f}), "
        f"rows with a boundary code on the other side {int((~same_support).sum())}/{same_support.numel()}"
    )
    assert difference < 1e-5
    assert (generated.wav - their_wav[0]).abs().max().item() < 1e-5


# -- 3. normalization ----------------------------------------------------------------------------


def _stereo_test_signal(seconds: float = 2.0, amplitude: float = 0.4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    left = torch.sin(2 * math.pi * 220 * t) + 0.5 * torch.sin(2 * math.pi * 1375 * t)
    right = 0.7 * torch.sin(2 * math.pi * 330 * t + 0.3) + 0.2 * torch.randn(t.shape, generator=generator)
    envelope = 0.6 + 0.4 * torch.sin(2 * math.pi * 0.5 * t)
    return amplitude * torch.stack([left, right]) * envelope


_HOT_LOUDNESS = pytest.mark.xfail(
    strict=True,
    reason="audiocraft measures loudness with torchaudio's Loudness, whose biquad filters (lfilter clamp=True) "
    "clamp the K-weighted signal to +-1, so it under-measures audio that goes past full scale (here by 2.5 dB); "
    "we measure unclamped BS.1770 with pyloudnorm",
)
NORMALIZATION_CASES = [
    pytest.param(
        strategy,
        amplitude,
        id=f"{strategy}-{name}",
        marks=[_HOT_LOUDNESS] if (strategy, name) == ("loudness", "clipping") else [],
    )
    for strategy in ("peak", "clip", "rms", "loudness")
    for name, amplitude in (("quiet", 0.05), ("moderate", 0.4), ("clipping", 1.6))
]


@pytest.mark.parametrize(("strategy", "amplitude"), NORMALIZATION_CASES)
def test_normalization_matches_audiocraft_audio_write(strategy: str, amplitude: float) -> None:
    """Each strategy scales and clips like audiocraft.data.audio_utils.normalize_audio with the headrooms
    audio_write uses (peak/clip 1 dB, rms 18 dB, loudness -14 LUFS via torchaudio's BS.1770 meter)."""
    from audiocraft.data.audio_utils import normalize_audio as audiocraft_normalize

    wav = _stereo_test_signal(amplitude=amplitude)
    ours = normalize_audio(wav, strategy, SAMPLE_RATE)
    theirs = audiocraft_normalize(
        wav.clone(),
        normalize=True,
        strategy=strategy,
        peak_clip_headroom_db=1,
        rms_headroom_db=18,
        loudness_headroom_db=14,
        loudness_compressor=False,
        log_clipping=False,
        sample_rate=SAMPLE_RATE,
    )
    difference = (ours - theirs).abs().max().item()
    detail = ""
    if strategy == "loudness":
        import torchaudio

        ours_lufs = measure_loudness(wav, SAMPLE_RATE)
        theirs_lufs = torchaudio.transforms.Loudness(SAMPLE_RATE)(wav).item()
        detail = f", input loudness ours {ours_lufs:.4f} LUFS vs torchaudio {theirs_lufs:.4f} LUFS"
        assert abs(ours_lufs - theirs_lufs) < 0.01
    print(f"\nnormalize {strategy} (amplitude {amplitude}): max abs diff {difference:.3g}{detail}")
    # Loudness: pyloudnorm and torchaudio agree to ~1e-3 dB, i.e. a gain ratio within ~1e-4.
    assert difference < (1e-3 if strategy == "loudness" else 1e-6)


# -- 4. chroma -----------------------------------------------------------------------------------


def _melody(seconds_per_note: float, notes_hz: list[float]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(9)
    parts: list[torch.Tensor] = []
    for frequency in notes_hz:
        t = torch.arange(int(seconds_per_note * SAMPLE_RATE)) / SAMPLE_RATE
        parts.append(torch.stack([torch.sin(2 * math.pi * frequency * h * t) / h for h in (1, 2, 3)]).sum(0))
    wav = torch.cat(parts)
    return (0.3 * wav + 0.01 * torch.randn(wav.shape, generator=generator))[None]  # [1, T]


@pytest.mark.parametrize(
    "wav",
    [_melody(1.0, [440.0, 523.25, 659.25, 392.0]), _melody(0.25, [293.66])],
    ids=["four-notes", "shorter-than-one-window"],
)
def test_chroma_matches_audiocraft_chroma_extractor(wav: torch.Tensor) -> None:
    """Our torch.stft chroma equals audiocraft's ChromaExtractor (torchaudio Spectrogram + librosa's chroma
    filter bank) as the melody conditioner builds it: radix2_exp 14, inf-norm, argmax one-hot."""
    from audiocraft.modules.chroma import ChromaExtractor

    with torch.no_grad():
        theirs = ChromaExtractor(SAMPLE_RATE, n_chroma=12, radix2_exp=14, argmax=False)(wav[None])
        theirs_onehot = ChromaExtractor(SAMPLE_RATE, n_chroma=12, radix2_exp=14, argmax=True)(wav[None])
    ours = extract_chroma(wav, SAMPLE_RATE, argmax=False)
    ours_onehot = extract_chroma(wav, SAMPLE_RATE, argmax=True)

    assert ours.shape == theirs.shape
    difference = (ours - theirs).abs().max().item()
    print(f"\nchroma {tuple(wav.shape)}: {ours.shape[1]} frames, energies max abs diff {difference:.3g}")
    assert difference < 1e-4
    assert torch.equal(ours_onehot, theirs_onehot)
