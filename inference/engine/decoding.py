"""MusicGen's decoding loop, ours rather than transformers' `generate()`, so that a batch can hold
jobs that each keep their own randomness and settings.

One call decodes a batch of rows. Each row (a job) brings its conditioning, its optional prompt
codes, how many frames it wants, its sampling settings and its own `torch.Generator`. Per decoder
step the loop runs the transformer once for every row of the batch (the conditional rows, then the
unconditional rows of the jobs that use classifier-free guidance), and then, row by row: audiocraft's
guidance `uncond + cfg * (cond - uncond)`, temperature, top-k or top-p (top-p alone when it is set),
and a draw from that row's generator. Nothing in a row's computation depends on its neighbours
except the floating-point kernels the batch shape selects (see the README), so a job makes the same
music alone or in a batch.

Rows leave the batch between steps: when they reach their own length (jobs of different durations
share a batch), or when they are cancelled; each row's end is reported at once, and the key/value
cache keeps only the rows still running. A piece longer than the model's window is one row per
window (`inference.engine.musicgen_engine`): its next window enters the batch as a new row, and a
row counts its progress in the steps of every window of its job (`steps_before`, `steps_total`). With our forward pass, rows also enter between steps
(continuous batching): a group of new rows reads its own prefix and prompt and samples its first
step, then its cache is joined with the batch's (`inference.engine.decoder_step.join_caches`: every row
keeps its own positions, and a mask hides the columns it never wrote), so rows that start at
different steps, or with prompts of different lengths, decode together.

The decoder's forward pass is ours by default (`inference.engine.decoder_step`: the same function, shaped
for one code per step), or transformers' (`[engine] decoder = "transformers"`, and always with
`static_cache` or `compile`). transformers still builds the delay pattern (`build_delay_pattern_mask`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from inference.engine.decoder_step import PACKED_MARK, DecoderStep, join_caches
from inference.errors import GenerationCancelled

ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]
# Asked between decoder steps for rows that join the running batch now ([] for none).
RowSource = Callable[[], Sequence["DecodingRow"]]


@dataclass(frozen=True)
class Sampling:
    """How one row picks its next tokens, with audiocraft's rules."""

    top_k: int = 250
    top_p: float = 0.0  # > 0: nucleus sampling, and top_k is ignored
    temperature: float = 1.0  # 0: greedy (argmax)
    guidance: float = 3.0  # classifier-free guidance coefficient

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def needs_unconditional(self) -> bool:
        # uncond + 1 * (cond - uncond) is cond: the unconditional rows would change nothing.
        return self.guidance != 1


@dataclass
class Conditioning:
    """What a row is conditioned on, as the decoder consumes it.

    Cross-attention models (musicgen): `states` [T, H] are the projected text states, attended with
    `mask` [T]. Prefix models (musicgen-melody): `states` [T, H] are the chroma + text prefix the
    decoder reads before the first code, and `mask` is None. `null_states`/`null_mask` are the
    unconditional branch of classifier-free guidance.
    """

    states: torch.Tensor
    mask: torch.Tensor | None
    null_states: torch.Tensor
    null_mask: torch.Tensor | None

    @property
    def is_prefix(self) -> bool:
        return self.mask is None


@dataclass
class DecodingRow:
    """One job of a batch."""

    conditioning: Conditioning
    new_steps: int  # decoder steps to run: frames + the delay pattern's extra steps
    sampling: Sampling
    generator: torch.Generator
    prompt_codes: torch.Tensor | None = None  # [codebooks, frames] for continuation
    on_progress: ProgressCallback | None = None
    is_cancelled: CancelCheck | None = None
    # Called the moment the row ends (its codes, or GenerationCancelled), while the batch goes on.
    on_finished: Callable[[DecodedRow | GenerationCancelled], None] | None = None
    # A row that is one window of a longer piece counts its progress in the whole job's steps: those
    # of the windows before it, and the total of them all (None: this row's own `new_steps`).
    steps_before: int = 0
    steps_total: int | None = None

    @property
    def job_steps(self) -> int:
        """The decoder steps of the whole job this row is (a window of)."""
        return self.new_steps if self.steps_total is None else self.steps_total

    def shape_key(self) -> tuple[int, int]:
        """Rows read their whole sequence (prefix, prompt) in one call only when both have the same
        lengths: the positions of their codes depend on both, and padding either would move them.
        With our pass, groups of different lengths then share the batch (each row counts its
        positions from its own start); with transformers' pass they decode one after another."""
        prefix = int(self.conditioning.states.shape[0]) if self.conditioning.is_prefix else 0
        prompt = 0 if self.prompt_codes is None else int(self.prompt_codes.shape[-1])
        return prefix, prompt


