"""The MusicGen engine: generation requests in, audio out, with audiocraft's semantics.

Runs on Hugging Face transformers (its models, our decoding loop: `inference.engine.decoding`) and
reproduces what audiocraft's `MusicGen.generate`, `generate_with_chroma` and `generate_continuation`
do, as the Cog predictor of the product calls them:

- text: T5 conditioning, exactly `duration` seconds of audio;
- melody: the input clip (trimmed) goes through demucs (drums and bass removed, optional) and becomes an
  argmax chroma that conditions melody models;
- continuation: the trimmed clip is encoded with the model's EnCodec and the language model continues
  those codes; the output is the re-decoded clip followed by `duration` new seconds;
- encode-decode: the (trimmed) clip goes through EnCodec and back, no language model; `duration` does
  not apply, the output is as long as the clip;
- sampling: top_k, or top_p alone when > 0, temperature (0 = greedy), classifier-free guidance with
  audiocraft's formula `uncond + cfg * (cond - uncond)` for every cfg value.

`generate_batch` runs several jobs as one batch: each keeps its own seed (its own random generator)
and sampling settings, its own length, progress and cancellation, and a bad request fails alone.
`generate` is a batch of one. Both return audio; normalising and writing it is
`inference.engine.audio.write_generated`.

A piece longer than the model's window (30 s for the released models, an audiocraft checkpoint's
own training segment) is made as audiocraft's `MusicGen._generate_tokens` makes it
(`inference.windows`): the first window whole, then each next one prompted with the last
`window - [engine] extend_stride_s` seconds of codes and adding the stride, a melody followed from
each window's time on; the codes are decoded by EnCodec together at the end. Each window is one row
of the decoding loop, and the job's next window re-enters the running batch as a new row (through
the same entry as jobs that join it): its neighbours go on without waiting for a batch to end, the
long job never holds more than one window of key/value cache, and cancellation (between any two
steps, windows included) and progress (counted over every window's steps) work as for any row.
With transformers' pass, where nothing can join a running batch, the next window decodes with the
batches that follow.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
import random
import secrets
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from inference.checkpoints.loading import LoadedCompression, LoadedMusicGen, ModelCache
from inference.engine import kernel_choice
from inference.engine.audio import INPUT_WINDOW_S
from inference.engine.codec import decode_clip, decode_codes, encode_clip, encode_prompt
from inference.engine.decoder_step import cover_positions
from inference.engine.decoding import Conditioning, DecodedRow, DecodingRow, MusicGenDecoder, Sampling
from inference.engine.generated_audio import GeneratedAudio
from inference.engine.inputs import JobInputs
from inference.errors import GenerationCancelled
from inference.request import MAX_SEED, GenerationRequest, RequestError
from inference.settings import EngineSettings
from inference.windows import Window, decoder_steps, plan_windows, stride_frames, window_frames

__all__ = ["EngineJob", "GeneratedAudio", "GenerationCancelled", "MusicGenEngine", "seed_everything"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


@dataclass(frozen=True)
class EngineJob:
    """One job of a batch: its request, an optional checkpoint overriding `[models]`, and its
    progress (`on_progress(steps_done, steps_total)` after every decoder step) and cancellation
    (`is_cancelled()`, polled between steps) hooks."""

    request: GenerationRequest
    model_source: str | None = None
    on_progress: ProgressCallback | None = None
    is_cancelled: CancelCheck | None = None


# Asked between decoder steps for jobs that join the running batch ([] for none).
JobSource = Callable[[], Sequence[EngineJob]]
# Told each job's outcome (its audio, or the exception that ended it) the moment it ends.
OutcomeCallback = Callable[[EngineJob, "GeneratedAudio | Exception"], None]


def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy and torch (CPU and every CUDA device), as the Cog predictor does."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds all CUDA generators


def choose_seed(requested: int | None) -> int:
    """The requested seed, or a fresh random one (None; the request already turned -1 into None)
    that is then reported to the user."""
    return secrets.randbelow(MAX_SEED + 1) if requested is None else requested


class _PhaseClock:
    """Wall-clock seconds of the named phases of one job."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self._mark = self.started
        self.timings: dict[str, float] = {}

    def lap(self, phase: str, until: float | None = None) -> None:
        end = time.perf_counter() if until is None else until
        self.timings[phase] = self.timings.get(phase, 0.0) + (end - self._mark)
        self._mark = end

    def restart(self) -> None:
        """Start the next phase now (time spent on other jobs of the batch is not this job's)."""
        self._mark = time.perf_counter()

    def finish(self) -> dict[str, float]:
        self.timings["total"] = time.perf_counter() - self.started
        return dict(self.timings)


