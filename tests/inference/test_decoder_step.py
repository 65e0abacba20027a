"""Our forward pass of the decoder (`inference.engine.decoder_step`) against transformers' own, on the tiny
models: the same logits for text (padded and null conditions), melody prefixes and continuation
prompts, step after step; the same music from an engine on either pass; and the CPU kernels for
half-precision weights (fbgemm's float16, oneDNN's bfloat16 on AMX) keep each row independent of its
batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from inference.engine.decoder_step import (
    AMX_ROWS_PER_CALL,
    DecoderStep,
    Linear,
    MatmulKernel,
    amx_kernel_available,
    half_precision_kernel_available,
    onednn_kernel_available,
)
from inference.engine.kernel_choice import candidate_kernels
from inference.engine.musicgen_engine import EngineJob, GeneratedAudio, MusicGenEngine
from inference.request import GenerationRequest
from inference.settings import EngineSettings
from tests.inference.audio_checks import continuation_clip, same

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load(folder: Path, dtype: torch.dtype = torch.float32) -> Any:
    from transformers import (
        AutoConfig,
        MusicgenForConditionalGeneration,
        MusicgenMelodyForConditionalGeneration,
    )

    melody = AutoConfig.from_pretrained(folder).model_type == "musicgen_melody"
    model_class = MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration
    return model_class.from_pretrained(folder, dtype=dtype).eval()


def run_both(model: Any, ids: torch.Tensor, states: torch.Tensor, mask: torch.Tensor | None, steps: int):
    """Logits of the last position from both passes: the first call over `ids`, then `steps` calls
    of one (random) code each."""
    ours = DecoderStep(model, cpu_matmul="torch")
    theirs = model.decoder
    codebooks = ours.num_codebooks
    prefix = states.shape[1] if mask is None else 0
    cache = ours.new_cache(states.shape[0], prefix + ids.shape[-1] + steps)
    their_cache = None
    generator = torch.Generator().manual_seed(0)
    pairs = []
    for step in range(steps + 1):
        first = step == 0
        mine = ours(
            input_ids=ids, cache=cache, encoder_hidden_states=states, encoder_attention_mask=mask
        ).logits[:, -1]
        output = theirs(
            input_ids=ids,
            encoder_hidden_states=states if (first or mask is not None) else None,
            encoder_attention_mask=mask,
            cache=their_cache,
            use_cache=True,
        )
        their_cache = output.cache
        pairs.append((mine, output.logits[:, -1]))
        ids = torch.randint(0, 2048 // 64, (states.shape[0] * codebooks, 1), generator=generator)
    return pairs


@torch.inference_mode()
def test_our_pass_gives_transformers_logits_for_text_with_padding_and_the_null_condition(
    tiny_model_dirs: dict[str, Path],
) -> None:
    model = load(tiny_model_dirs["small"])
    hidden = model.decoder.config.hidden_size
    states = torch.randn(3, 7, hidden)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0  # a shorter prompt, padded
    mask[2] = 0  # the unconditional row of guidance: nothing to attend to
    states = states * mask[..., None]
    ids = torch.full((3 * 4, 1), 2048)
    for mine, theirs in run_both(model, ids, states, mask, steps=12):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_our_pass_gives_transformers_logits_for_a_continuation_prompt(
    tiny_model_dirs: dict[str, Path],
) -> None:
    model = load(tiny_model_dirs["small"])
    hidden = model.decoder.config.hidden_size
    states = torch.randn(2, 5, hidden)
    mask = torch.ones(2, 5, dtype=torch.long)
    ids = torch.randint(0, 2048, (2 * 4, 9))  # the first call reads nine positions at once, causally
    for mine, theirs in run_both(model, ids, states, mask, steps=6):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_our_pass_gives_transformers_logits_for_a_melody_prefix(tiny_model_dirs: dict[str, Path]) -> None:
    model = load(tiny_model_dirs["melody"])
    hidden = model.decoder.config.hidden_size
    prefix = torch.randn(2, 11, hidden)
    ids = torch.full((2 * 4, 1), 2048)
    for mine, theirs in run_both(model, ids, prefix, None, steps=8):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("version", ["small", "melody"])
def test_a_step_lists_each_of_the_decoders_matrix_products_once(
    tiny_model_dirs: dict[str, Path], version: str
) -> None:
    model = load(tiny_model_dirs[version])
    step = DecoderStep(model, cpu_matmul="torch")
    weights = [m.weight for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)]
    # Every weight but the text's cross-attention keys and values, which the first call alone reads.
    once = [layer.cross_kv for layer in step.layers if layer.cross_kv is not None]
    assert bool(once) == (version == "small")
    listed = step.linears + once
    assert sum(p.out_features * p.in_features for p in listed) == sum(w.numel() for w in weights)
    assert step.linears[-1] is step.lm_heads


def request(**changes: object) -> GenerationRequest:
    return GenerationRequest(model_version="small", prompt="warm rhodes", duration=1, seed=3).replace(
        **changes
    )


def test_an_engine_on_either_pass_makes_the_same_music(engine_settings: EngineSettings) -> None:
    theirs_options = engine_settings.engine.model_copy(update={"decoder": "transformers"})
    ours = MusicGenEngine(engine_settings)
    theirs = MusicGenEngine(engine_settings.model_copy(update={"engine": theirs_options}), ours.cache)
    jobs = [
        EngineJob(request(temperature=0)),
        EngineJob(request(prompt="a much longer description of a slow jazz ballad", seed=4, duration=2)),
        EngineJob(request(model_version="melody", seed=5, top_p=0.9)),
    ]
    for mine, reference in zip(ours.generate_batch(jobs), theirs.generate_batch(jobs), strict=True):
        assert isinstance(mine, GeneratedAudio) and isinstance(reference, GeneratedAudio)
        assert torch.equal(mine.wav, reference.wav)


needs_half_kernel = pytest.mark.skipif(
    not half_precision_kernel_available(), reason="fbgemm's float16 GEMM does not run on this CPU"
)


@needs_half_kernel
def test_the_float16_kernel_computes_each_row_alone_and_exactly_from_bfloat16_weights() -> None:
    torch.manual_seed(0)
    weight = torch.randn(384, 256).to(torch.bfloat16)
    packed = Linear(weight, kernel=MatmulKernel.HALF)
    rows = torch.randn(16, 256)
    whole = packed(rows)
    # Each row is the same alone, in a pair (a job with guidance) or among neighbours, up to the
    # rounding of its float32 sums: on some CPUs (an AMD EPYC with AVX-512 here) fbgemm sums some row
    # counts in another order, which changes last bits only, as float32 kernels do...
    for start, count in [(0, 1), (3, 2), (5, 8), (15, 1)]:
        part = packed(rows[start : start + count].contiguous())
        torch.testing.assert_close(part, whole[start : start + count], rtol=0.0, atol=1e-4)
    # ...and it is the float32 product of the bfloat16 weights (exact in float16), not of a rounding.
    reference = rows.double() @ weight.double().T
    assert (whole.double() - reference).abs().max() < 1e-3


needs_amx_kernel = pytest.mark.skipif(
    not amx_kernel_available(), reason="this CPU has no AMX tiles for oneDNN's bfloat16 GEMM"
)


@needs_amx_kernel
def test_the_amx_kernel_computes_each_row_alone_in_any_batch_and_in_long_inputs() -> None:
    torch.manual_seed(0)
    # A shape for which oneDNN alone rounds rows differently beyond 32 of them (not every shape does).
    weight = (0.05 * torch.randn(384, 512)).to(torch.bfloat16)
    linear = Linear(weight, kernel=MatmulKernel.AMX)
    rows = torch.randn(3 * AMX_ROWS_PER_CALL + 5, 512)  # a long first call: several blocks
    whole = linear(rows)
    assert whole.dtype == torch.bfloat16  # as computed: the step adds it to its float32 sums
    # Every row is the same alone, in a pair, among neighbours and in an input longer than a block
    # (from 33 rows on oneDNN's own blocking would round some sums differently)...
    alone = torch.cat([linear(rows[r : r + 1]) for r in range(rows.shape[0])])
    assert torch.equal(whole, alone)
    for start, count in [(3, 2), (5, 8), (7, 40)]:
        assert torch.equal(linear(rows[start : start + count]), whole[start : start + count])
    assert torch.equal(linear(rows[:64].view(4, 16, 512)), whole[:64].view(4, 16, 384))
    # ...and it is the product of the bfloat16-rounded rows and weights, rounded to bfloat16.
    reference = rows.to(torch.bfloat16).double() @ weight.double().T
    torch.testing.assert_close(whole.double(), reference, rtol=2**-8, atol=1e-6)


@needs_amx_kernel
def test_the_amx_kernel_applies_exact_gelu_before_rounding_and_row_by_row() -> None:
    torch.manual_seed(0)
    weight = (0.05 * torch.randn(384, 512)).to(torch.bfloat16)
    fc1 = Linear(weight, kernel=MatmulKernel.AMX, then_gelu=True)
    rows = torch.randn(AMX_ROWS_PER_CALL + 7, 512)
    whole = fc1(rows)
    alone = torch.cat([fc1(rows[r : r + 1]) for r in range(rows.shape[0])])
    assert torch.equal(whole, alone)
    sums = rows.to(torch.bfloat16).double() @ weight.double().T
    exact, tanh = F.gelu(sums).to(torch.bfloat16), F.gelu(sums, approximate="tanh").to(torch.bfloat16)
    # GELU of the float32 sums, rounded once: equal to the exact (erf) GELU of the exact sums but where
    # a sum's own rounding tips it over a bfloat16 tie (0.05 % here), and not the tanh approximation
    # (9.5 % of the values differ).
    assert (whole == exact).float().mean() > 0.99
    assert (whole == tanh).float().mean() < 0.95
    torch.testing.assert_close(whole.double(), exact.double(), rtol=2**-7, atol=1e-3)


def test_the_kernel_follows_the_weights_dtype_the_device_and_cpu_matmul() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    half = MatmulKernel.HALF if half_precision_kernel_available() else MatmulKernel.TORCH
    amx_or_half = MatmulKernel.AMX if amx_kernel_available() else half
    assert MatmulKernel.choose(cpu, torch.bfloat16, "auto") is amx_or_half
    assert MatmulKernel.choose(cpu, torch.bfloat16, "fbgemm") is half
    assert MatmulKernel.choose(cpu, torch.float16, "auto") is half
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        assert MatmulKernel.choose(cpu, dtype, "torch") is MatmulKernel.TORCH
        assert MatmulKernel.choose(cuda, dtype, "auto") is MatmulKernel.TORCH


@needs_half_kernel
@pytest.mark.parametrize("cpu_matmul", ["auto", "rules", "fbgemm"])
def test_a_bfloat16_engine_keeps_each_jobs_music_in_a_batch_with_either_cpu_kernel(
    engine_settings: EngineSettings, cpu_matmul: str, tmp_path: Path
) -> None:
    options = engine_settings.engine.model_copy(update={"dtype": "bfloat16", "cpu_matmul": cpu_matmul})
    engine = MusicGenEngine(engine_settings.model_copy(update={"engine": options}))
    # Two continuations of one length start together: their first step reads 4 rows x 51 positions.
    # (The tiny model's products are too small for oneDNN's blocking to change beyond 32 rows; the
    # AMX kernel test above is the one that fails without the blocks.)
    requests = [
        request(prompt="techno", seed=1),
        request(seed=8),
        request(input_audio=continuation_clip(tmp_path, 1.0, 220), continuation=True, seed=2),
        request(input_audio=continuation_clip(tmp_path, 1.0, 330), continuation=True, seed=3),
    ]
    batch = engine.generate_batch([EngineJob(r) for r in requests])
    decoder = engine._decoder_for(engine.cache.get("small"))
    assert isinstance(decoder.forward, DecoderStep)
    kernel = decoder.forward.kernel
    if cpu_matmul == "auto":  # measured among the bfloat16 kernels where there are several (AMX)
        assert kernel in candidate_kernels(torch.bfloat16)
    else:
        assert kernel is MatmulKernel.choose(torch.device("cpu"), torch.bfloat16, cpu_matmul)
    for together, alone in zip(batch, requests, strict=True):
        assert same(together, engine.generate(alone))


needs_onednn_kernel = pytest.mark.skipif(
    not onednn_kernel_available(), reason="this torch has no oneDNN float32 GEMM"
)


def kernels_run(linear: Linear, rows: torch.Tensor) -> set[str]:
    """The oneDNN operators torch's profiler saw while `linear` multiplied `rows`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as seen:
        linear(rows)
    return {event.name for event in seen.events() if event.name.startswith("mkldnn::")}


