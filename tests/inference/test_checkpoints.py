"""Checkpoints: random test models, loading through the model cache, and audiocraft conversion."""

from __future__ import annotations

import concurrent.futures
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile
import torch
import torch.nn.functional as F
from transformers import EncodecModel

from inference.checkpoints import loading as models_module
from inference.checkpoints.convert import (
    UnsupportedCheckpoint,
    convert_audiocraft_checkpoint,
    is_audiocraft_checkpoint,
)
from inference.checkpoints.loading import ModelCache, cpu_has_native_bfloat16, resolve_device, resolve_dtype
from inference.checkpoints.random_models import (
    COMPRESSION_DIR,
    REAL_DECODERS,
    TEXT_ENCODER_DIR,
    build_random_musicgen,
    make_test_model,
    musicgen_config,
    write_audiocraft_checkpoint,
)
from inference.cpu_features import cpu_flags, has_amx_bfloat16
from inference.engine.musicgen_engine import MusicGenEngine
from inference.request import GenerationRequest, RequestError
from inference.settings import EngineOptions, EngineSettings
from tests.inference.references import tensors_digest

torch.set_num_threads(1)

ONE_SECOND_TOKENS = 50 + 3  # 50 frames/s plus the delay pattern's 3 steps


def settings_with(base: EngineSettings, **models: str) -> EngineSettings:
    return base.model_copy(update={"models": base.models.model_copy(update=models)})


def settings_with_budget(base: EngineSettings, gigabytes: float) -> EngineSettings:
    return base.model_copy(update={"engine": base.engine.model_copy(update={"model_cache_gb": gigabytes})})


def generate_one_second(loaded, prompt: str = "lofi beat", seed: int = 0) -> torch.Tensor:
    tokens = loaded.tokenizer([prompt], return_tensors="pt")
    torch.manual_seed(seed)
    with torch.no_grad():
        return loaded.model.generate(
            **tokens, max_new_tokens=ONE_SECOND_TOKENS, do_sample=True, guidance_scale=3.0
        )


