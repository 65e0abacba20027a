"""The decoder's CPU kernels, chosen by measurement (`[engine] cpu_matmul = "auto"`), as cuDNN's
benchmark mode chooses convolutions.

Which kernel multiplies fastest differs from CPU to CPU: on a Xeon with AMX, MKL (torch's linear)
was fastest for one job's float32 rows and oneDNN for a batch's; on an AMD EPYC, MKL took twice
oneDNN's time for one job. So the first time a worker runs a model on a CPU, every kernel that is
valid for the model's dtype here is timed on the model's own matrix products, at the row counts
the engine uses (a job with guidance has 2 rows, and a batch of n jobs 2n, up to
`[worker] max_batch_size`), and the decoder step gets the plan that is fastest at each of them
(`best_plan`). The choice is kept in a small JSON file (`[engine] kernel_cache`) under a key naming the
CPU model, torch, the threads, the dtype, the model's shape and the row counts, so a restart reads it
instead of measuring again; a file that cannot be read is measured over. It is logged in one line,
and the engine reports it to the worker, which shows it in /musicgen-status.

Only kernels that keep the model's dtype semantics are candidates, so measuring changes results no
more than the kernels already differ by (the rounding of float32 sums, or of bfloat16 products).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from inference.cpu_features import cpu_flags, cpu_model_name
from inference.engine.decoder_step import (
    STEP_PRODUCTS,
    DecoderStep,
    KernelPlan,
    Linear,
    MatmulKernel,
    amx_kernel_available,
    half_precision_kernel_available,
    heads_kernel_of,
    layer_product_weights,
    onednn_kernel_available,
    packed_onednn_kernel_available,
)
from inference.settings import EngineOptions

__all__ = [
    "KernelChoice",
    "best_plan",
    "candidate_kernels",
    "choose_kernels",
    "decoder_step",
    "measured_row_counts",
]

logger = logging.getLogger(__name__)

# Kernels are timed on the first layers of the model whose weights reach this many bytes (all of
# them in a smaller model): more than a CPU's caches hold, so the weights stream from memory as in a
# real step, where every layer's weights are read once; the layers all have the same shapes, so the
# time scales to the whole step. The `small` model's float32 layers are 56 MB each: 5 of 24 are timed.
MEASURED_WEIGHT_BYTES = 256 * 2**20
# Timed passes per kernel and row count (the best is kept: other work on the machine only adds time),
# after one untimed pass over a layer that sets up each kernel's primitives for the shapes.
TIMED_PASSES = 3
# The cache file's layout; a file of another layout is measured over.
CACHE_FORMAT = 1
# Set on a model whose step `decoder_step` built: the choice behind it.
CHOICE_MARK = "_musicgen_bot_kernel_choice"


@dataclass(frozen=True)
class KernelChoice:
    """The kernels of one model's decoder step, and how they were chosen."""

    plan: KernelPlan
    # "measured", "cached" (measured by an earlier load), "forced" (`cpu_matmul` names a kernel),
    # "only candidate" (one kernel is valid for the dtype here) or "not a CPU" (torch's own products).
    how: str
    # Estimated seconds of one step's products, per kernel (its value) and row count: measured, or
    # read back with the cached choice; empty when nothing was timed.
    timings: Mapping[str, Mapping[int, float]] = field(default_factory=dict)
    # Wall seconds the measurement took (0 when nothing was measured).
    measure_s: float = 0.0

    def summary(self) -> str:
        """A few words for /musicgen-status: "onednn-packed (measured)"."""
        return f"{self.plan.describe()} ({self.how})"

    def log_line(self, label: str, dtype: torch.dtype, cache: str) -> str:
        """The one line the log gets when a model's kernels are chosen."""
        line = f"decoder kernels for {label} ({str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} "
        line += f"thread(s)): {self.summary()}"
        if self.timings:
            rows = sorted(next(iter(self.timings.values())))
            per_kernel = ", ".join(
                f"{kernel} {'/'.join(f'{times[r] * 1000:.0f}' for r in rows)} ms"
                for kernel, times in self.timings.items()
            )
            line += f"; one step's products at {'/'.join(map(str, rows))} rows: {per_kernel}"
        if self.how == "measured":
            line += f"; measured in {self.measure_s:.1f} s" + (f", kept in {cache}" if cache else "")
        elif self.how == "cached":
            line += f"; read from {cache}"
        return line