@dataclass
class DecodedRow:
    """A finished row: its codes without the delay pattern, [codebooks, frames] (prompt included)."""

    codes: torch.Tensor
    finished_at: float  # perf_counter() when its last step ended


@dataclass
class _RowState:
    row: DecodingRow
    sequence: torch.Tensor  # [codebooks, length] with the delay pattern applied
    pattern: torch.Tensor  # [codebooks, max_length]: -1 where a sampled code goes, else the fixed id
    steps_done: int = 0
    done: bool = False  # finished or cancelled: its outputs are no longer used
    outcome: DecodedRow | GenerationCancelled | None = None

    def finish(self, outcome: DecodedRow | GenerationCancelled) -> None:
        self.outcome = outcome
        self.done = True
        if self.row.on_finished is not None:
            self.row.on_finished(outcome)


@dataclass
class _Batch:
    """Rows decoding together: their states, in cache order (conditional rows; the unconditional rows
    of the guided ones follow in the cache), and the cache. transformers' pass also reads the
    conditioning on every step (`conditioning`, `masks`: None for ours once the rows have entered)."""

    states: list[_RowState]
    cache: Any
    conditioning: torch.Tensor | None
    masks: torch.Tensor | None

    @property
    def running(self) -> bool:
        # A fixed-size cache keeps finished rows in the batch, idle.
        return any(not s.done for s in self.states)

    @property
    def cache_device(self) -> torch.device:
        return self.states[0].sequence.device


