"""Our forward pass of MusicGen's decoder, for the decoding loop (`inference.engine.decoding`).

It computes the function transformers' `MusicgenForCausalLM.forward` computes (and the melody
variant's, whose conditioning is a prefix rather than cross-attention), shaped for decoding one code
per step: a decoder step reads every weight once, so its speed is that of a few hundred small matrix
products and of the work around them. What it does differently, and why:

- The key/value cache is allocated once per batch and written in place. transformers' dynamic cache
  concatenates, copying every layer's keys and values on every step (a third of a CPU step here).
- q, k and v are one matrix product, the codebook heads another, and only the last position's
  logits are computed: fewer, larger products stream the weights better.
- The conditioning's cross-attention keys and values are computed once per batch, and attention for a
  single query is two small batched products (SDPA's flash kernel costs more to start than to run).
- On x86 CPUs, float16 and bfloat16 weights run through fbgemm's half-precision GEMM with float32
  activations (`[engine] cpu_matmul = "auto"`). At the 2-16 rows a decoding batch has, it was 2-4x
  faster than oneDNN's bfloat16 products on a CPU without AMX. bfloat16 values are exact in float16,
  so the weights are the configured ones; activations and the cache stay in float32, more precise
  than bfloat16.
- On CPUs with AMX tiles, bfloat16 weights run through oneDNN's bfloat16 GEMM on weights packed for
  it: the weights stream at nearly the memory's speed whatever the rows, so on a 2-core Xeon the decoder's
  products took 34 ms for 2 rows and 38 ms for 16, where fbgemm's took 35 and 87. The products'
  inputs and results are rounded to bfloat16 (as in the model run in bfloat16); norms, softmax and
  the residual sums stay float32, and the codebook heads keep fbgemm's float32 logits. Results stay
  bfloat16 until they are added to a float32 sum (no conversions in between), and fc1's GELU is
  applied by the kernel to its float32 sums: 4 % off a one-job step. Keys and values are products'
  results, so a bfloat16 cache holds them exactly; attention over it runs in SDPA's fused kernel.
- On CPUs, float32 weights run through torch's `linear` (MKL), oneDNN's GEMM on the same weights, or
  oneDNN's GEMM on weights packed for it, whichever is fastest here: which one is, differs from CPU to
  CPU (on a Xeon with AMX, MKL's products for 2 rows took 56 ms and oneDNN's 77, while for 16 rows
  MKL's took 161 ms and oneDNN's 112; on an AMD EPYC, MKL's took twice oneDNN's for 2 rows), so
  `inference.engine.kernel_choice` times them on the model's own products and hands the step a
  `KernelPlan`. Without one, the step follows fixed rules (`KernelPlan.by_rules`).
  Elsewhere (CUDA, other builds) the products are torch's `linear` in the model's dtype. Packed
  weights replace the model's own copies (`DecoderStep.of_model`).

Every row of a batch is computed independently of the others (per-row products; attention within a
row), so a job's logits depend on its batch only through the floating-point kernels a shape selects.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from inference.cpu_features import cpu_flags, has_amx_bfloat16

HALF_DTYPES = (torch.float16, torch.bfloat16)


def _pack_half(weight: torch.Tensor) -> Any:
    """fbgemm's packed float16 form of a [out, in] weight (no bias)."""
    return torch.ops.quantized.linear_prepack_fp16(weight.detach().float().contiguous(), None)


def _product_runs(product: Callable[[], torch.Tensor], expected: float) -> bool:
    """Whether a kernel's smoke test runs here and gives `expected` everywhere (a kernel missing from
    this build or CPU raises)."""
    try:
        out = product()
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return bool(torch.equal(out.float(), torch.full(out.shape, expected)))


@functools.cache
def half_precision_kernel_available() -> bool:
    """Whether fbgemm's float16-weight GEMM runs here (x86 CPUs with AVX2; not on other builds)."""
    return _product_runs(
        lambda: torch.ops.quantized.linear_dynamic_fp16(torch.ones(1, 8), _pack_half(torch.ones(8, 8))), 8.0
    )