@pytest.fixture(scope="module")
def audiocraft_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny audiocraft exports: text model with a pointer / embedded EnCodec, and a melody model."""
    root = tmp_path_factory.mktemp("audiocraft")
    return {
        "pointer": make_test_model("small", root / "pointer", tiny=True, fmt="audiocraft", seed=3),
        "embedded": make_test_model(
            "small", root / "embedded", tiny=True, fmt="audiocraft", seed=4, embedded_compression=True
        ),
        "melody": make_test_model("melody", root / "melody", tiny=True, fmt="audiocraft", seed=5),
    }


def finetuned_settings(base: EngineSettings, folder: Path, cache_dir: Path) -> EngineSettings:
    return settings_with(
        base,
        finetuned=str(folder),
        text_encoder=str(folder / TEXT_ENCODER_DIR),
        compression=str(folder / COMPRESSION_DIR),
        conversion_cache=str(cache_dir),
    )


# --- a hand-written audiocraft LM forward pass: the reference the conversion must reproduce -------


def sin_embedding(length: int, dim: int) -> torch.Tensor:
    # audiocraft.modules.transformer.create_sin_embedding: cos then sin, period 10000.
    half = dim // 2
    positions = torch.arange(length, dtype=torch.float32).view(1, -1, 1)
    phase = positions / (10000 ** (torch.arange(half, dtype=torch.float32).view(1, 1, -1) / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


def fused_attention(
    x: torch.Tensor,
    memory: torch.Tensor,
    in_proj: torch.Tensor,
    out_proj: torch.Tensor,
    heads: int,
    causal: bool,
) -> torch.Tensor:
    wq, wk, wv = in_proj.chunk(3, dim=0)
    b, t, d = x.shape

    def split(h: torch.Tensor) -> torch.Tensor:
        return h.view(b, h.shape[1], heads, d // heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(
        split(x @ wq.T), split(memory @ wk.T), split(memory @ wv.T), is_causal=causal
    )
    return out.transpose(1, 2).reshape(b, t, d) @ out_proj.T


def audiocraft_text_lm_logits(
    state: dict[str, torch.Tensor], codes: torch.Tensor, text_states: torch.Tensor, *, heads: int, layers: int
) -> torch.Tensor:
    """audiocraft LMModel.forward (pre-norm, cross-attention to the projected T5 states) -> [B, K, T, card]."""
    num_codebooks, length = codes.shape[1], codes.shape[2]
    dim = state["emb.0.weight"].shape[1]

    def norm(h: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(h, (dim,), state[f"{name}.weight"], state[f"{name}.bias"], 1e-5)

    cross = F.linear(
        text_states,
        state["condition_provider.conditioners.description.output_proj.weight"],
        state["condition_provider.conditioners.description.output_proj.bias"],
    )
    x = sum(F.embedding(codes[:, k], state[f"emb.{k}.weight"]) for k in range(num_codebooks))
    x = x + sin_embedding(length, dim)
    for i in range(layers):
        p = f"transformer.layers.{i}."
        h = norm(x, p + "norm1")
        x = x + fused_attention(
            h,
            h,
            state[p + "self_attn.in_proj_weight"],
            state[p + "self_attn.out_proj.weight"],
            heads,
            causal=True,
        )
        x = x + fused_attention(
            norm(x, p + "norm_cross"),
            cross,
            state[p + "cross_attention.in_proj_weight"],
            state[p + "cross_attention.out_proj.weight"],
            heads,
            causal=False,
        )
        h = norm(x, p + "norm2")
        x = x + F.linear(F.gelu(F.linear(h, state[p + "linear1.weight"])), state[p + "linear2.weight"])
    x = norm(x, "out_norm")
    return torch.stack([F.linear(x, state[f"linears.{k}.weight"]) for k in range(num_codebooks)], dim=1)


# --- test models ------------------------------------------------------------------------------


def test_tiny_small_model_saves_and_loads_with_its_tokenizer_and_parts(tiny_model_dirs, engine_settings):
    folder = tiny_model_dirs["small"]
    loaded = ModelCache(engine_settings).get("small")
    assert (loaded.sample_rate, loaded.frame_rate, loaded.audio_channels) == (32000, 50, 1)
    assert not loaded.supports_melody
    assert (
        loaded.model.config.decoder.num_codebooks == 4
        and loaded.model.config.audio_encoder.codebook_size == 2048
    )

    # What was saved is what the seeded builder makes: same weights, same logits after the reload.
    reference = build_random_musicgen("small", tiny=True, seed=0)
    tokens = loaded.tokenizer(["warm piano"], return_tensors="pt")
    codes = torch.randint(0, 2048, (4, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = loaded.model(**tokens, decoder_input_ids=codes).logits
        want = reference(**tokens, decoder_input_ids=codes).logits
    torch.testing.assert_close(got, want)

    # The sub-folders a config can point text_encoder / compression at, and the processor.
    from transformers import AutoProcessor, AutoTokenizer, EncodecModel, T5EncoderModel

    assert T5EncoderModel.from_pretrained(folder / TEXT_ENCODER_DIR).config.d_model == 32
    assert AutoTokenizer.from_pretrained(folder / TEXT_ENCODER_DIR)("a b").input_ids[-1] == 1  # </s> appended
    assert EncodecModel.from_pretrained(folder / COMPRESSION_DIR).config.frame_rate == 50
    assert type(AutoProcessor.from_pretrained(folder)).__name__ == "MusicgenProcessor"


# Building a test model with the kernels of a CPU without AVX-512: ATen's and oneDNN's AVX2 ones
# (read once, at start-up, so they need a process of their own).
AVX2_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


@pytest.mark.skipif(
    "avx512f" not in cpu_flags(), reason="on a CPU without AVX-512 both builds use the AVX2 kernels"
)
def test_a_test_model_is_the_same_bit_for_bit_whichever_kernels_the_cpu_gets():
    """The stored audiocraft references name their checkpoints by digest, so a test model must not
    depend on the machine that builds it (AVX2 or AVX-512 convolutions round differently)."""
    script = (
        "import torch; torch.set_num_threads(1)\n"
        "from inference.checkpoints.random_models import build_random_musicgen\n"
        "from tests.inference.references import tensors_digest\n"
        "print(tensors_digest(build_random_musicgen('small', tiny=True, seed=7).state_dict()))"
    )
    with_avx2_kernels = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **AVX2_KERNELS},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    assert with_avx2_kernels == tensors_digest(build_random_musicgen("small", tiny=True, seed=7).state_dict())


def test_tiny_models_generate_audio_that_depends_on_the_codes(engine_settings):
    loaded = ModelCache(engine_settings).get("small")
    first, again, other = (generate_one_second(loaded, seed=s) for s in (1, 1, 2))
    assert first.shape == (1, 1, 32000)
    assert torch.equal(first, again)
    # Random codebooks: different codes decode to different sound (zero codebooks would make them equal).
    assert not torch.allclose(first, other)
    assert first.std() > 0


def test_tiny_melody_model_takes_chroma(engine_settings):
    loaded = ModelCache(engine_settings).get("melody")
    assert loaded.supports_melody
    assert loaded.model.config.num_chroma == 12
    chroma = F.one_hot(torch.randint(0, 12, (1, 20)), 12).float()
    tokens = loaded.tokenizer(["hummed tune"], return_tensors="pt")
    with torch.no_grad():
        audio = loaded.model.generate(**tokens, input_features=chroma, max_new_tokens=ONE_SECOND_TOKENS)
    assert audio.shape == (1, 1, 32000)


def test_real_architectures_have_the_published_sizes():
    from transformers import MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

    assert REAL_DECODERS["small"].num_layers == 24 and REAL_DECODERS["large"].hidden_size == 2048
    decoder_params = {}
    for version in ("small", "melody"):
        config = musicgen_config(version)
        model_class = (
            MusicgenMelodyForConditionalGeneration
            if version == "melody"
            else MusicgenForConditionalGeneration
        )
        with torch.device("meta"):  # the shapes without allocating a few GB of weights
            model = model_class(config)
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        decoder_params[version] = count(model.decoder)
        assert count(model.text_encoder) == 109_628_544  # t5-base's encoder
        assert model.config.audio_encoder.frame_rate == 50 and model.config.audio_encoder.num_quantizers == 4
        assert model.config.text_encoder.vocab_size == 32128
    # musicgen-small: 24 layers x (self + cross attention + FFN + 3 LayerNorms), 4 embeddings and heads,
    # the final LayerNorm: ≈ 420M.
    per_layer = 8 * 1024**2 + 2 * 1024 * 4096 + 3 * 2 * 1024
    assert decoder_params["small"] == 24 * per_layer + 4 * 1024 * (2049 + 2048) + 2 * 1024
    # musicgen-melody (1.5B): 48 layers of 1536 without cross-attention ≈ 1.38B.
    assert math.isclose(decoder_params["melody"], 1.384e9, rel_tol=0.01)
    assert musicgen_config("melody").decoder.num_hidden_layers == 48


# --- device and dtype -------------------------------------------------------------------------


def test_auto_dtype_uses_bfloat16_only_on_cpus_that_compute_it_natively():
    def cpuinfo(flags: str) -> str:
        return f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 {flags}\n\n"

    assert cpu_has_native_bfloat16(cpuinfo("avx512f avx512_bf16"))
    assert cpu_has_native_bfloat16(cpuinfo("amx_tile amx_bf16 amx_int8"))
    assert not cpu_has_native_bfloat16(cpuinfo("avx512f avx512bw"))
    assert not cpu_has_native_bfloat16("")  # no flags line (not Linux, or a stripped container)
    # Only AMX tiles get oneDNN's bfloat16 products (`cpu_matmul = "auto"`); AVX-512 BF16 keeps fbgemm's.
    assert has_amx_bfloat16(cpu_flags(cpuinfo("amx_tile amx_bf16 amx_int8")))
    assert not has_amx_bfloat16(cpu_flags(cpuinfo("avx512f avx512_bf16")))


def test_device_and_dtype_follow_the_config():
    cpu = resolve_device(EngineOptions(device="cpu"))
    assert cpu == torch.device("cpu")
    native_bf16 = cpu_has_native_bfloat16()
    assert resolve_dtype(EngineOptions(dtype="auto"), cpu) == (
        torch.bfloat16 if native_bf16 else torch.float32
    )
    assert resolve_dtype(EngineOptions(dtype="auto"), torch.device("cuda")) == torch.float16
    assert resolve_dtype(EngineOptions(dtype="bfloat16"), cpu) == torch.bfloat16
    expected_auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(EngineOptions(device="auto")).type == expected_auto
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device(EngineOptions(device="cuda:1"))


def test_bfloat16_setting_loads_bfloat16_weights(engine_settings):
    settings = engine_settings.model_copy(
        update={"engine": engine_settings.engine.model_copy(update={"dtype": "bfloat16"})}
    )
    loaded = ModelCache(settings).get("small")
    assert loaded.dtype == torch.bfloat16
    assert next(loaded.model.decoder.parameters()).dtype == torch.bfloat16
    # EnCodec stays float32 (audiocraft autocasts only the language model; its quantizer overflows float16).
    assert {p.dtype for p in loaded.model.audio_encoder.parameters()} == {torch.float32}
    assert next(ModelCache(settings).get_compression().model.parameters()).dtype == torch.float32


# --- fine-tunes and audiocraft checkpoints -----------------------------------------------------


def test_finetuned_without_a_configured_checkpoint_is_a_clear_request_error(engine_settings):
    with pytest.raises(RequestError, match="No fine-tuned model is configured"):
        ModelCache(engine_settings).get("finetuned")


def test_unreachable_hub_id_names_the_config_key(engine_settings):
    settings = settings_with(engine_settings, large="facebook/musicgen-large-not-here")
    with pytest.raises(models_module.ModelLoadError, match=r"\[models\] large"):
        ModelCache(settings).get("large")


@pytest.mark.parametrize("compression_form", ["pointer", "embedded"])
def test_audiocraft_finetune_converts_with_the_same_logits_and_generates(
    audiocraft_dirs, engine_settings, tmp_path, compression_form
):
    folder = audiocraft_dirs[compression_form]
    assert is_audiocraft_checkpoint(folder) and not is_audiocraft_checkpoint(folder / TEXT_ENCODER_DIR)
    loaded = ModelCache(finetuned_settings(engine_settings, folder, tmp_path)).get("finetuned")
    assert loaded.version == "finetuned" and Path(loaded.weights_path).parent == tmp_path

    package = torch.load(folder / "state_dict.bin", weights_only=True)
    state = package["best_state"]
    from transformers import T5EncoderModel

    tokens = loaded.tokenizer(["dreamy synth pads"], return_tensors="pt")
    text_states = T5EncoderModel.from_pretrained(folder / TEXT_ENCODER_DIR)(**tokens).last_hidden_state
    codes = torch.randint(0, 2049, (1, 4, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = audiocraft_text_lm_logits(state, codes, text_states, heads=4, layers=2)
        got = loaded.model(**tokens, decoder_input_ids=codes.reshape(4, 9)).logits.reshape(1, 4, 9, -1)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    # audiocraft's inference_coef becomes the default guidance.
    assert loaded.model.generation_config.guidance_scale == 3.0

    # The EnCodec decodes codes exactly as the one it came from (the pointer's, or the embedded export).
    from transformers import EncodecModel

    original = EncodecModel.from_pretrained(folder / COMPRESSION_DIR)
    audio_codes = torch.randint(0, 2048, (1, 1, 4, 25), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model.audio_encoder.decode(audio_codes, [None]).audio_values,
            original.decode(audio_codes, [None]).audio_values,
        )
    assert generate_one_second(loaded).shape == (1, 1, 32000)


def test_audiocraft_melody_finetune_converts_to_a_melody_model(audiocraft_dirs, engine_settings, tmp_path):
    folder = audiocraft_dirs["melody"]
    loaded = ModelCache(finetuned_settings(engine_settings, folder, tmp_path)).get("finetuned")
    assert loaded.supports_melody and loaded.model.config.chroma_length == 235
    reference = build_random_musicgen("melody", tiny=True, seed=5)
    tokens = loaded.tokenizer(["folk song"], return_tensors="pt")
    chroma = F.one_hot(torch.randint(0, 12, (1, 10), generator=torch.Generator().manual_seed(0)), 12).float()
    codes = torch.randint(0, 2048, (4, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = loaded.model(**tokens, input_features=chroma, decoder_input_ids=codes).logits
        want = reference(**tokens, input_features=chroma, decoder_input_ids=codes).logits
    torch.testing.assert_close(got, want)


def test_conversion_happens_once_and_is_reused_by_later_workers(
    audiocraft_dirs, engine_settings, tmp_path, monkeypatch
):
    folder = audiocraft_dirs["pointer"]
    settings = finetuned_settings(engine_settings, folder, tmp_path)
    first = ModelCache(settings).get("finetuned")
    config_file = Path(first.weights_path) / "config.json"
    written_at = config_file.stat().st_mtime_ns

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("the checkpoint was converted again")

    monkeypatch.setattr(models_module, "convert_audiocraft_checkpoint", no_second_conversion)
    second = ModelCache(settings).get("finetuned")  # a fresh cache, as in a restarted worker
    assert second.weights_path == first.weights_path
    assert config_file.stat().st_mtime_ns == written_at
    leftovers = [p.name for p in tmp_path.iterdir() if p.suffix != ".lock"]
    assert leftovers == [Path(first.weights_path).name]  # no half-written copies

    # A retrained checkpoint (new state_dict.bin) gets a new conversion.
    state_file = folder / "state_dict.bin"
    stat = state_file.stat()
    os.utime(state_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(AssertionError, match="converted again"):
        ModelCache(settings).get("finetuned")


@pytest.mark.parametrize(
    ("override", "named_in_message"),
    [
        ({"transformer_lm.positional_embedding": "rope"}, "positional_embedding='rope'"),
        ({"transformer_lm.layer_scale": 0.1}, "layer_scale=0.1"),
        ({"transformer_lm.qk_layer_norm": True}, "qk_layer_norm=True"),
        ({"transformer_lm.kv_repeat": 2}, "kv_repeat=2"),
        ({"transformer_lm.bias_attn": True}, "bias_attn=True"),
        ({"transformer_lm.two_step_cfg": True}, "two_step_cfg=True"),
        ({"codebooks_pattern.modeling": "parallel"}, "codebooks_pattern='parallel'"),
        ({"conditioners.genre": {"model": "lut", "lut": {"n_bins": 10}}}, "conditioners="),
    ],
)
def test_features_transformers_cannot_express_are_refused_by_name(tmp_path, override, named_in_message):
    model = build_random_musicgen("small", tiny=True, seed=0)
    write_audiocraft_checkpoint(
        model, tmp_path, model_version="small", embedded_compression=False, cfg_overrides=override
    )
    with pytest.raises(UnsupportedCheckpoint, match="cannot express") as refused:
        convert_audiocraft_checkpoint(tmp_path, tmp_path / "out", text_encoder="unused", compression="unused")
    assert named_in_message in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_a_text_encoder_of_the_wrong_width_is_refused(audiocraft_dirs, tmp_path):
    # The tiny T5s all have d_model 32: a wider one stands in for a mismatched [models] text_encoder.
    from transformers import T5Config, T5EncoderModel

    from inference.checkpoints.random_models import build_tokenizer

    wide = tmp_path / "t5-wide"
    T5EncoderModel(
        T5Config(vocab_size=512, d_model=48, d_kv=8, d_ff=64, num_layers=1, num_heads=2)
    ).save_pretrained(wide)
    build_tokenizer(vocab_size=512).save_pretrained(wide)
    folder = audiocraft_dirs["pointer"]
    with pytest.raises(UnsupportedCheckpoint, match="d_model 48"):
        convert_audiocraft_checkpoint(
            folder, tmp_path / "out", text_encoder=str(wide), compression=str(folder / COMPRESSION_DIR)
        )


# --- the cache's memory budget -------------------------------------------------------------------


def test_switching_models_reuses_what_fits_and_evicts_the_least_recently_used(engine_settings):
    roomy = ModelCache(engine_settings)
    small = roomy.get("small")
    roomy.get("melody")
    assert roomy.get("small").model is small.model  # still cached: no reload
    assert roomy.get("medium").model is small.model  # medium points at the same folder: shared copy

    one_model_budget = (small.size_bytes * 1.5) / models_module.BYTES_PER_GB
    tight = ModelCache(settings_with_budget(engine_settings, one_model_budget))
    first_small = tight.get("small")
    tight.get("melody")
    assert [source for _, source in tight.cached_sources] == [engine_settings.models.melody]
    assert tight.get("small").model is not first_small.model  # evicted, so loaded again
    assert tight.cached_bytes <= tight.budget_bytes


def test_a_model_larger_than_the_budget_still_loads_alone(engine_settings):
    cache = ModelCache(settings_with_budget(engine_settings, 0.0001))  # 100 kB
    cache.get("small")
    loaded = cache.get("melody")
    assert loaded.size_bytes > cache.budget_bytes
    assert [source for _, source in cache.cached_sources] == [engine_settings.models.melody]


def test_encode_decode_gets_the_configured_compression_model(engine_settings):
    cache = ModelCache(engine_settings)
    codec = cache.get_compression()
    assert (codec.sample_rate, codec.frame_rate, codec.audio_channels) == (32000, 50, 1)
    wav = torch.randn(1, 1, 32000, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        encoded = codec.model.encode(wav, bandwidth=2.2)
        assert encoded.audio_codes.shape[-2:] == (4, 50)
        decoded = codec.model.decode(encoded.audio_codes, encoded.audio_scales).audio_values
    assert decoded.shape[-1] == 32000
    assert cache.get_compression() is codec


def round_trip(codec, wav: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        encoded = codec.encode(wav[None])
        return codec.decode(encoded.audio_codes, encoded.audio_scales).audio_values[0]


def encode_decode_request(tmp_path: Path) -> tuple[GenerationRequest, torch.Tensor]:
    wav = torch.randn(1, 16_000, generator=torch.Generator().manual_seed(3)) * 0.2
    soundfile.write(str(tmp_path / "clip.wav"), wav[0].numpy(), 32_000, subtype="FLOAT")
    return GenerationRequest(
        model_version="encode-decode", input_audio=str(tmp_path / "clip.wav"), seed=1
    ), wav


def test_encode_decode_runs_through_the_served_finetunes_own_embedded_encodec(
    audiocraft_dirs, engine_settings, tmp_path
):
    # As the predictor: encode-decode uses the compression model of the model the bot serves.
    folder = audiocraft_dirs["embedded"]
    settings = settings_with(
        engine_settings,
        finetuned=str(folder),
        text_encoder=str(folder / TEXT_ENCODER_DIR),
        conversion_cache=str(tmp_path / "converted"),
    )
    request, wav = encode_decode_request(tmp_path)
    result = MusicGenEngine(settings).generate(request)
    embedded = EncodecModel.from_pretrained(folder / COMPRESSION_DIR)
    configured = EncodecModel.from_pretrained(engine_settings.models.compression)
    torch.testing.assert_close(result.wav, round_trip(embedded, wav)[:, : wav.shape[-1]], atol=1e-5, rtol=0)
    assert not torch.allclose(result.wav, round_trip(configured, wav)[:, : wav.shape[-1]], atol=1e-3)


def test_an_audiocraft_checkpoint_given_to_encode_decode_round_trips_through_its_encodec(
    audiocraft_dirs, engine_settings, tmp_path
):
    folder = audiocraft_dirs["embedded"]
    settings = settings_with(
        engine_settings,
        text_encoder=str(folder / TEXT_ENCODER_DIR),
        conversion_cache=str(tmp_path / "converted"),
    )
    request, wav = encode_decode_request(tmp_path)
    result = MusicGenEngine(settings).generate(request, model_source=str(folder))
    embedded = EncodecModel.from_pretrained(folder / COMPRESSION_DIR)
    torch.testing.assert_close(result.wav, round_trip(embedded, wav)[:, : wav.shape[-1]], atol=1e-5, rtol=0)


def test_an_embedded_encodec_export_uses_audiocraft_key_names(audiocraft_dirs):
    # audiocraft's SEANet wraps transposed convolutions as `convtr.convtr` and the others as
    # `conv.conv`; its strict load_state_dict refuses any other spelling (our converter reads both,
    # so only the names themselves catch a mix-up).
    package = torch.load(audiocraft_dirs["embedded"] / "compression_state_dict.bin", weights_only=True)
    keys = set(package["best_state"])
    decoder_upsampling = {
        key for key in keys if key.startswith("decoder.model.") and ".convtr.convtr." in key
    }
    assert decoder_upsampling, "the decoder's transposed convolutions should be saved as convtr.convtr"
    for bias in (key for key in decoder_upsampling if key.endswith(".bias")):
        module = bias.removesuffix(".bias")
        assert {f"{module}.weight_g", f"{module}.weight_v"} <= keys, f"{module} lost its weight-norm weights"
    assert not any(".convtr." in key for key in keys if key.startswith("encoder.")), (
        "the encoder has no transposed convs"
    )
    assert "encoder.model.0.conv.conv.weight_g" in keys


def test_a_hub_id_in_the_hugging_face_cache_is_sized_before_loading(
    tiny_model_dirs, engine_settings, tmp_path, monkeypatch
):
    # The shipped config names hub ids (facebook/musicgen-large). Their size must be known before
    # loading, so the cache makes room first instead of holding the old models and the new one at once
    # (on a GPU sized to the budget, that peak runs out of memory).
    import huggingface_hub.constants

    hub = tmp_path / "hub"
    snapshot = hub / "models--facebook--musicgen-small" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for file in tiny_model_dirs["small"].iterdir():
        if file.is_file():
            (snapshot / file.name).symlink_to(file)
    (hub / "models--facebook--musicgen-small" / "refs").mkdir()
    (hub / "models--facebook--musicgen-small" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))

    cache = ModelCache(engine_settings)
    local_estimate = cache._estimate_bytes(str(tiny_model_dirs["small"]))
    assert local_estimate > 0
    assert cache._estimate_bytes("facebook/musicgen-small") == local_estimate
    assert cache._estimate_bytes("facebook/musicgen-large") == 0  # not downloaded: unknown


def test_workers_meeting_a_new_checkpoint_at_once_convert_it_once(
    audiocraft_dirs, engine_settings, tmp_path, monkeypatch
):
    # Two worker processes (here: threads with caches of their own) ask for the same fresh fine-tune.
    settings = finetuned_settings(engine_settings, audiocraft_dirs["pointer"], tmp_path)
    conversions: list[Path] = []
    real_conversion = models_module.convert_audiocraft_checkpoint

    def counted_slow_conversion(source, target, **kwargs):
        conversions.append(Path(target))
        time.sleep(0.3)  # long enough for the other worker to arrive while this one converts
        return real_conversion(source, target, **kwargs)

    monkeypatch.setattr(models_module, "convert_audiocraft_checkpoint", counted_slow_conversion)
    source = settings.models.finetuned
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        folders = list(pool.map(lambda _: ModelCache(settings).weights_folder(source), range(2)))
    assert len(conversions) == 1
    assert folders[0] == folders[1] == str(conversions[0])
    assert ModelCache(settings).get("finetuned").weights_path == folders[0]