@needs_onednn_kernel
def test_float32_products_take_torch_s_kernel_for_one_job_and_onednn_s_for_a_batch() -> None:
    torch.manual_seed(0)
    weight = 0.05 * torch.randn(384, 256)  # about the scale of a model's weights
    linear = Linear(weight, kernel=MatmulKernel.ONEDNN)
    rows = torch.randn(16, 256)
    assert kernels_run(linear, rows[:3]) == set() and kernels_run(linear, rows[:4]) == {
        "mkldnn::_linear_pointwise"
    }
    whole = linear(rows)
    # From 4 rows on, oneDNN's: each row the same among 4, 8 or 16 rows, in 2-D or 3-D inputs...
    for start, count in [(0, 4), (5, 8), (4, 12)]:
        assert torch.equal(linear(rows[start : start + count].contiguous()), whole[start : start + count])
    assert torch.equal(linear(rows[None]), whole[None])
    # ...below, torch's own (one job: 2 rows with guidance)...
    for count in (1, 2, 3):
        assert torch.equal(linear(rows[:count]), torch.nn.functional.linear(rows[:count], weight))
    # ...and both are the float32 product, to float32's rounding.
    torch.testing.assert_close(whole.double(), rows.double() @ weight.double().T, rtol=1e-5, atol=1e-5)