# By the rules (`KernelPlan.by_rules`), float32 products go to oneDNN rather than MKL (torch's linear)
# from this many rows on. On a 2-core Xeon the decoder's products took 56 / 59 / 96 / 125 / 161 ms with
# MKL for 2 / 3 / 4 / 8 / 16 rows, and 77 / 80 / 87 / 94 / 112 ms with oneDNN: MKL is faster for one
# job (2 rows with guidance) there. Not everywhere: measured plans set their own threshold.
ONEDNN_MIN_ROWS = 4


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, post_op: str = "none") -> torch.Tensor:
    """oneDNN's GEMM (`mkldnn::_linear_pointwise`): float32 on a plain [out, in] weight, or bfloat16
    (AMX tiles where the CPU has them) on a weight packed by `_pack_amx`, in and out. `post_op`
    "gelu" applies exact (erf) GELU to the sums before they are rounded to the output's dtype."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, post_op, [], "none")


@functools.cache
def onednn_kernel_available() -> bool:
    """Whether oneDNN's float32 GEMM runs here (torch built with oneDNN)."""
    return torch.backends.mkldnn.is_available() and _product_runs(
        lambda: _onednn_linear(torch.ones(1, 8), torch.ones(8, 8)), 8.0
    )


def _pack_onednn(weight: torch.Tensor) -> Any:
    """oneDNN's packed (blocked) float32 form of a [out, in] weight."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().float().contiguous())


@functools.cache
def packed_onednn_kernel_available() -> bool:
    """Whether oneDNN's float32 GEMM runs here on weights packed for it."""
    return torch.backends.mkldnn.is_available() and _product_runs(
        lambda: _onednn_linear(torch.ones(1, 8), _pack_onednn(torch.ones(8, 8))), 8.0
    )


# oneDNN's bfloat16 GEMM computes each of up to this many rows exactly as it computes that row alone;
# from 33 rows on it switches to another blocking whose sums round differently. Longer inputs (the
# first call over a prompt, the text's cross-attention keys) go through it in blocks of this size,
# so that a job's numbers never depend on what it is batched with.
AMX_ROWS_PER_CALL = 32


def _pack_amx(weight: torch.Tensor) -> Any:
    """oneDNN's packed bfloat16 form of a [out, in] weight."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(torch.bfloat16).contiguous())


@functools.cache
def amx_kernel_available() -> bool:
    """Whether oneDNN's bfloat16 GEMM runs on AMX tiles here (a Xeon with amx_bf16, torch with oneDNN).
    Without AMX, oneDNN's bfloat16 products are slower than fbgemm's float16 ones at a decoder's rows."""
    return (
        has_amx_bfloat16(cpu_flags())
        and torch.backends.mkldnn.is_available()
        and _product_runs(
            lambda: _onednn_linear(torch.ones(1, 32, dtype=torch.bfloat16), _pack_amx(torch.ones(16, 32))),
            32.0,
        )
    )


class MatmulKernel(enum.Enum):
    """Which kernel multiplies by a decoder weight."""

    # torch's linear in the model's dtype (CUDA, `[engine] cpu_matmul = "torch"`; on a CPU, MKL's
    # GEMM for float32 weights).
    TORCH = "torch"
    # float16/bfloat16 weights on an x86 CPU: fbgemm's float16 GEMM with float32 activations.
    HALF = "fbgemm-fp16"
    # bfloat16 weights on a CPU with AMX: oneDNN's bfloat16 GEMM, activations rounded to bfloat16 for
    # the product and its result returned in bfloat16 (the step keeps its sums in float32).
    AMX = "onednn-amx-bf16"
    # float32 weights on a CPU: torch's linear (MKL) for fewer rows than the plan's
    # `onednn_min_rows`, oneDNN's GEMM on the same weights from there on.
    ONEDNN = "onednn"
    # float32 weights on a CPU, packed in oneDNN's blocked layout for its GEMM, at every row count.
    ONEDNN_PACKED = "onednn-packed"

    @property
    def packs_weights(self) -> bool:
        """Whether the kernel keeps its own copy of a weight (the model's can then be released)."""
        return self in (MatmulKernel.HALF, MatmulKernel.AMX, MatmulKernel.ONEDNN_PACKED)

    @property
    def computes_in_float32(self) -> bool:
        """Whether the activations around the products are float32 whatever the weights' dtype."""
        return self in (MatmulKernel.HALF, MatmulKernel.AMX)

    @classmethod
    def choose(cls, device: torch.device, dtype: torch.dtype, cpu_matmul: str) -> MatmulKernel:
        """The kernel the rules give weights of `dtype` on `device` under `[engine] cpu_matmul` (for
        "auto", what it gives where nothing was measured)."""
        if cpu_matmul == "torch" or device.type != "cpu":
            return cls.TORCH
        if dtype == torch.float32 and cpu_matmul == "onednn-packed" and packed_onednn_kernel_available():
            return cls.ONEDNN_PACKED
        if dtype == torch.bfloat16 and cpu_matmul in ("auto", "rules") and amx_kernel_available():
            return cls.AMX
        if dtype in HALF_DTYPES and half_precision_kernel_available():
            return cls.HALF
        if dtype == torch.float32 and onednn_kernel_available():
            return cls.ONEDNN
        return cls.TORCH