@dataclass
class _PreparedMusic:
    """A music job ready for the decoding loop: the windows it is made of (one, unless the piece is
    longer than the model's window), and the row of the one decoding now."""

    loaded: LoadedMusicGen
    seed: int
    clock: _PhaseClock
    row: DecodingRow
    prompt_frames: int
    new_frames: int
    report: Callable[[GeneratedAudio | Exception], None]
    windows: tuple[Window, ...]
    # Each window's conditioning (a melody is followed from each window's time on), or one for all.
    conditionings: tuple[Conditioning, ...]
    # Frames a window moves the next one on by (audiocraft's stride, in frames).
    stride: int
    # Decoder steps the delay pattern adds to each window.
    delay_steps: int
    window_index: int = 0
    # What the finished windows made: the first whole (a continuation's clip included), then the codes
    # each next one added after its prompt.
    made: list[torch.Tensor] = field(default_factory=list)
    # Where its next window waits to enter the batch that decodes it (set by that batch).
    next_window_ready: Callable[[_PreparedMusic], None] | None = None
    reported: bool = False

    def report_once(self, outcome: GeneratedAudio | Exception) -> None:
        if not self.reported:
            self.reported = True
            self.report(outcome)

    @property
    def last_window(self) -> bool:
        return self.window_index == len(self.windows) - 1

    def window_row(self, row: DecodingRow, prompt_codes: torch.Tensor | None) -> DecodingRow:
        """`row` (the job's first window, or the one before) made into the row of the current window."""
        window = self.windows[self.window_index]
        done = self.windows[: self.window_index]
        return dataclasses.replace(
            row,
            conditioning=self.conditionings[min(self.window_index, len(self.conditionings) - 1)],
            new_steps=window.new_frames + self.delay_steps,
            prompt_codes=prompt_codes,
            steps_before=decoder_steps(done, delay_steps=self.delay_steps),
            steps_total=decoder_steps(self.windows, delay_steps=self.delay_steps),
        )


def sampling_of(request: GenerationRequest) -> Sampling:
    """The decoding loop's sampling settings for a request (audiocraft's rules live in `pick_codes`)."""
    return Sampling(
        top_k=request.top_k,
        top_p=request.top_p,
        temperature=request.temperature,
        guidance=request.classifier_free_guidance,
    )