@needs_half_kernel
def test_engines_sharing_a_model_cache_share_one_packed_decoder(engine_settings: EngineSettings) -> None:
    bfloat16 = engine_settings.model_copy(
        update={"engine": engine_settings.engine.model_copy(update={"dtype": "bfloat16"})}
    )
    first = MusicGenEngine(bfloat16)
    second = MusicGenEngine(bfloat16, first.cache)
    alone = first.generate(request(seed=12))
    loaded = first.cache.get("small")
    step = first._decoder_for(loaded).forward
    assert isinstance(step, DecoderStep) and step.kernel.packs_weights
    # The packed weights replace the model's own (memory does not double), once for both engines.
    assert loaded.model.decoder.model.decoder.layers[0].fc1.weight.numel() == 0
    assert second._decoder_for(loaded).forward is step
    assert torch.equal(second.generate(request(seed=12)).wav, alone.wav)
    # torch's own products (cpu_matmul = "torch") would need the weights the packing replaced.
    torch_options = bfloat16.engine.model_copy(update={"cpu_matmul": "torch"})
    third = MusicGenEngine(bfloat16.model_copy(update={"engine": torch_options}), first.cache)
    with pytest.raises(ValueError, match="packed for cpu_matmul = 'rules'"):
        third.generate(request(seed=12))