class MusicGenDecoder:
    """Runs the decoder of one loaded MusicGen model over batches of rows."""

    def __init__(
        self,
        model: Any,
        *,
        step: DecoderStep | None = None,
        cache_factory: Callable[[int, int], Any] | None = None,
    ):
        """`model`: MusicgenForConditionalGeneration or MusicgenMelodyForConditionalGeneration.
        `step`: our forward pass of its decoder (`inference.engine.decoder_step`); without it, transformers'.
        `cache_factory(rows, max_length)`: for transformers' pass, a fixed-size cache to use instead of
        its dynamic one."""
        if step is None and getattr(model, PACKED_MARK, False):
            raise ValueError("this model's decoder weights were packed for our decoder pass alone")
        self.model = model
        self.decoder = model.decoder  # the ForCausalLM: embeddings, transformer, lm_heads
        self.num_codebooks = int(self.decoder.config.num_codebooks)
        generation_config = model.generation_config
        self.start_id = int(generation_config.decoder_start_token_id)
        self.pad_id = int(generation_config.pad_token_id)
        # The decoder's forward pass; `compile_forward` swaps in a compiled one.
        self.forward: Callable[..., Any] = self.decoder if step is None else step
        self.cache_factory = cache_factory if step is None else step.new_cache
        # A fixed-size transformers cache (static, for CUDA graphs) cannot drop rows: rows that leave
        # stay in the batch as idle rows whose outputs are ignored, so every step has the same shapes.
        self.rows_can_leave = step is not None or cache_factory is None

    def compile_forward(self, *, cuda_graphs: bool) -> None:
        """torch.compile the decoder's forward pass; with `cuda_graphs` (and a static cache, so each
        step has the same shapes) the steps replay as CUDA graphs ("reduce-overhead")."""
        mode = "reduce-overhead" if cuda_graphs else "default"
        self.forward = torch.compile(self.decoder, mode=mode, dynamic=False)

    @property
    def can_join(self) -> bool:
        """Whether rows can enter a running batch (and rows of different prefix or prompt lengths share
        one): our forward pass, whose cache joins rows that start at different steps."""
        return isinstance(self.forward, DecoderStep)

    # -- the loop --------------------------------------------------------------------------------
    def decode(
        self, rows: Sequence[DecodingRow], *, joining: RowSource | None = None
    ) -> list[DecodedRow | GenerationCancelled]:
        """Decode `rows` as one batch; one entry per row, in order: its codes, or GenerationCancelled.
        Every row runs to its own length and reports its end at once (`DecodingRow.on_finished`).

        With a decoder that `can_join`, `joining()` is asked between decoder steps for rows that enter
        the batch now (their entries follow, in the order they came), and once more when the last
        row has left (a row that ends may be followed by another: the next window of a long piece);
        `rows` may differ in prefix and prompt length. Otherwise every row must have the same
        `shape_key`.
        """
        if not self.can_join and len({row.shape_key() for row in rows}) > 1:
            raise ValueError("rows of one batch need the same prefix and prompt lengths")
        everyone: list[_RowState] = []  # in order of entry
        batch: _Batch | None = None
        entering = list(rows)
        while True:
            if entering:
                started = [self._start(row) for row in entering]
                everyone += started
                batch = self._enter(batch, self._drop_cancelled(started, before_start=True))
            if batch is not None and batch.running:
                self._step(batch)
            entering = list(joining()) if joining is not None and self.can_join else []
            if not entering and (batch is None or not batch.running):
                break
        return [state.outcome for state in everyone if state.outcome is not None]

    def _enter(self, batch: _Batch | None, states: list[_RowState]) -> _Batch | None:
        """Rows start decoding: each group of one shape reads its whole sequence (prefix, prompt) in
        one call and samples its first step; a running batch takes the groups' rows in one cache."""
        if not states:
            return batch
        groups: dict[tuple[int, int], list[_RowState]] = {}
        for state in states:
            groups.setdefault(state.row.shape_key(), []).append(state)
        entered = [self._first_step(group) for group in groups.values()]
        if batch is not None:
            entered.insert(0, batch)
        entered = [b for b in entered if b.states]
        if len(entered) <= 1:
            return entered[0] if entered else batch
        return self._merge(entered)

    def _first_step(self, states: list[_RowState]) -> _Batch:
        device = states[0].sequence.device
        conditioning, masks = self._batched_conditioning([s.row for s in states], device)
        cache = None
        if self.cache_factory is not None:
            longest = max(s.pattern.shape[-1] for s in states)
            cache = self.cache_factory(self._row_count(states), longest + self._prefix_length(states))
        batch = _Batch(states, cache, conditioning, masks)
        self._step(batch, first=True)
        if self.can_join:  # our pass keeps the conditioning's keys and values in its cache
            batch.conditioning = batch.masks = None
        return batch

    def _merge(self, batches: list[_Batch]) -> _Batch:
        """One batch of the running rows of `batches`, in order (conditional rows, then unconditional)."""
        conditional = [(b.cache, i) for b in batches for i in range(len(b.states))]
        unconditional = [
            (b.cache, len(b.states) + j)
            for b in batches
            for j in range(sum(s.row.sampling.needs_unconditional for s in b.states))
        ]
        states = [s for b in batches for s in b.states]
        spare = max(s.row.new_steps - s.steps_done for s in states)
        cache = join_caches(conditional + unconditional, spare)
        return _Batch(states, cache, None, None)

    def _step(self, batch: _Batch, *, first: bool = False) -> None:
        """One decoder step for every row of the batch: run the model, sample, report, retire rows."""
        states, masks = batch.conditioning, batch.masks
        output = self.forward(
            input_ids=self._next_inputs(batch.states, full=first),
            encoder_hidden_states=states if (first or masks is not None) else None,
            encoder_attention_mask=masks,
            cache=batch.cache,
            use_cache=True,
        )
        batch.cache = output.cache
        logits = output.logits.view(-1, self.num_codebooks, *output.logits.shape[-2:])
        self._sample_step(batch.states, logits[:, :, -1, :])
        self._after_step(batch.states)
        if self.rows_can_leave and any(s.done for s in batch.states):
            self._leave(batch)

    def _leave(self, batch: _Batch) -> None:
        """Drop the rows that are done from the batch and its cache."""
        kept = [s for s in batch.states if not s.done]
        if kept:
            rows_kept = self._row_indices(batch.states, kept, batch.cache_device)
            batch.cache.batch_select_indices(rows_kept)
            if batch.masks is not None:
                assert batch.conditioning is not None
                batch.conditioning, batch.masks = batch.conditioning[rows_kept], batch.masks[rows_kept]
        batch.states = kept

    def _after_step(self, batch: list[_RowState]) -> None:
        """Report progress, and retire the rows that reached their length or were cancelled."""
        now = time.perf_counter()
        running = [s for s in batch if not s.done]
        for state in running:
            state.steps_done += 1
            if state.row.on_progress is not None:
                state.row.on_progress(state.row.steps_before + state.steps_done, state.row.job_steps)
            if state.steps_done >= state.row.new_steps:
                state.finish(DecodedRow(self._strip_pattern(state), now))
        self._drop_cancelled([s for s in running if not s.done], before_start=False)

    # -- rows ------------------------------------------------------------------------------------
    def _start(self, row: DecodingRow) -> _RowState:
        device = row.conditioning.states.device
        start = torch.full((self.num_codebooks, 1), self.start_id, dtype=torch.long, device=device)
        ids = start if row.prompt_codes is None else torch.cat([start, row.prompt_codes.to(device)], dim=-1)
        max_length = ids.shape[-1] + row.new_steps
        sequence, pattern = self.decoder.build_delay_pattern_mask(ids, self.start_id, max_length=max_length)
        sequence = self.decoder.apply_delay_pattern_mask(sequence, pattern)
        return _RowState(row=row, sequence=sequence, pattern=pattern)

    def _drop_cancelled(self, states: list[_RowState], *, before_start: bool) -> list[_RowState]:
        """End the rows whose job was cancelled; the rest, in order."""
        kept = []
        for state in states:
            check = state.row.is_cancelled
            if check is not None and check():
                state.finish(GenerationCancelled(f"cancelled {self._when(state, before_start=before_start)}"))
            else:
                kept.append(state)
        return kept

    @staticmethod
    def _when(state: _RowState, *, before_start: bool) -> str:
        """When a row was cancelled, in its job's decoder steps (every window of a long piece)."""
        done = state.row.steps_before + state.steps_done
        if before_start and done == 0:
            return "before generation started"
        between = " (between two windows)" if before_start else ""
        return f"after {done} of {state.row.job_steps} decoder steps{between}"

    @staticmethod
    def _row_count(states: list[_RowState]) -> int:
        return len(states) + sum(s.row.sampling.needs_unconditional for s in states)

    @staticmethod
    def _prefix_length(states: list[_RowState]) -> int:
        conditioning = states[0].row.conditioning
        return int(conditioning.states.shape[0]) if conditioning.is_prefix else 0

    @staticmethod
    def _row_indices(before: list[_RowState], after: list[_RowState], device: torch.device) -> torch.Tensor:
        """Batch rows (conditional rows first, then unconditional ones) of the states kept."""
        kept = {id(s) for s in after}
        conditional = [i for i, s in enumerate(before) if id(s) in kept]
        guided = [s for s in before if s.row.sampling.needs_unconditional]
        unconditional = [len(before) + i for i, s in enumerate(guided) if id(s) in kept]
        return torch.tensor(conditional + unconditional, dtype=torch.long, device=device)

    def _batched_conditioning(
        self, rows: list[DecodingRow], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The conditioning of every batch row: conditional rows, then the unconditional rows of the
        guided jobs. Cross-attention states of different lengths are padded and the padding masked
        (a masked key changes nothing); prefixes have one length (see `DecodingRow.shape_key`)."""
        states = [r.conditioning.states for r in rows]
        states += [r.conditioning.null_states for r in rows if r.sampling.needs_unconditional]
        if rows[0].conditioning.is_prefix:
            return torch.stack(states).to(device), None
        masks = [r.conditioning.mask for r in rows]
        masks += [r.conditioning.null_mask for r in rows if r.sampling.needs_unconditional]
        longest = max(int(s.shape[0]) for s in states)
        padded = torch.zeros(len(states), longest, states[0].shape[-1], dtype=states[0].dtype, device=device)
        padded_mask = torch.zeros(len(states), longest, dtype=torch.long, device=device)
        for i, (s, m) in enumerate(zip(states, masks, strict=True)):
            assert m is not None
            padded[i, : s.shape[0]] = s
            padded_mask[i, : m.shape[0]] = m
        return padded, padded_mask

    def _next_inputs(self, states: list[_RowState], *, full: bool) -> torch.Tensor:
        """Decoder input ids [(rows) * codebooks, length]: the whole sequence on the first step (the
        prompt, if any), afterwards only the last codes (the rest is in the cache)."""
        pieces = [s.sequence if full else s.sequence[:, -1:] for s in states]
        pieces += [p for p, s in zip(pieces, states, strict=True) if s.row.sampling.needs_unconditional]
        return torch.cat(pieces, dim=0)

    # -- sampling --------------------------------------------------------------------------------
    def _sample_step(self, states: list[_RowState], logits: torch.Tensor) -> None:
        """Pick every row's next codes from `logits` [rows, codebooks, vocab] and append them."""
        unconditional_row = len(states)
        for i, state in enumerate(states):
            sampling = state.row.sampling
            cond = logits[i].float()
            if sampling.needs_unconditional:
                uncond = logits[unconditional_row].float()
                unconditional_row += 1
                scores = uncond + sampling.guidance * (cond - uncond)
            else:
                scores = cond
            if state.done:
                continue  # an idle row of a fixed-size batch
            codes = pick_codes(scores, sampling, state.row.generator)
            position = state.sequence.shape[-1]
            fixed = state.pattern[:, position]
            codes = torch.where(fixed == -1, codes, fixed)
            state.sequence = torch.cat([state.sequence, codes[:, None]], dim=-1)

    def _strip_pattern(self, state: _RowState) -> torch.Tensor:
        sequence = self.decoder.apply_delay_pattern_mask(state.sequence, state.pattern)
        return sequence[sequence != self.pad_id].reshape(self.num_codebooks, -1)


def pick_codes(scores: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> torch.Tensor:
    """One code per codebook from guided `scores` [codebooks, vocab], as audiocraft's LM does:
    argmax at temperature 0; else softmax(scores / temperature), restricted to the nucleus when
    top_p > 0, else to the top_k most likely codes when top_k > 0, and drawn with `generator`."""
    if sampling.greedy:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores / sampling.temperature, dim=-1)
    if sampling.top_p > 0:
        return _sample_top_p(probs, sampling.top_p, generator)
    if sampling.top_k > 0:
        return _sample_top_k(probs, sampling.top_k, generator)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _sample_top_k(probs: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    kth_largest = torch.topk(probs, min(k, probs.shape[-1]), dim=-1).values[:, -1:]
    probs = probs * (probs >= kth_largest)
    probs = probs / probs.sum(dim=-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _sample_top_p(probs: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    # Keep the most likely codes until their mass reaches p (always at least the first one).
    outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > p
    sorted_probs = sorted_probs * ~outside
    sorted_probs = sorted_probs / sorted_probs.sum(dim=-1, keepdim=True)
    picked = torch.multinomial(sorted_probs, 1, generator=generator)
    return torch.gather(order, -1, picked)[:, 0]