# -- what is timed ------------------------------------------------------------------------------------
def candidate_kernels(dtype: torch.dtype) -> list[MatmulKernel]:
    """The kernels that may multiply by weights of `dtype` on this CPU without changing what the model
    computes beyond the rounding the kernels already differ by:

    - float32: MKL (torch's linear), oneDNN's GEMM, and oneDNN's GEMM on packed weights, all float32
      products. fbgemm's float16 and oneDNN's bfloat16 GEMMs are not: they would round the weights or
      the activations, running a float32 model in half precision without being asked.
    - bfloat16: fbgemm's float16 GEMM with float32 activations (bfloat16 values are exact in float16)
      and, on CPUs with AMX, oneDNN's bfloat16 GEMM (activations rounded to bfloat16, as in the model
      run in bfloat16). torch's own bfloat16 linear is not timed: it would move the whole step, norms
      and cache included, to bfloat16 (`cpu_matmul = "torch"` still asks for that).
    - float16: fbgemm's float16 GEMM (the weights as they are); torch's float16 products on a CPU
      run the whole step in float16 (again `"torch"`).
    """
    if dtype == torch.float32:
        available = {
            MatmulKernel.TORCH: True,
            MatmulKernel.ONEDNN: onednn_kernel_available(),
            MatmulKernel.ONEDNN_PACKED: packed_onednn_kernel_available(),
        }
    elif dtype == torch.bfloat16:
        available = {
            MatmulKernel.HALF: half_precision_kernel_available(),
            MatmulKernel.AMX: amx_kernel_available(),
        }
    elif dtype == torch.float16:
        available = {MatmulKernel.HALF: half_precision_kernel_available()}
    else:
        available = {}
    return [kernel for kernel, runs in available.items() if runs]


def measured_row_counts(max_batch_size: int) -> tuple[int, ...]:
    """The row counts timed: one job with guidance (2 rows), and batches of 2, 4, 8 ... jobs and of
    `max_batch_size` jobs (2 rows each); the rows between two of them take the smaller one's kernel."""
    jobs = {1, max_batch_size}
    size = 2
    while size < max_batch_size:
        jobs.add(size)
        size *= 2
    return tuple(2 * n for n in sorted(jobs))


def _measured_layers(layers: Sequence[Any]) -> int:
    """How many of the first layers reach `MEASURED_WEIGHT_BYTES` (all of them if none does)."""
    total = 0
    for count, layer in enumerate(layers, start=1):
        total += sum(p.numel() * p.element_size() for p in layer.parameters())
        if total >= MEASURED_WEIGHT_BYTES:
            return count
    return len(layers)


def time_products(
    model: Any, kernels: Iterable[MatmulKernel], row_counts: Sequence[int]
) -> dict[MatmulKernel, dict[int, float]]:
    """Estimated seconds of one decoder step's matrix products with each kernel at each row count,
    timed on the model's own weights (its first layers, see `MEASURED_WEIGHT_BYTES`, and the codebook
    heads) and scaled to all of its layers. Kernels are timed in turn, pass after pass, so that other
    work on the machine slows them alike."""
    causal_lm = model.decoder
    layers = causal_lm.model.decoder.layers
    measured = _measured_layers(layers)
    fc1_gelu = causal_lm.config.activation_function == "gelu"
    weights: list[tuple[torch.Tensor, bool]] = []
    for layer in layers[:measured]:
        by_name = layer_product_weights(layer, fc1_gelu=fc1_gelu)
        weights += [by_name[name] for name in STEP_PRODUCTS if name in by_name]
    heads = torch.cat([h.weight.detach() for h in causal_lm.lm_heads])
    # The heads run once a step, whatever the layers measured: their time is added unscaled.
    scale = len(layers) / measured
    first_layer = len(weights) // measured
    linears = {kernel: _linears(kernel, weights, heads) for kernel in kernels}
    times: dict[MatmulKernel, dict[int, float]] = {kernel: {} for kernel in linears}
    with torch.inference_mode():
        for rows in row_counts:
            inputs = {n: torch.randn(rows, 1, n) for n in {w.shape[1] for w, _ in weights}}
            for products, heads_product in linears.values():  # untimed: sets up each kernel's shapes
                _run([*products[:first_layer], heads_product], inputs)
            for _ in range(TIMED_PASSES):
                for kernel, (products, heads_product) in linears.items():
                    step = scale * _run(products, inputs) + _run([heads_product], inputs)
                    times[kernel][rows] = min(times[kernel].get(rows, step), step)
    return times


