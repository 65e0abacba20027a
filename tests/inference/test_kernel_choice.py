"""`[engine] cpu_matmul = "auto"`: the decoder's CPU kernels are timed on the model's own products the
first time a model runs, the fastest kept per row-count range and cached per CPU, torch, threads,
dtype and model shape; a forced `cpu_matmul` measures nothing; whatever is chosen computes the
model's float32 function; the worker reports the choice to the bot."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from inference.engine import kernel_choice
from inference.engine.decoder_step import DecoderStep, KernelPlan, Linear, MatmulKernel
from inference.engine.kernel_choice import (
    KernelChoice,
    best_plan,
    cache_key,
    candidate_kernels,
    choose_kernels,
    measured_row_counts,
)
from inference.engine.musicgen_engine import MusicGenEngine
from inference.request import GenerationRequest
from inference.settings import EngineOptions, EngineSettings
from tests.inference.test_decoder_step import load

pytestmark = pytest.mark.usefixtures("one_torch_thread")

needs_several_float32_kernels = pytest.mark.skipif(
    len(candidate_kernels(torch.float32)) < 2, reason="only one float32 kernel runs here: nothing to measure"
)


def measuring(settings: EngineSettings, cache: Path, **changes: object) -> EngineSettings:
    """`settings` with `cpu_matmul = "auto"` and its kernel cache at `cache`."""
    engine = settings.engine.model_copy(update={"cpu_matmul": "auto", "kernel_cache": str(cache), **changes})
    return settings.model_copy(update={"engine": engine})


def request(seed: int = 5) -> GenerationRequest:
    return GenerationRequest(model_version="small", prompt="slow piano", duration=1, seed=seed)


@needs_several_float32_kernels
def test_a_model_s_kernels_are_measured_once_and_a_restart_reads_them_from_the_cache(
    engine_settings: EngineSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cpu-kernels.json"
    settings = measuring(engine_settings, cache)
    with caplog.at_level(logging.INFO, logger=kernel_choice.__name__):
        first = MusicGenEngine(settings)
        first.generate(request())
    assert first.kernel_choices["small"].endswith("(measured)")
    lines = [r.getMessage() for r in caplog.records if r.name == kernel_choice.__name__]
    assert len(lines) == 1 and lines[0].startswith("decoder kernels for small (float32, 1 thread(s)): ")
    assert f"kept in {cache}" in lines[0]
    written = cache.read_bytes()
    (entry,) = json.loads(written)["choices"].values()
    # Every float32 candidate was timed at one job's rows and at a batch of max_batch_size (4) jobs.
    assert set(entry["timings"]) == {k.value for k in candidate_kernels(torch.float32)}
    assert all(set(by_rows) == {"2", "4", "8"} for by_rows in entry["timings"].values())

    # A restart: another engine loads the model again, reads the choice and measures nothing.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=kernel_choice.__name__):
        second = MusicGenEngine(settings)
        second.generate(request())
    assert second.kernel_choices["small"] == first.kernel_choices["small"].replace("measured", "cached")
    assert cache.read_bytes() == written
    (line,) = [r.getMessage() for r in caplog.records if r.name == kernel_choice.__name__]
    assert f"read from {cache}" in line and "measured in" not in line


@needs_several_float32_kernels
def test_the_cache_keeps_one_choice_per_model_shape(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    options = EngineOptions(device="cpu", dtype="float32", kernel_cache=str(tmp_path / "cpu-kernels.json"))
    small, melody = load(tiny_model_dirs["small"]), load(tiny_model_dirs["melody"])
    # The same sizes, but the melody model has no cross-attention: other products, another key.
    assert cache_key(small, torch.float32, (2, 8)) != cache_key(melody, torch.float32, (2, 8))
    assert choose_kernels(small, options).how == "measured"
    assert choose_kernels(melody, options).how == "measured"
    assert choose_kernels(load(tiny_model_dirs["small"]), options).how == "cached"
    assert len(json.loads((tmp_path / "cpu-kernels.json").read_text())["choices"]) == 2
    # Other batch sizes are other row counts: measured again, under a key of their own.
    wider = options.model_copy(update={"max_batch_size": 8})
    assert choose_kernels(small, wider).how == "measured"
    assert len(json.loads((tmp_path / "cpu-kernels.json").read_text())["choices"]) == 3


@pytest.mark.parametrize("cpu_matmul", ["rules", "fbgemm", "onednn", "onednn-packed", "torch"])
def test_a_forced_cpu_matmul_measures_nothing(
    engine_settings: EngineSettings, tmp_path: Path, cpu_matmul: str
) -> None:
    cache = tmp_path / "cpu-kernels.json"
    settings = measuring(engine_settings, cache, cpu_matmul=cpu_matmul)
    engine = MusicGenEngine(settings)
    engine.generate(request())
    step = engine._decoder_for(engine.cache.get("small")).forward
    assert isinstance(step, DecoderStep)
    assert step.plan == KernelPlan.by_rules(torch.device("cpu"), torch.float32, cpu_matmul)
    assert engine.kernel_choices["small"] == f"{step.plan.describe()} (forced)"
    assert not cache.exists()


@pytest.mark.parametrize("contents", ["{not json", '{"format": 1, "choices": []}', "[]"])
@needs_several_float32_kernels
def test_a_cache_file_that_cannot_be_read_is_measured_over(
    tiny_model_dirs: dict[str, Path], tmp_path: Path, contents: str
) -> None:
    cache = tmp_path / "cpu-kernels.json"
    cache.write_text(contents)
    options = EngineOptions(device="cpu", dtype="float32", kernel_cache=str(cache))
    model = load(tiny_model_dirs["small"])
    assert choose_kernels(model, options).how == "measured"
    key = cache_key(model, torch.float32, measured_row_counts(options.max_batch_size))
    assert set(json.loads(cache.read_text())["choices"]) == {key}


@needs_several_float32_kernels
def test_a_cached_entry_this_machine_cannot_run_is_measured_over(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cpu-kernels.json"
    options = EngineOptions(device="cpu", dtype="float32", kernel_cache=str(cache))
    model = load(tiny_model_dirs["small"])
    key = cache_key(model, torch.float32, measured_row_counts(options.max_batch_size))
    # A bfloat16 kernel for float32 weights (a hand-edited file): never run.
    entry = {"kernel": MatmulKernel.HALF.value, "onednn_min_rows": 4, "timings": {}}
    cache.write_text(json.dumps({"format": kernel_choice.CACHE_FORMAT, "choices": {key: entry}}))
    choice = choose_kernels(model, options)
    assert choice.how == "measured" and choice.plan.kernel in candidate_kernels(torch.float32)


def test_the_plan_keeps_the_fastest_kernel_for_each_range_of_rows() -> None:
    mkl, onednn, packed = MatmulKernel.TORCH, MatmulKernel.ONEDNN, MatmulKernel.ONEDNN_PACKED
    # MKL fastest for one job, oneDNN for batches (a Xeon with AMX): MKL below 4 rows, oneDNN from 4.
    xeon = {mkl: {2: 56.0, 4: 96.0, 8: 125.0}, onednn: {2: 77.0, 4: 87.0, 8: 94.0}}
    assert best_plan(xeon) == KernelPlan(onednn, onednn_min_rows=4)
    # oneDNN fastest everywhere (an AMD EPYC): oneDNN from the first row.
    epyc = {mkl: {2: 150.0, 4: 160.0, 8: 200.0}, onednn: {2: 75.0, 4: 80.0, 8: 95.0}}
    assert best_plan(epyc) == KernelPlan(onednn, onednn_min_rows=1)
    assert best_plan(epyc).kernel_at(1) is onednn
    # Packed weights fastest everywhere: they replace the plain ones at every row count.
    assert best_plan({**epyc, packed: {2: 67.0, 4: 70.0, 8: 90.0}}) == KernelPlan(packed, onednn_min_rows=1)
    # Packed fastest for one job but far behind for batches: the plain plan is never far off.
    slow_batches = {**xeon, packed: {2: 50.0, 4: 150.0, 8: 200.0}}
    assert best_plan(slow_batches) == KernelPlan(onednn, onednn_min_rows=4)
    # MKL everywhere.
    assert best_plan({mkl: {2: 1.0, 8: 2.0}, onednn: {2: 3.0, 8: 4.0}}) == KernelPlan(mkl, onednn_min_rows=1)


def test_the_row_counts_timed_are_one_job_and_the_batch_sizes_up_to_the_largest() -> None:
    assert measured_row_counts(1) == (2,)
    assert measured_row_counts(4) == (2, 4, 8)
    assert measured_row_counts(6) == (2, 4, 8, 12)


def assert_gives_transformers_logits(model: Any, step: DecoderStep, rows: int, steps: int = 6) -> None:
    """`steps` calls of `step` on `rows` rows of text conditioning (the last a null condition) give
    transformers' logits, to the tolerance our pass keeps against it (tests/inference/test_decoder_step.py)."""
    mask = torch.ones(rows, 5, dtype=torch.long)
    mask[-1] = 0
    states = torch.randn(rows, 5, model.decoder.config.hidden_size) * mask[..., None]
    codebooks = step.num_codebooks
    ids = torch.full((rows * codebooks, 1), 2048)
    cache, their_cache = step.new_cache(rows, steps), None
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        mine = step(input_ids=ids, cache=cache, encoder_hidden_states=states, encoder_attention_mask=mask)
        theirs = model.decoder(
            input_ids=ids,
            encoder_hidden_states=states,
            encoder_attention_mask=mask,
            cache=their_cache,
            use_cache=True,
        )
        their_cache = theirs.cache
        torch.testing.assert_close(mine.logits[:, -1], theirs.logits[:, -1], rtol=1e-5, atol=1e-5)
        ids = torch.randint(0, 2048 // 64, (rows * codebooks, 1), generator=generator)


@torch.inference_mode()
def test_every_plan_a_measurement_can_choose_gives_the_model_s_logits(
    tiny_model_dirs: dict[str, Path],
) -> None:
    model = load(tiny_model_dirs["small"])
    plans = [KernelPlan(kernel, onednn_min_rows=1) for kernel in candidate_kernels(torch.float32)]
    if MatmulKernel.ONEDNN in candidate_kernels(torch.float32):
        plans.append(KernelPlan(MatmulKernel.ONEDNN, onednn_min_rows=4))  # MKL for 2 rows, oneDNN for 4
    for plan in plans:
        step = DecoderStep(model, plan=plan)
        for rows in (2, 4):
            assert_gives_transformers_logits(model, step, rows)


@needs_several_float32_kernels
@torch.inference_mode()
def test_the_measured_step_gives_the_model_s_logits(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    model = load(tiny_model_dirs["small"])
    options = EngineOptions(device="cpu", dtype="float32", kernel_cache=str(tmp_path / "cpu-kernels.json"))
    step = DecoderStep(model, plan=choose_kernels(model, options).plan)
    for rows in (2, 4, 8):
        assert_gives_transformers_logits(model, step, rows)


@pytest.mark.skipif(
    MatmulKernel.ONEDNN_PACKED not in candidate_kernels(torch.float32), reason="no packed oneDNN"
)
def test_packed_float32_products_compute_each_row_alone_and_in_float32() -> None:
    torch.manual_seed(0)
    weight = 0.05 * torch.randn(384, 256)
    linear = Linear(weight, kernel=MatmulKernel.ONEDNN_PACKED)
    rows = torch.randn(16, 256)
    whole = linear(rows)
    for start, count in [(0, 1), (3, 2), (5, 8), (4, 12)]:
        assert torch.equal(linear(rows[start : start + count].contiguous()), whole[start : start + count])
    assert torch.equal(linear(rows.view(4, 4, 256)), whole.view(4, 4, 384))
    torch.testing.assert_close(whole.double(), rows.double() @ weight.double().T, rtol=1e-5, atol=1e-5)


def test_the_choice_is_told_in_a_few_words() -> None:
    assert KernelChoice(KernelPlan(MatmulKernel.ONEDNN, 4), "measured").summary() == (
        "mkl up to 3 rows, onednn from 4 (measured)"
    )
    assert (
        KernelChoice(KernelPlan(MatmulKernel.ONEDNN_PACKED), "cached").summary() == "onednn-packed (cached)"
    )


async def test_a_worker_reports_the_kernels_each_model_took(
    engine_settings: EngineSettings, tmp_path: Path
) -> None:
    from inference.backends.local import InferenceClient

    settings = measuring(engine_settings, tmp_path / "cpu-kernels.json")
    async with InferenceClient(settings, processes=1) as client:
        (worker,) = client.workers
        assert worker.kernels == {}  # nothing run yet
        await client.submit("job-1", request(), tmp_path)
        (worker,) = client.workers
    # What the worker's engine chose, as /musicgen-status shows it.
    expected = "(measured)" if len(candidate_kernels(torch.float32)) > 1 else "(only candidate)"
    assert set(worker.kernels) == {"small"} and worker.kernels["small"].endswith(expected)