class MusicGenEngine:
    """Turns generation requests into audio with the models of a `ModelCache`."""

    def __init__(
        self,
        settings: EngineSettings,
        cache: ModelCache | None = None,
        *,
        stem_separator: torch.nn.Module | None = None,
    ):
        """`stem_separator`: a demucs-style model to use for melody stems instead of loading
        `[melody] demucs_model` on first use (it is only used when `[melody] stem_separation` is on)."""
        self.settings = settings
        self.cache = cache if cache is not None else ModelCache(settings)
        # What each request gives the decoder: its text's states, its clip, its melody.
        self.inputs = JobInputs(settings, stem_separator)
        self._decoders: list[MusicGenDecoder] = []
        # The decoder kernels of each model version run so far ("onednn-packed (measured)"), and who
        # is told when one is chosen (the worker, which reports it to the bot).
        self.kernel_choices: dict[str, str] = {}
        self.on_kernels_chosen: Callable[[str, str], None] | None = None

    # -- public API ------------------------------------------------------------------------------
    def generate(
        self,
        request: GenerationRequest,
        *,
        model_source: str | None = None,
        on_progress: ProgressCallback | None = None,
        is_cancelled: CancelCheck | None = None,
    ) -> GeneratedAudio:
        """Generate the audio of `request` (a batch of one).

        `model_source` overrides the configured checkpoint of the request's model version.
        `on_progress(steps_done, steps_total)` is called after every decoder step; when `is_cancelled()`
        turns true the job stops between two steps with GenerationCancelled. Raises RequestError for
        anything the person can fix.
        """
        job = EngineJob(request, model_source, on_progress, is_cancelled)
        (outcome,) = self.generate_batch([job])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def generate_all(
        self,
        requests: Sequence[GenerationRequest],
        *,
        model_source: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> list[GeneratedAudio]:
        """Every request's audio, made as one batch, in order (takes, a timed batch); `on_progress`
        follows the first request's steps. Raises the first failure, if any request failed."""
        jobs = [
            EngineJob(request, model_source, on_progress if index == 0 else None)
            for index, request in enumerate(requests)
        ]
        made = []
        for outcome in self.generate_batch(jobs):
            if isinstance(outcome, BaseException):
                raise outcome
            made.append(outcome)
        return made

    def generate_batch(
        self,
        jobs: Sequence[EngineJob],
        *,
        joining: JobSource | None = None,
        on_outcome: OutcomeCallback | None = None,
    ) -> list[GeneratedAudio | Exception]:
        """Generate every job; one entry per job, in order: its audio, or the exception that ended it
        (RequestError for a request the person can fix, GenerationCancelled, or another error).

        Music jobs that share a model decode as one batch (with `[engine] decoder = "transformers"`,
        rows whose conditioning prefix or prompt differ in length run as separate batches, one after
        the other); encode-decode jobs run alone. A job's failure (a bad request, a cancellation)
        never touches the others' results.

        `on_outcome(job, outcome)` is called for each job the moment it ends, while the rest of its
        batch goes on. `joining()` is asked between decoder steps (continuous batching, with our
        decoder pass) for jobs that join the running batch; each of them is answered through
        `on_outcome` only. A joining job of another model runs after this batch.
        """
        outcomes: list[GeneratedAudio | Exception | None] = [None] * len(jobs)

        def reporter(index: int, job: EngineJob) -> Callable[[GeneratedAudio | Exception], None]:
            def report(outcome: GeneratedAudio | Exception) -> None:
                outcomes[index] = outcome
                if on_outcome is not None:
                    on_outcome(job, outcome)

            return report

        music = [self._start_job(job, reporter(index, job)) for index, job in enumerate(jobs)]
        waiting = collections.deque(self._decoding_groups([m for m in music if m is not None]))
        while waiting:
            later: list[_PreparedMusic] = []
            self._decode_group(waiting.popleft(), joining, on_outcome, later)
            waiting.extend(self._decoding_groups(later))
        return [outcome if outcome is not None else RuntimeError("job was not run") for outcome in outcomes]

    def _start_job(
        self, job: EngineJob, report: Callable[[GeneratedAudio | Exception], None]
    ) -> _PreparedMusic | None:
        """A music job ready to decode; an encode-decode job, or one that fails here, is reported now."""
        try:
            request = job.request.validate(max_duration_s=self.settings.engine.max_duration_s)
            if request.model_version == "encode-decode":
                report(self._encode_decode(job))
                return None
            return self._prepare_music(job, report)
        except Exception as error:
            report(self._job_failed(error))
            return None

    def _decoding_groups(self, prepared: list[_PreparedMusic]) -> list[list[_PreparedMusic]]:
        """Jobs that can decode as one batch: the same model (and, for transformers' pass, rows of
        the same shape)."""
        groups: dict[tuple[int, tuple[int, int] | None], list[_PreparedMusic]] = {}
        for job in prepared:
            shape = None if self._decoder_for(job.loaded).can_join else job.row.shape_key()
            groups.setdefault((id(job.loaded.model), shape), []).append(job)
        return list(groups.values())

    # -- music -----------------------------------------------------------------------------------
    def _prepare_music(
        self, job: EngineJob, report: Callable[[GeneratedAudio | Exception], None]
    ) -> _PreparedMusic:
        request = job.request
        clock = _PhaseClock()
        seed = choose_seed(request.seed)
        # Models are loaded outside inference mode: their weights must stay ordinary tensors for
        # other users of the cache.
        loaded = self.cache.get(request.model_version, job.model_source)
        follows_melody = request.input_audio is not None and not request.continuation
        if follows_melody and not loaded.supports_melody:
            # Name an overriding checkpoint (CLI --model): then the version alone would mislead.
            which = f"checkpoint {job.model_source}" if job.model_source else f"{request.model_version} model"
            raise RequestError(
                f"The {which} can't follow a melody; choose model_version melody (or a "
                "melody-based fine-tune), or set continuation to continue the clip instead."
            )
        separator = self.inputs.stem_separator(loaded.device) if follows_melody else None
        clock.lap("load")
        new_frames = request.duration * loaded.frame_rate
        with torch.inference_mode():
            # Seed before anything random (demucs' random shifts included).
            seed_everything(seed)
            prompt_codes = None
            chromas: list[torch.Tensor | None] = [None]
            if request.input_audio is not None and request.continuation:
                clip = self.inputs.load_input(request, loaded)
                prompt_codes = encode_prompt(loaded, clip)
            windows = self._plan_windows(
                loaded, 0 if prompt_codes is None else prompt_codes.shape[-1], new_frames
            )
            if follows_melody:
                clip = self.inputs.load_input(request, loaded, seconds=self._melody_span_s(loaded, windows))
                chromas = [
                    chroma.to(loaded.device, loaded.dtype)
                    for chroma in self.inputs.melody_chromas(loaded, clip, separator, windows)
                ]
            text, mask = self.inputs.text_states(loaded, request.prompt)
            conditionings = tuple(self.inputs.conditioning(loaded, text, mask, chroma) for chroma in chromas)
        num_codebooks = int(loaded.model.decoder.config.num_codebooks)
        channel_codebooks = num_codebooks // 2 if loaded.audio_channels == 2 else num_codebooks
        generator = torch.Generator(device=loaded.device)
        generator.manual_seed(seed)
        first_row = DecodingRow(
            conditioning=conditionings[0],
            new_steps=0,  # set per window
            sampling=sampling_of(request),
            generator=generator,
            on_progress=job.on_progress,
            is_cancelled=job.is_cancelled,
        )
        clock.lap("prepare")
        prompt_frames = 0 if prompt_codes is None else int(prompt_codes.shape[-1])
        prepared = _PreparedMusic(
            loaded,
            seed,
            clock,
            first_row,
            prompt_frames,
            new_frames,
            report,
            windows=windows,
            conditionings=conditionings,
            stride=stride_frames(self.settings.engine.extend_stride_s, loaded.frame_rate),
            # The delay pattern leaves the last codebook channel_codebooks - 1 steps behind the first.
            delay_steps=channel_codebooks - 1,
        )
        prepared.row = prepared.window_row(first_row, prompt_codes)
        prepared.row.on_finished = functools.partial(self._row_finished, prepared)
        return prepared

    def _plan_windows(
        self, loaded: LoadedMusicGen, prompt_frames: int, new_frames: int
    ) -> tuple[Window, ...]:
        """The windows of a piece (`inference.windows`); RequestError for one this model cannot make."""
        window = window_frames(loaded.window_s, loaded.frame_rate)
        stride = stride_frames(self.settings.engine.extend_stride_s, loaded.frame_rate)
        if prompt_frames >= window:
            raise RequestError(
                f"The clip to continue must be shorter than {loaded.window_s:g} s (the model's window). "
                "Trim it with continuation_start/continuation_end."
            )
        if prompt_frames + new_frames > window and not 0 < stride < window:
            raise RequestError(
                f"This model makes at most {loaded.window_s:g} s at a time, and this bot cannot make longer "
                f"pieces with it ([engine] extend_stride_s = {self.settings.engine.extend_stride_s:g} s must be "
                f"shorter than that). Ask for at most {loaded.window_s:g} s in all."
            )
        return plan_windows(prompt_frames=prompt_frames, new_frames=new_frames, window=window, stride=stride)

    @staticmethod
    def _melody_span_s(loaded: LoadedMusicGen, windows: tuple[Window, ...]) -> float:
        """Seconds of a melody clip the piece follows: from its start to the end of the last window."""
        return max(INPUT_WINDOW_S, windows[-1].offset / loaded.frame_rate + loaded.window_s)

    def _decode_group(
        self,
        group: list[_PreparedMusic],
        joining: JobSource | None,
        on_outcome: OutcomeCallback | None,
        later: list[_PreparedMusic],
    ) -> None:
        """Decode a group as one batch, which jobs from `joining` and the next windows of its long
        pieces may enter; every job of it is reported as it ends. Joining jobs of another model go to
        `later`, and so do next windows the decoder cannot take in (transformers' pass)."""
        decoder = self._decoder_for(group[0].loaded)
        members = list(group)
        next_windows: list[_PreparedMusic] = []
        for job in group:
            job.clock.restart()
            job.next_window_ready = next_windows.append

        def entering_rows() -> list[DecodingRow]:
            rows = [job.row for job in next_windows]
            next_windows.clear()
            # Jobs join while the batch runs: a long piece between two windows still runs in it.
            # (From the newest: the oldest members are the ones already reported.)
            if joining is not None and any(not job.reported for job in reversed(members)):
                joined = self._join(joining(), decoder.model, on_outcome, later)
                for job in joined:
                    job.next_window_ready = next_windows.append
                members.extend(joined)
                rows += [job.row for job in joined]
            return rows

        try:
            with torch.inference_mode():
                decoder.decode([job.row for job in group], joining=entering_rows)
        except Exception as error:
            # Not one job's fault (the batch itself failed): every job still in it reports the error.
            logger.exception("a batch of %d job(s) failed", len(members))
            for job in members:
                if not job.reported:
                    job.report_once(self._job_failed(error))
            return
        later.extend(job for job in next_windows if not job.reported)

    def _join(
        self,
        jobs: Sequence[EngineJob],
        model: Any,
        on_outcome: OutcomeCallback | None,
        later: list[_PreparedMusic],
    ) -> list[_PreparedMusic]:
        """Prepare jobs that join a running batch of `model`: those of another model go to `later`, and
        those that fail here (or are encode-decode) are reported at once."""
        joined: list[_PreparedMusic] = []
        for job in jobs:

            def report(outcome: GeneratedAudio | Exception, job: EngineJob = job) -> None:
                if on_outcome is not None:
                    on_outcome(job, outcome)

            # Loading (if it comes to that) must make ordinary tensors, as outside the batch.
            with torch.inference_mode(False):
                prepared = self._start_job(job, report)
            if prepared is None:
                continue
            prepared.clock.restart()
            (joined if prepared.loaded.model is model else later).append(prepared)
        return joined

    def _row_finished(self, job: _PreparedMusic, decoded: DecodedRow | GenerationCancelled) -> None:
        """A row left its batch: the next window of the job enters it, or the job's audio (or its
        cancellation) is its outcome."""
        if isinstance(decoded, GenerationCancelled):
            job.report_once(decoded)
            return
        try:
            window = job.windows[job.window_index]
            job.made.append(
                decoded.codes if job.window_index == 0 else decoded.codes[:, window.prompt_frames :]
            )
            if not job.last_window:
                self._next_window(job, decoded)
                return
            codes = torch.cat(job.made, dim=-1)
            job.report_once(self._finish_music(job, DecodedRow(codes, decoded.finished_at)))
        except Exception as error:
            job.report_once(self._job_failed(error))

    @staticmethod
    def _next_window(job: _PreparedMusic, decoded: DecodedRow) -> None:
        """Start the job's next window, prompted with the last `window - stride` frames of this one
        (audiocraft's `prompt_tokens = gen_tokens[:, :, stride_tokens:]`)."""
        prompt = decoded.codes[:, job.stride :]
        job.window_index += 1
        assert prompt.shape[-1] == job.windows[job.window_index].prompt_frames
        job.row = job.window_row(job.row, prompt)
        assert job.next_window_ready is not None
        job.next_window_ready(job)

    def _finish_music(self, job: _PreparedMusic, decoded: DecodedRow) -> GeneratedAudio:
        job.clock.lap("generate", until=decoded.finished_at)
        job.clock.restart()
        loaded = job.loaded
        with torch.inference_mode():
            wav = decode_codes(loaded, decoded.codes)
        job.clock.lap("decode")
        hop_length = loaded.sample_rate // loaded.frame_rate
        expected = (job.prompt_frames + job.new_frames) * hop_length
        return GeneratedAudio(
            wav=_fit_length(wav, expected),
            sample_rate=loaded.sample_rate,
            seed=job.seed,
            timings=job.clock.finish(),
        )

    def _decoder_for(self, loaded: LoadedMusicGen) -> MusicGenDecoder:
        """The decoding loop of a model, set up as `[engine] decoder`, `static_cache` and `compile`
        say; kept while the model is cached (packed or compiled weights are worth keeping)."""
        self._decoders = [d for d in self._decoders if self.cache.holds(d.model)]
        for decoder in self._decoders:
            if decoder.model is loaded.model:
                return decoder
        options = self.settings.engine
        if options.runs_our_decoder:
            # The cache's models are loaded for the engines alone: their decoder weights can live in
            # the packed copies of one step that every engine on this cache shares. Its CPU kernels
            # are chosen (measured, or read from the kernel cache) the first time.
            step, choice = kernel_choice.decoder_step(loaded.model, options, label=loaded.version)
            decoder = MusicGenDecoder(loaded.model, step=step)
            self._kernels_chosen(loaded.version, choice.summary())
        else:
            factory = _static_cache_factory(loaded.model) if options.static_cache else None
            decoder = MusicGenDecoder(loaded.model, cache_factory=factory)
            if options.compile:
                decoder.compile_forward(cuda_graphs=loaded.device.type == "cuda" and options.static_cache)
        self._decoders.append(decoder)
        return decoder

    def _kernels_chosen(self, model_version: str, kernels: str) -> None:
        self.kernel_choices[model_version] = kernels
        if self.on_kernels_chosen is not None:
            self.on_kernels_chosen(model_version, kernels)

    @staticmethod
    def _job_failed(error: Exception) -> Exception:
        if not isinstance(error, RequestError | GenerationCancelled):
            logger.error("job failed: %s", error, exc_info=error)
        return error

    # -- encode-decode -----------------------------------------------------------------------------
    def _encode_decode(self, job: EngineJob) -> GeneratedAudio:
        # `duration` does not apply: the output is as long as the (trimmed) input clip.
        clock = _PhaseClock()
        seed = choose_seed(job.request.seed)
        if job.is_cancelled is not None and job.is_cancelled():
            raise GenerationCancelled("cancelled before generation started")
        compression = self.cache.get_compression(job.model_source)
        clock.lap("load")
        with torch.inference_mode():
            wav, sample_rate = self._run_compression_model(job.request, compression, clock)
        return GeneratedAudio(wav=wav, sample_rate=sample_rate, seed=seed, timings=clock.finish())

    def _run_compression_model(
        self, request: GenerationRequest, compression: LoadedCompression, clock: _PhaseClock
    ) -> tuple[torch.Tensor, int]:
        clip = self.inputs.read_clip(request, compression.sample_rate, compression.audio_channels)
        request.check_input_length(request.continuation_start + clip.shape[-1] / compression.sample_rate)
        clock.lap("prepare")
        encoded = encode_clip(compression, clip)  # a stereo model's clip: each channel alone
        clock.lap("generate")
        wav = decode_clip(compression, encoded)
        clock.lap("decode")
        return _fit_length(wav, clip.shape[-1]), compression.sample_rate


def _fit_length(wav: torch.Tensor, samples: int) -> torch.Tensor:
    """Cut or zero-pad `wav` [C, T] to exactly `samples` (EnCodec decodes whole frames)."""
    length = wav.shape[-1]
    if length > samples:
        return wav[..., :samples].contiguous()
    if length < samples:
        if samples - length > math.ceil(samples * 0.01):
            logger.warning("decoded audio is %d samples short of %d", samples - length, samples)
        return torch.nn.functional.pad(wav, (0, samples - length))
    return wav


# Static caches are sized up to a multiple of this many positions, so that batches of nearby
# lengths share one compiled graph instead of compiling their own.
STATIC_CACHE_GRANULE = 256


def _static_cache_factory(model: Any) -> Callable[[int, int], Any]:
    """Fixed-size key/value caches for the decoder's self-attention (the cross-attention keys are
    computed once and have a fixed size already). The position table is made to cover each cache
    before it is used (`_read_positions_from_table`)."""
    from transformers import DynamicCache, EncoderDecoderCache, StaticCache

    config = model.decoder.config
    positions = model.decoder.model.decoder.embed_positions
    if "forward" not in vars(positions):
        positions.forward = types.MethodType(_read_positions_from_table, positions)

    def make(rows: int, positions_needed: int) -> Any:
        size = math.ceil(positions_needed / STATIC_CACHE_GRANULE) * STATIC_CACHE_GRANULE
        cover_positions(positions, size)
        return EncoderDecoderCache(
            StaticCache(config=config, max_cache_len=size), DynamicCache(config=config)
        )

    return make


def _read_positions_from_table(
    table: Any, inputs: torch.Tensor, cache_length: int | torch.Tensor = 0
) -> torch.Tensor:
    """transformers' sinusoidal position embeddings (MusicGen's and the melody model's) for the next
    columns, without growing the table from inside the step.

    transformers grows the table when `seq_len + cache_length` passes its size. With a static cache,
    `cache_length` is a tensor (the cache counts its filled positions), so that check is a
    data-dependent branch: torch.compile breaks the step's graph there and runs the rest of the
    forward pass as a dozen separately compiled pieces (24 kernels for the tiny test model instead of
    17), which also keeps a GPU's CUDA graphs from capturing one step. The static cache factory grows
    the table to the cache's size before the step instead; a plain integer length (a dynamic cache of
    another engine sharing the model) still grows it here, as transformers does.
    """
    # MusicGen passes codebook ids [batch, codebooks, length]; the melody model embeddings
    # [batch, length, hidden].
    seq_len = inputs.shape[1] if inputs.is_floating_point() else inputs.shape[-1]
    if isinstance(cache_length, int):
        cover_positions(table, seq_len + cache_length)
    position_ids = torch.arange(seq_len, device=inputs.device) + cache_length
    return table.weights.index_select(0, position_ids.view(-1)).detach()