@dataclass(frozen=True)
class KernelPlan:
    """Which kernel multiplies by the decoder's weights at every number of rows: one kernel, and for
    `ONEDNN` (float32 weights shared by MKL and oneDNN) the row count from which oneDNN takes over.
    Kernels that keep other activations or another cache (fbgemm's, AMX's) or other weights (packed
    ones) cannot share a step, so a plan switches kernels only within `ONEDNN`."""

    kernel: MatmulKernel
    onednn_min_rows: int = ONEDNN_MIN_ROWS

    @classmethod
    def by_rules(cls, device: torch.device, dtype: torch.dtype, cpu_matmul: str) -> KernelPlan:
        """The plan of fixed rules (`MatmulKernel.choose`; `cpu_matmul = "onednn"`: oneDNN at every row
        count)."""
        kernel = MatmulKernel.choose(device, dtype, cpu_matmul)
        if kernel is MatmulKernel.ONEDNN and cpu_matmul == "onednn":
            return cls(kernel, onednn_min_rows=1)
        return cls(kernel)

    def kernel_at(self, rows: int) -> MatmulKernel:
        """The kernel that multiplies `rows` rows (MKL's, that is TORCH, below an ONEDNN threshold)."""
        if self.kernel is MatmulKernel.ONEDNN and rows < self.onednn_min_rows:
            return MatmulKernel.TORCH
        return self.kernel

    def describe(self) -> str:
        """In a few words, for logs and /musicgen-status: "onednn-packed", "mkl up to 3 rows, onednn from 4"."""
        if self.kernel is not MatmulKernel.ONEDNN:
            return self.kernel.value
        if self.onednn_min_rows <= 1:
            return "onednn"
        return f"mkl up to {self.onednn_min_rows - 1} rows, onednn from {self.onednn_min_rows}"


class Linear:
    """A bias-free linear map, held in the form its kernel wants. Each output row depends on its
    input row alone (the kernels below were checked for this); which kernel runs may depend on the
    number of rows, which only rounds the last bit of a float32 result differently."""

    def __init__(
        self,
        weight: torch.Tensor,
        *,
        kernel: MatmulKernel,
        then_gelu: bool = False,
        onednn_min_rows: int = ONEDNN_MIN_ROWS,
    ):
        """`then_gelu`: the map is followed by exact GELU, which the AMX kernel applies to its float32
        sums before rounding them (one rounding instead of two, and three fewer operators a layer).
        `onednn_min_rows`: with `ONEDNN`, the row count from which oneDNN's GEMM replaces MKL's."""
        self.kernel = kernel
        self.then_gelu = then_gelu
        self.onednn_min_rows = onednn_min_rows
        self.out_features, self.in_features = (int(n) for n in weight.shape)
        weight = weight.detach().contiguous()
        self._weight: Any
        if kernel is MatmulKernel.HALF:
            # Packing converts to float16: exact for bfloat16 weights in float16's range. This is the
            # kernel of torch's dynamic float16 quantization (`quantized::linear_dynamic_fp16`), which
            # splits the work over torch's threads.
            self._weight = _pack_half(weight)
        elif kernel is MatmulKernel.AMX:
            self._weight = _pack_amx(weight)
        elif kernel is MatmulKernel.ONEDNN_PACKED:
            self._weight = _pack_onednn(weight)
        else:
            self._weight = weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The product in x's dtype; the AMX kernel's in bfloat16, as it computes it (exact in float32:
        added to a float32 sum, it promotes without loss)."""
        if self.kernel is MatmulKernel.AMX:
            return self._amx(x)
        if self.kernel is MatmulKernel.HALF:
            out = torch.ops.quantized.linear_dynamic_fp16(x, self._weight)
        elif self.kernel is MatmulKernel.ONEDNN_PACKED:
            out = _onednn_linear(x.reshape(-1, x.shape[-1]), self._weight).view(
                *x.shape[:-1], self.out_features
            )
        elif self.kernel is MatmulKernel.ONEDNN and x.numel() >= self.onednn_min_rows * x.shape[-1]:
            # MKL's float32 products slow down sharply with every row a batch adds on some CPUs.
            out = _onednn_linear(x, self._weight)
        else:
            out = F.linear(x, self._weight)
        return F.gelu(out) if self.then_gelu else out

    def _amx(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        post_op = "gelu" if self.then_gelu else "none"
        if rows.shape[0] <= AMX_ROWS_PER_CALL:
            out = _onednn_linear(rows, self._weight, post_op)
        else:
            blocks = rows.split(AMX_ROWS_PER_CALL)
            out = torch.cat([_onednn_linear(block, self._weight, post_op) for block in blocks])
        return out.view(*x.shape[:-1], out.shape[-1])


def heads_kernel_of(kernel: MatmulKernel) -> MatmulKernel:
    """The kernel of the codebook heads in a step whose other products take `kernel`. With AMX, the
    heads keep fbgemm's float32 result: logits rounded to bfloat16 (three significant digits) would
    tie codes that float32 tells apart. Their weights are 2 % of the step's."""
    if kernel is MatmulKernel.AMX and half_precision_kernel_available():
        return MatmulKernel.HALF
    return kernel