def test_float32_weights_stay_the_models_own_for_every_engine(engine_settings: EngineSettings) -> None:
    first = MusicGenEngine(engine_settings)
    alone = first.generate(request(seed=13))
    loaded = first.cache.get("small")
    assert loaded.model.decoder.model.decoder.layers[0].fc1.weight.numel() > 0
    torch_options = engine_settings.engine.model_copy(update={"cpu_matmul": "torch"})
    other = MusicGenEngine(engine_settings.model_copy(update={"engine": torch_options}), first.cache)
    # One job is 2 rows: torch's products either way, so the same audio.
    assert torch.equal(other.generate(request(seed=13)).wav, alone.wav)


@torch.inference_mode()
def test_in_float16_with_torch_products_our_pass_stays_close_to_float32(
    tiny_model_dirs: dict[str, Path],
) -> None:
    # What runs on a GPU (float16 weights, activations and cache, torch's products), here on the CPU:
    # the masked null condition must stay finite in float16, and the logits near float32's.
    full = load(tiny_model_dirs["small"])
    half = load(tiny_model_dirs["small"], torch.float16)
    hidden = full.decoder.config.hidden_size
    states = torch.randn(2, 6, hidden)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1] = 0
    states = states * mask[..., None]
    ids = torch.full((2 * 4, 1), 2048)
    reference = run_both(full, ids, states, mask, steps=5)
    half_step = DecoderStep(half, cpu_matmul="torch")
    assert half_step.dtype == torch.float16 and half_step.kernel is MatmulKernel.TORCH
    cache = half_step.new_cache(2, 8)
    generator = torch.Generator().manual_seed(0)
    for mine_full, _ in reference:
        logits = half_step(
            input_ids=ids, cache=cache, encoder_hidden_states=states.half(), encoder_attention_mask=mask
        ).logits[:, -1]
        assert torch.isfinite(logits).all()
        torch.testing.assert_close(logits.float(), mine_full, rtol=0.05, atol=0.05)
        ids = torch.randint(0, 2048 // 64, (2 * 4, 1), generator=generator)


@needs_half_kernel
def test_packed_weights_replace_the_models_own_so_memory_does_not_double(
    tiny_model_dirs: dict[str, Path],
) -> None:
    from inference.engine.decoding import MusicGenDecoder

    model = load(tiny_model_dirs["small"], torch.bfloat16)
    fc1 = model.decoder.model.decoder.layers[0].fc1
    before = fc1.weight.numel()
    step = DecoderStep(model, release_packed_weights=True)
    assert step.kernel.packs_weights and before > 0 and fc1.weight.numel() == 0
    # transformers' pass on such a model would run on empty weights: refused with a reason instead.
    with pytest.raises(ValueError, match="packed"):
        MusicGenDecoder(model)