def _linears(
    kernel: MatmulKernel, weights: list[tuple[torch.Tensor, bool]], heads: torch.Tensor
) -> tuple[list[Linear], Linear]:
    """The products as `kernel` runs them (ONEDNN: oneDNN at every row count; the heads as a step
    with this kernel runs them)."""
    products = [Linear(w, kernel=kernel, then_gelu=gelu, onednn_min_rows=1) for w, gelu in weights]
    return products, Linear(heads, kernel=heads_kernel_of(kernel), onednn_min_rows=1)


def _run(products: Sequence[Linear], inputs: Mapping[int, torch.Tensor]) -> float:
    started = time.perf_counter()
    for product in products:
        product(inputs[product.in_features])
    return time.perf_counter() - started


# -- what is chosen ---------------------------------------------------------------------------------
def best_plan(times: Mapping[MatmulKernel, Mapping[int, float]]) -> KernelPlan:
    """The plan closest to the fastest kernel at every row count timed: the least of the plans' worst
    ratio to the fastest there (ties: the least total time). A plan is one kernel, or MKL for fewer rows
    and oneDNN for more on the same weights (`KernelPlan` says why kernels cannot mix otherwise)."""
    rows = sorted(next(iter(times.values())))
    fastest = {r: min(kernel_times[r] for kernel_times in times.values()) for r in rows}
    plans = {
        KernelPlan(kernel, onednn_min_rows=1): [kernel_times[r] for r in rows]
        for kernel, kernel_times in times.items()
    }
    if MatmulKernel.TORCH in times and MatmulKernel.ONEDNN in times:
        for switch in rows[1:]:
            plan = KernelPlan(MatmulKernel.ONEDNN, onednn_min_rows=switch)
            plans[plan] = [times[plan.kernel_at(r)][r] for r in rows]

    def cost(plan: KernelPlan) -> tuple[float, float]:
        costs = plans[plan]
        return max(c / fastest[r] for c, r in zip(costs, rows, strict=True)), sum(costs)

    return min(plans, key=cost)