# A layer's matrix products on every step after the first, in the order the step runs them (a prefix
# model has no cross-attention); the cross-attention's keys and values ("cross_kv") are computed once.
STEP_PRODUCTS = ("qkv", "self_out", "cross_q", "cross_out", "fc1", "fc2")


def layer_product_weights(layer: Any, *, fc1_gelu: bool) -> dict[str, tuple[torch.Tensor, bool]]:
    """A decoder layer's matrix products as our step runs them: name -> ([out, in] weight, whether
    exact GELU follows). q, k and v are one product, as are the cross-attention's k and v."""
    attention = layer.self_attn
    products = {
        "qkv": (
            torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]),
            False,
        ),
        "self_out": (attention.out_proj.weight, False),
        "fc1": (layer.fc1.weight, fc1_gelu),
        "fc2": (layer.fc2.weight, False),
    }
    cross = getattr(layer, "encoder_attn", None)
    if cross is not None:
        products["cross_q"] = (cross.q_proj.weight, False)
        products["cross_kv"] = (torch.cat([cross.k_proj.weight, cross.v_proj.weight]), False)
        products["cross_out"] = (cross.out_proj.weight, False)
    return {name: (weight.detach(), then_gelu) for name, (weight, then_gelu) in products.items()}


@dataclass
class _Norm:
    weight: torch.Tensor
    bias: torch.Tensor
    eps: float

    @classmethod
    def of(cls, module: torch.nn.LayerNorm, dtype: torch.dtype) -> _Norm:
        return cls(module.weight.detach().to(dtype), module.bias.detach().to(dtype), module.eps)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


@dataclass
class _Layer:
    self_norm: _Norm
    qkv: Linear
    self_out: Linear
    ffn_norm: _Norm
    fc1: Linear
    fc2: Linear
    # Cross-attention to the text (musicgen); None for prefix models (musicgen-melody).
    cross_norm: _Norm | None
    cross_q: Linear | None
    cross_kv: Linear | None
    cross_out: Linear | None


# Set on a model whose decoder weights live only in a DecoderStep's packed copies.
PACKED_MARK = "_musicgen_bot_decoder_packed"
# The DecoderStep that `DecoderStep.of_model` built for a model.
STEP_MARK = "_musicgen_bot_decoder_step"


def _release_linear_weights(model: Any) -> None:
    causal_lm = model.decoder
    linears: list[torch.nn.Linear] = list(causal_lm.lm_heads)
    for layer in causal_lm.model.decoder.layers:
        for attention in (layer.self_attn, getattr(layer, "encoder_attn", None)):
            if attention is not None:
                linears += [attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj]
        linears += [layer.fc1, layer.fc2]
    for linear in linears:
        linear.weight = torch.nn.Parameter(linear.weight.new_empty(0), requires_grad=False)
    setattr(model, PACKED_MARK, True)


class KeyValueCache:
    """Every layer's self-attention keys and values for a batch, allocated once, plus the
    cross-attention keys, values and additive mask of the conditioning.

    Rows of one batch share the columns `[0, length)`. A row that joined a running batch
    (`join_caches`) starts later: its columns before `starts[row]` were never written (zeros), its
    positions count from its own start, and `self_mask` keeps its attention off those columns.
    """

    def __init__(
        self,
        layers: int,
        rows: int,
        heads: int,
        positions: int,
        head_dim: int,
        dtype: torch.dtype,
        device: Any,
        *,
        zeroed: bool = False,
    ):
        shape = (layers, rows, heads, positions, head_dim)
        allocate = torch.zeros if zeroed else torch.empty
        self.keys = allocate(shape, dtype=dtype, device=device)
        self.values = allocate(shape, dtype=dtype, device=device)
        self.length = 0  # positions filled
        self.starts = [0] * rows  # the first column each row wrote
        # [rows, 1, 1, positions]: 0, or a large negative before the row's start; None while every
        # row starts at column 0 (a batch that started together), which needs no mask.
        self.self_mask: torch.Tensor | None = None
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.cross_mask: torch.Tensor | None = None  # [rows, 1, 1, text]: 0 or a large negative

    @property
    def capacity(self) -> int:
        return int(self.keys.shape[3])

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the batch rows `indices` (rows that left the batch), in that order."""
        self.keys = self.keys.index_select(1, indices)
        self.values = self.values.index_select(1, indices)
        self.starts = [self.starts[i] for i in indices.tolist()]
        if self.self_mask is not None:
            self.self_mask = self.self_mask.index_select(0, indices)
        if self.cross is not None:
            self.cross = [(k.index_select(0, indices), v.index_select(0, indices)) for k, v in self.cross]
        if self.cross_mask is not None:
            self.cross_mask = self.cross_mask.index_select(0, indices)

    def next_positions(self) -> torch.Tensor | None:
        """Each row's position for the next column, [rows]; None when every row starts at 0 (they all
        are at `length`)."""
        if not any(self.starts):
            return None
        return torch.tensor([self.length - start for start in self.starts], device=self.keys.device)


def cover_positions(table: Any, count: int) -> None:
    """Grow transformers' sinusoidal position table (MusicGen's `embed_positions`) to at least
    `count` positions, as its own forward pass does when a sequence passes its end."""
    if count > table.weights.shape[0]:
        table.make_weights(count, table.embedding_dim)


def join_caches(rows: Sequence[tuple[KeyValueCache, int]], spare_positions: int) -> KeyValueCache:
    """One cache holding the given rows (each a cache and a row of it), in that order, with room for
    `spare_positions` more steps.

    Each row keeps the columns it wrote, right-aligned at the joined length, so its positions and
    what it attends to are unchanged; the columns before its start are zeros it never attends to
    (their probabilities are exactly 0, and 0 times a finite value adds nothing). Columns no row
    uses any more are dropped. Cross-attention keys of different text lengths are padded and masked.
    """
    first = rows[0][0]
    widths = [cache.length - cache.starts[row] for cache, row in rows]
    length = max(widths)
    layers, _, heads, _, head_dim = first.keys.shape
    joined = KeyValueCache(
        layers,
        len(rows),
        heads,
        length + spare_positions,
        head_dim,
        first.keys.dtype,
        first.keys.device,
        zeroed=True,
    )
    joined.length = length
    for out_row, ((cache, row), width) in enumerate(zip(rows, widths, strict=True)):
        start = length - width
        joined.keys[:, out_row, :, start:length] = cache.keys[:, row, :, cache.length - width : cache.length]
        joined.values[:, out_row, :, start:length] = cache.values[
            :, row, :, cache.length - width : cache.length
        ]
        joined.starts[out_row] = start
    if any(joined.starts):
        blocked = torch.finfo(joined.keys.dtype).min
        columns = torch.arange(joined.capacity, device=joined.keys.device)
        before_start = columns[None, :] < torch.tensor(joined.starts, device=columns.device)[:, None]
        mask = torch.zeros(before_start.shape, dtype=joined.keys.dtype, device=columns.device)
        joined.self_mask = mask.masked_fill(before_start, blocked)[:, None, None, :]
    if first.cross is not None:
        _join_cross_attention(joined, rows)
    return joined


def _join_cross_attention(joined: KeyValueCache, rows: Sequence[tuple[KeyValueCache, int]]) -> None:
    """The conditioning's keys, values and mask of the rows, padded (and masked) to the longest text."""
    texts = max(_cross_of(cache)[0][0].shape[2] for cache, _ in rows)
    blocked = torch.finfo(joined.keys.dtype).min
    sample = _cross_of(rows[0][0])[0][0]  # [rows, heads, text, head_dim]
    shape = (len(rows), sample.shape[1], texts, sample.shape[3])
    joined.cross = [(sample.new_zeros(shape), sample.new_zeros(shape)) for _ in range(joined.keys.shape[0])]
    mask = torch.full((len(rows), 1, 1, texts), blocked, dtype=joined.keys.dtype, device=sample.device)
    for out_row, (cache, row) in enumerate(rows):
        cross = _cross_of(cache)
        text = cross[0][0].shape[2]
        for (keys, values), (their_keys, their_values) in zip(joined.cross, cross, strict=True):
            keys[out_row, :, :text] = their_keys[row]
            values[out_row, :, :text] = their_values[row]
        mask[out_row, ..., :text] = 0 if cache.cross_mask is None else cache.cross_mask[row]
    joined.cross_mask = mask