# -- the cache ----------------------------------------------------------------------------------------
def cache_key(model: Any, dtype: torch.dtype, row_counts: Sequence[int]) -> str:
    """What a measured choice depends on: the CPU (its model name, and its flags, which tell apart
    CPUs a virtual machine names alike), torch, its threads, the weights' dtype, the decoder's shape
    and the row counts timed."""
    config = model.decoder.config
    layer = model.decoder.model.decoder.layers[0]
    attention = "cross-attention" if getattr(layer, "encoder_attn", None) is not None else "prefix"
    flags = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:8]
    return " | ".join(
        [
            f"{cpu_model_name()} (flags {flags})",
            f"torch {torch.__version__}",
            f"{torch.get_num_threads()} threads",
            str(dtype).removeprefix("torch."),
            f"{config.num_hidden_layers} layers x {config.hidden_size} (ffn {config.ffn_dim}, "
            f"{config.num_attention_heads} heads, {config.num_codebooks} codebooks x {config.vocab_size}, "
            f"{attention})",
            f"rows {','.join(map(str, row_counts))}",
        ]
    )


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache file's choices by key; {} when there is no file, and (with a warning) when it cannot
    be read as one, so that a damaged file is measured over instead of stopping the worker."""
    try:
        data = json.loads(path.read_text())
        if data["format"] != CACHE_FORMAT or not isinstance(data["choices"], dict):
            raise ValueError(f"not a kernel cache of format {CACHE_FORMAT}")
        return dict(data["choices"])
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("cannot read the kernel cache %s (%s): measuring again", path, error)
        return {}


def _cached_choice(entry: Any, candidates: Sequence[MatmulKernel]) -> KernelChoice | None:
    """The choice a cache entry holds; None if it is not one this torch can run here."""
    try:
        plan = KernelPlan(MatmulKernel(entry["kernel"]), onednn_min_rows=int(entry["onednn_min_rows"]))
        timings = {
            str(k): {int(r): float(s) for r, s in by_rows.items()} for k, by_rows in entry["timings"].items()
        }
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if plan.kernel not in candidates or plan.onednn_min_rows < 1:
        return None
    return KernelChoice(plan, "cached", timings)


def _write_cache(path: Path, key: str, choice: KernelChoice) -> None:
    """Add a choice to the cache file (replaced whole, so that a reader never sees half of it); a
    cache that cannot be written only costs a measurement at the next start."""
    entry = {
        "kernel": choice.plan.kernel.value,
        "onednn_min_rows": choice.plan.onednn_min_rows,
        "timings": {k: {str(r): s for r, s in by_rows.items()} for k, by_rows in choice.timings.items()},
        "measure_s": round(choice.measure_s, 3),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    written: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        choices = {**_read_cache(path), key: entry}
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}-", delete=False) as file:
            written = file.name
            json.dump({"format": CACHE_FORMAT, "choices": choices}, file, indent=1)
        os.replace(written, path)
    except OSError as error:
        logger.warning("cannot write the kernel cache %s: %s", path, error)
        if written is not None:
            with contextlib.suppress(OSError):
                os.unlink(written)


# -- the engine's entry -------------------------------------------------------------------------------
def choose_kernels(model: Any, options: EngineOptions) -> KernelChoice:
    """The kernels of the model's decoder step under `[engine] cpu_matmul`: "auto" reads the cache or
    measures (and caches); another value forces its rules."""
    weight = model.decoder.model.decoder.layers[0].fc1.weight
    device, dtype = weight.device, _weights_dtype(model)
    if device.type != "cpu":
        return KernelChoice(KernelPlan.by_rules(device, dtype, options.cpu_matmul), "not a CPU")
    if options.cpu_matmul != "auto":
        return KernelChoice(KernelPlan.by_rules(device, dtype, options.cpu_matmul), "forced")
    candidates = candidate_kernels(dtype)
    if len(candidates) < 2:
        return KernelChoice(KernelPlan.by_rules(device, dtype, "auto"), "only candidate")
    row_counts = measured_row_counts(options.max_batch_size)
    key = cache_key(model, dtype, row_counts)
    path = Path(options.kernel_cache).expanduser() if options.kernel_cache else None
    if path is not None:
        cached = _cached_choice(_read_cache(path).get(key), candidates)
        if cached is not None:
            return cached
    started = time.perf_counter()
    times = time_products(model, candidates, row_counts)
    measured = KernelChoice(
        best_plan(times),
        "measured",
        {kernel.value: by_rows for kernel, by_rows in times.items()},
        measure_s=time.perf_counter() - started,
    )
    if path is not None:
        _write_cache(path, key, measured)
    return measured


def decoder_step(model: Any, options: EngineOptions, *, label: str) -> tuple[DecoderStep, KernelChoice]:
    """The decoder step of a model used by the engines alone (`DecoderStep.of_model`), its kernels
    chosen on first use and logged in one line; later calls return the same step and choice."""
    step = DecoderStep.built_for(model, options.cpu_matmul)
    if step is not None:  # another engine on the same model cache built it (or a benchmark did)
        known: KernelChoice | None = getattr(model, CHOICE_MARK, None)
        return step, known if known is not None and known.plan == step.plan else KernelChoice(
            step.plan, "rules"
        )
    choice = choose_kernels(model, options)
    step = DecoderStep.of_model(model, cpu_matmul=options.cpu_matmul, plan=choice.plan)
    setattr(model, CHOICE_MARK, choice)
    logger.info(choice.log_line(label, _weights_dtype(model), options.kernel_cache))
    return step, choice


def _weights_dtype(model: Any) -> torch.dtype:
    dtype: torch.dtype = model.decoder.model.decoder.layers[0].fc1.weight.dtype
    return dtype