def _cross_of(cache: KeyValueCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if cache.cross is None:
        raise ValueError("a batch cannot join rows with cross-attention and rows without")
    return cache.cross


@dataclass
class StepOutput:
    logits: torch.Tensor  # [rows * codebooks, 1, vocab]: the last position only
    cache: KeyValueCache


class DecoderStep:
    """The decoder of one loaded MusicGen model as a callable with the keyword interface the decoding
    loop gives transformers' forward pass (`input_ids`, `encoder_hidden_states`,
    `encoder_attention_mask`, `cache`); its cache comes from `new_cache`."""

    def __init__(
        self,
        model: Any,
        *,
        cpu_matmul: str = "auto",
        plan: KernelPlan | None = None,
        release_packed_weights: bool = False,
    ):
        """`plan`: the kernels of the products (`inference.engine.kernel_choice` measures one); without
        it, the rules for `cpu_matmul` (`KernelPlan.by_rules`). `release_packed_weights`: once packed
        for a CPU kernel, drop the model's own copies of those weights (as much memory again as the
        decoder), so that transformers' pass can no longer run on this model: for a model used by
        this pass alone (see `of_model`)."""
        causal_lm = model.decoder
        decoder = causal_lm.model.decoder
        config = causal_lm.config
        self.num_codebooks = int(config.num_codebooks)
        self.hidden = int(config.hidden_size)
        self.heads = int(config.num_attention_heads)
        self.head_dim = self.hidden // self.heads
        self.scaling = self.head_dim**-0.5
        weight = decoder.layers[0].fc1.weight
        self.device = weight.device
        self.plan = plan or KernelPlan.by_rules(weight.device, weight.dtype, cpu_matmul)
        self.kernel = self.plan.kernel
        # fbgemm's products take and give float32, the AMX kernel's take float32 and give bfloat16: both
        # keep the norms and residual sums in float32. Elsewhere everything stays in the model's dtype.
        self.dtype = torch.float32 if self.kernel.computes_in_float32 else weight.dtype
        # The AMX kernel's products give bfloat16 values, so its keys and values are bfloat16-exact:
        # a bfloat16 cache holds them without loss in half the memory traffic (attention read 26 of
        # an 84 ms step for 16 rows from a float32 cache), and attention over it runs in SDPA's
        # kernel (see `_attend`).
        self.cache_dtype = torch.bfloat16 if self.kernel is MatmulKernel.AMX else self.dtype
        self.embeddings = [e.weight.detach() for e in decoder.embed_tokens]
        self.positions = decoder.embed_positions
        # transformers' MusicGen configs use exact GELU (audiocraft's too): fc1's kernel applies it.
        self.fc1_gelu = config.activation_function == "gelu"
        self.layers = [self._layer(layer) for layer in decoder.layers]
        self.final_norm = _Norm.of(decoder.layer_norm, self.dtype)
        self.lm_heads = Linear(
            torch.cat([h.weight for h in causal_lm.lm_heads]),
            kernel=heads_kernel_of(self.kernel),
            onednn_min_rows=self.plan.onednn_min_rows,
        )
        self.vocab = int(causal_lm.lm_heads[0].weight.shape[0])
        self.activation = decoder.layers[0].activation_fn
        self.is_prefix_model = self.layers[0].cross_q is None
        self.cpu_matmul = cpu_matmul
        if self.kernel.packs_weights and release_packed_weights:
            _release_linear_weights(model)

    @classmethod
    def of_model(cls, model: Any, *, cpu_matmul: str = "auto", plan: KernelPlan | None = None) -> DecoderStep:
        """The step of a model used by our pass alone (the engines' models): built once (packed
        weights replacing the model's own), then shared by every engine that uses the model. `plan`
        applies to the first build only (see `built_for`)."""
        step = cls.built_for(model, cpu_matmul)
        if step is None:
            step = cls(model, cpu_matmul=cpu_matmul, plan=plan, release_packed_weights=True)
            setattr(model, STEP_MARK, step)
        return step

    @staticmethod
    def built_for(model: Any, cpu_matmul: str) -> DecoderStep | None:
        """The step `of_model` built for this model under `cpu_matmul`, None if there is none yet;
        ValueError if one was built under another `cpu_matmul` and packing released the weights."""
        step: DecoderStep | None = getattr(model, STEP_MARK, None)
        if step is not None and step.cpu_matmul == cpu_matmul:
            return step
        if step is not None and getattr(model, PACKED_MARK, False):
            raise ValueError(f"this model's decoder weights were packed for cpu_matmul = {step.cpu_matmul!r}")
        return None

    def _layer(self, layer: Any) -> _Layer:
        weights = layer_product_weights(layer, fc1_gelu=self.fc1_gelu)

        def linear(name: str) -> Linear | None:
            if name not in weights:
                return None
            weight, then_gelu = weights[name]
            return Linear(
                weight, kernel=self.kernel, then_gelu=then_gelu, onednn_min_rows=self.plan.onednn_min_rows
            )

        cross = getattr(layer, "encoder_attn", None)
        qkv, self_out, fc1, fc2 = linear("qkv"), linear("self_out"), linear("fc1"), linear("fc2")
        assert qkv is not None and self_out is not None and fc1 is not None and fc2 is not None
        return _Layer(
            self_norm=_Norm.of(layer.self_attn_layer_norm, self.dtype),
            qkv=qkv,
            self_out=self_out,
            ffn_norm=_Norm.of(layer.final_layer_norm, self.dtype),
            fc1=fc1,
            fc2=fc2,
            cross_norm=None if cross is None else _Norm.of(layer.encoder_attn_layer_norm, self.dtype),
            cross_q=linear("cross_q"),
            cross_kv=linear("cross_kv"),
            cross_out=linear("cross_out"),
        )

    @property
    def linears(self) -> list[Linear]:
        """Every matrix product of a step after the first, in the order the step runs them (the
        text's cross-attention keys and values are computed on the first call only)."""
        products: list[Linear | None] = []
        for layer in self.layers:
            products += [layer.qkv, layer.self_out, layer.cross_q, layer.cross_out, layer.fc1, layer.fc2]
        return [linear for linear in products if linear is not None] + [self.lm_heads]

    def new_cache(self, rows: int, positions: int) -> KeyValueCache:
        return KeyValueCache(
            len(self.layers), rows, self.heads, positions, self.head_dim, self.cache_dtype, self.device
        )

    # -- the pass --------------------------------------------------------------------------------
    def __call__(
        self,
        *,
        input_ids: torch.Tensor,
        cache: KeyValueCache,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        use_cache: bool = True,
    ) -> StepOutput:
        """`input_ids` [rows * codebooks, length]: the whole sequence on the first call (the cache is
        empty), one code per codebook afterwards. The conditioning is read on the first call only."""
        codes = input_ids.reshape(-1, self.num_codebooks, input_ids.shape[-1])
        x = sum(self.embeddings[k][codes[:, k]] for k in range(self.num_codebooks))
        assert isinstance(x, torch.Tensor)
        x = x.to(self.dtype)
        first = cache.length == 0
        if first and encoder_hidden_states is not None:
            if self.is_prefix_model:
                x = torch.cat([encoder_hidden_states.to(self.dtype), x], dim=1)
            else:
                self._fill_cross_attention(cache, encoder_hidden_states, encoder_attention_mask)
        if not first and x.shape[1] != 1:
            raise ValueError("after the first call the decoder step takes one position at a time")
        x = x + self._positions(cache, x.shape[1])
        for index, layer in enumerate(self.layers):
            x = self._layer_pass(index, layer, x, cache)
        cache.length += x.shape[1]
        logits = self.lm_heads(self.final_norm(x[:, -1]))  # [rows, codebooks * vocab]
        return StepOutput(logits.view(-1, 1, self.vocab), cache)

    def _positions(self, cache: KeyValueCache, length: int) -> torch.Tensor:
        """Position embeddings of the next `length` columns: [length, hidden] when every row starts at
        column 0, else [rows, 1, hidden] (rows that joined later count from their own start)."""
        table = self.positions
        start = cache.length
        cover_positions(table, start + length)
        per_row = cache.next_positions()
        if per_row is None:
            return table.weights[start : start + length].to(self.dtype)
        if length != 1:
            raise ValueError("rows that joined a batch decode one position at a time")
        return table.weights[per_row].to(self.dtype)[:, None, :]

    def _fill_cross_attention(
        self, cache: KeyValueCache, states: torch.Tensor, mask: torch.Tensor | None
    ) -> None:
        rows, length = states.shape[:2]
        states = states.to(self.dtype)
        cache.cross = []
        for layer in self.layers:
            assert layer.cross_kv is not None
            kv = layer.cross_kv(states).view(rows, length, 2, self.heads, self.head_dim)
            # Contiguous once here: batched products over these strided views would cost ~3x more
            # on every step.
            keys, values = (kv[:, :, i].transpose(1, 2).contiguous() for i in range(2))
            cache.cross.append((keys, values))
        if mask is not None:
            # A finite "minus infinity": a row with every position masked (the null condition, whose
            # states are zeros) attends evenly to zeros instead of producing NaN.
            blocked = torch.finfo(self.cache_dtype).min
            additive = torch.zeros(mask.shape, dtype=self.cache_dtype, device=states.device)
            cache.cross_mask = additive.masked_fill(mask == 0, blocked)[:, None, None, :]

    def _layer_pass(self, index: int, layer: _Layer, x: torch.Tensor, cache: KeyValueCache) -> torch.Tensor:
        rows, length = x.shape[:2]
        qkv = layer.qkv(layer.self_norm(x)).view(rows, length, 3, self.heads, self.head_dim)
        query, key, value = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        start, end = cache.length, cache.length + length
        cache.keys[index, :, :, start:end] = key
        cache.values[index, :, :, start:end] = value
        keys, values = cache.keys[index, :, :, :end], cache.values[index, :, :, :end]
        if length == 1:
            mask = None if cache.self_mask is None else cache.self_mask[..., :end]
            attended = self._attend(query, keys, values, mask)
        else:  # the first call: causal attention over the whole sequence
            attended = F.scaled_dot_product_attention(query, keys, values, is_causal=True, scale=self.scaling)
        x = x + layer.self_out(self._merge_heads(attended))
        if layer.cross_q is not None:
            assert layer.cross_norm is not None and layer.cross_out is not None and cache.cross is not None
            query = layer.cross_q(layer.cross_norm(x)).view(rows, length, self.heads, self.head_dim)
            cross_keys, cross_values = cache.cross[index]
            attended = self._attend(query.transpose(1, 2), cross_keys, cross_values, cache.cross_mask)
            x = x + layer.cross_out(self._merge_heads(attended))
        hidden = layer.fc1(layer.ffn_norm(x))
        if not self.fc1_gelu:
            hidden = self.activation(hidden.to(self.dtype))
        return x + layer.fc2(hidden)

    def _merge_heads(self, attended: torch.Tensor) -> torch.Tensor:
        """[rows, heads, length, head_dim] -> [rows, length, hidden] (a view when length is 1)."""
        rows, _, length, _ = attended.shape
        if length == 1:
            return attended.reshape(rows, 1, self.hidden)
        return attended.transpose(1, 2).reshape(rows, length, self.hidden)

    def _attend(
        self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        if self.cache_dtype != self.dtype:
            # A bfloat16 cache and queries (the AMX kernel's products) under float32 sums: SDPA's fused
            # kernel keeps the scores and the softmax in float32 and returns bfloat16 within about one
            # rounding of the exact result (measured: 0.25 % at most), which the output projection
            # rounds to bfloat16 anyway. torch's bfloat16 matmuls would round the scores, and ran 2-3x
            # slower here.
            return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=self.scaling)
        scores = torch.matmul(query * self.scaling, keys.transpose(-1, -2))
        if mask is not None:
            scores = scores + mask
        return torch.matmul(torch.softmax(scores, dim=-1), values)
