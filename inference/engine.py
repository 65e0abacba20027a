"""The MusicGen engine: one `GenerationRequest` in, audio out, with audiocraft's semantics.

Runs on Hugging Face transformers (see ENGINE-NOTES.md for why not the audiocraft package) and
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

`generate` returns the audio; `generate_to_file` also normalises and writes it.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from inference import audio
from inference.chroma import extract_chroma
from inference.errors import GenerationCancelled
from inference.models import CODEC_DTYPE, LoadedCompression, LoadedMusicGen, ModelCache
from inference.protocol import GenerationResult
from inference.request import MAX_SEED, GenerationRequest, RequestError
from inference.settings import EngineSettings

__all__ = ["GeneratedAudio", "GenerationCancelled", "MusicGenEngine", "seed_everything"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


@dataclass
class GeneratedAudio:
    """Audio produced by the engine (not normalised)."""

    wav: torch.Tensor  # [channels, samples] float32 on the CPU
    sample_rate: int
    seed: int
    # Named phases in seconds: "load", "prepare", "generate", "decode", "total".
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.wav.shape[0])

    @property
    def duration_s(self) -> float:
        return self.wav.shape[-1] / self.sample_rate


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

    def finish(self) -> dict[str, float]:
        self.timings["total"] = time.perf_counter() - self.started
        return dict(self.timings)


class _StepMonitor(StoppingCriteria):
    """Called by transformers after every decoder step: reports progress and stops a cancelled job.

    Cancellation raises out of `generate` at once (no truncated audio is ever decoded or returned).
    """

    def __init__(
        self, steps_total: int, on_progress: ProgressCallback | None, is_cancelled: CancelCheck | None
    ):
        self.steps_total = steps_total
        self.steps_done = 0
        self.on_progress = on_progress
        self.is_cancelled = is_cancelled
        self.last_step_at: float | None = None

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None, **kwargs: Any
    ) -> torch.Tensor:
        self.steps_done += 1
        if self.is_cancelled is not None and self.is_cancelled():
            raise GenerationCancelled(
                f"cancelled after {self.steps_done} of {self.steps_total} decoder steps"
            )
        if self.on_progress is not None:
            self.on_progress(self.steps_done, self.steps_total)
        self.last_step_at = time.perf_counter()
        # Never stop early: the length is set by max_new_tokens.
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class _WeakGuidance(LogitsProcessor):
    """audiocraft's CFG for coefficients below 1 (down to 0 = unconditional).

    transformers only runs the unconditional branch for guidance_scale > 1. For a coefficient `cfg` < 1
    we ask it for `guidance_scale=scale` and, before its CFG processor, rewrite the conditional half as
    `uncond + (cfg/scale) * (cond - uncond)`, so its `uncond + scale * (cond' - uncond)` equals
    audiocraft's `uncond + cfg * (cond - uncond)`.
    """

    def __init__(self, cfg: float, transformers_scale: float):
        self.ratio = cfg / transformers_scale

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        cond, uncond = scores.chunk(2, dim=0)
        return torch.cat([uncond + self.ratio * (cond - uncond), uncond], dim=0)


_WEAK_GUIDANCE_SCALE = 2.0


def generation_kwargs(request: GenerationRequest) -> tuple[dict[str, Any], list[LogitsProcessor]]:
    """transformers `generate` keyword arguments (and extra logits processors) for the request's sampling.

    Everything is set explicitly so nothing leaks in from a checkpoint's saved generation_config
    (which usually has do_sample/guidance_scale/top_k/max_length of its own).
    """
    kwargs: dict[str, Any] = {
        "num_beams": 1,
        "num_return_sequences": 1,
        "repetition_penalty": 1.0,
        "use_cache": True,
        "return_dict_in_generate": False,
    }
    processors: list[LogitsProcessor] = []
    if request.temperature == 0:
        # audiocraft: temperature 0 (or no sampling) means argmax.
        kwargs.update(do_sample=False, temperature=1.0, top_k=0, top_p=1.0)
    elif request.top_p > 0:
        # audiocraft uses top_p alone when it is set; transformers would apply both.
        kwargs.update(do_sample=True, temperature=request.temperature, top_k=0, top_p=request.top_p)
    else:
        kwargs.update(do_sample=True, temperature=request.temperature, top_k=request.top_k, top_p=1.0)
    cfg = request.classifier_free_guidance
    if cfg == 1:
        # uncond + 1*(cond - uncond) == cond: transformers skips the unconditional branch (faster, same math).
        kwargs["guidance_scale"] = 1.0
    elif cfg > 1:
        kwargs["guidance_scale"] = cfg
    else:
        kwargs["guidance_scale"] = _WEAK_GUIDANCE_SCALE
        processors.append(_WeakGuidance(cfg, _WEAK_GUIDANCE_SCALE))
    return kwargs, processors


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
        self._demucs: torch.nn.Module | None = stem_separator

    # -- public API ------------------------------------------------------------------------------
    def generate(
        self,
        request: GenerationRequest,
        *,
        model_source: str | None = None,
        on_progress: ProgressCallback | None = None,
        is_cancelled: CancelCheck | None = None,
    ) -> GeneratedAudio:
        """Generate the audio of `request`.

        `model_source` overrides the configured checkpoint of the request's model version.
        `on_progress(steps_done, steps_total)` is called after every decoder step; when `is_cancelled()`
        turns true the job stops between two steps with GenerationCancelled. Raises RequestError for
        anything the person can fix.
        """
        request.validate()
        clock = _PhaseClock()
        seed = choose_seed(request.seed)
        if request.model_version == "encode-decode":
            wav, sample_rate = self._encode_decode(request, model_source, clock)
        else:
            wav, sample_rate = self._generate_music(
                request, model_source, seed, clock, on_progress, is_cancelled
            )
        return GeneratedAudio(wav=wav, sample_rate=sample_rate, seed=seed, timings=clock.finish())

    def generate_to_file(
        self,
        job_id: str,
        request: GenerationRequest,
        output_dir: str | Path,
        *,
        model_source: str | None = None,
        on_progress: ProgressCallback | None = None,
        is_cancelled: CancelCheck | None = None,
    ) -> GenerationResult:
        """Generate, normalise (request.normalization_strategy) and write `<output_dir>/<job_id>.<format>`."""
        started = time.perf_counter()
        generated = self.generate(
            request, model_source=model_source, on_progress=on_progress, is_cancelled=is_cancelled
        )
        write_started = time.perf_counter()
        normalized = audio.normalize_audio(
            generated.wav, request.normalization_strategy, generated.sample_rate
        )
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        path = audio.write_audio(
            normalized,
            generated.sample_rate,
            output_dir / f"{job_id}.{request.output_format}",
            request.output_format,
        )
        timings = dict(generated.timings)
        timings["write"] = time.perf_counter() - write_started
        timings["total"] = time.perf_counter() - started
        return GenerationResult(
            job_id=job_id,
            output_path=str(path),
            output_format=request.output_format,
            seed=generated.seed,
            sample_rate=generated.sample_rate,
            channels=generated.channels,
            duration_s=generated.duration_s,
            timings=timings,
        )

    # -- modes -----------------------------------------------------------------------------------
    def _generate_music(
        self,
        request: GenerationRequest,
        model_source: str | None,
        seed: int,
        clock: _PhaseClock,
        on_progress: ProgressCallback | None,
        is_cancelled: CancelCheck | None,
    ) -> tuple[torch.Tensor, int]:
        # Models are loaded outside inference mode: their weights must stay ordinary tensors for
        # other users of the cache.
        loaded = self.cache.get(request.model_version, model_source)
        follows_melody = request.input_audio is not None and not request.continuation
        if follows_melody and not loaded.supports_melody:
            # Name an overriding checkpoint (CLI --model): then the version alone would mislead.
            which = f"checkpoint {model_source}" if model_source else f"{request.model_version} model"
            raise RequestError(
                f"The {which} can't follow a melody; choose model_version melody (or a "
                "melody-based fine-tune), or set continuation to continue the clip instead."
            )
        separator = self._stem_separator(loaded.device) if follows_melody else None
        clock.lap("load")
        with torch.inference_mode():
            return self._run_music_model(request, loaded, separator, seed, clock, on_progress, is_cancelled)

    def _run_music_model(
        self,
        request: GenerationRequest,
        loaded: LoadedMusicGen,
        separator: torch.nn.Module | None,
        seed: int,
        clock: _PhaseClock,
        on_progress: ProgressCallback | None,
        is_cancelled: CancelCheck | None,
    ) -> tuple[torch.Tensor, int]:
        # Seed before anything random (demucs' random shifts included).
        seed_everything(seed)
        model = loaded.model
        inputs = self._text_inputs(loaded, request.prompt)
        hop_length = loaded.sample_rate // loaded.frame_rate
        new_frames = request.duration * loaded.frame_rate
        prompt_frames = 0
        if request.input_audio is not None and request.continuation:
            clip = self._load_input(request, loaded.sample_rate, loaded.audio_channels)
            prompt_codes = self._encode_prompt(loaded, clip)
            prompt_frames = int(prompt_codes.shape[-1])
            inputs["decoder_input_ids"] = prompt_codes
        elif request.input_audio is not None:
            clip = self._load_input(request, loaded.sample_rate, loaded.audio_channels)
            inputs["input_features"] = self._melody_chroma(loaded, clip, separator).to(
                loaded.device, loaded.dtype
            )

        num_codebooks = int(model.decoder.config.num_codebooks)
        channel_codebooks = num_codebooks // 2 if loaded.audio_channels == 2 else num_codebooks
        # The delay pattern leaves the last codebook channel_codebooks - 1 steps behind the first.
        max_new_tokens = new_frames + channel_codebooks - 1
        sampling, extra_processors = generation_kwargs(request)
        monitor = _StepMonitor(max_new_tokens, on_progress, is_cancelled)
        clock.lap("prepare")
        if is_cancelled is not None and is_cancelled():
            raise GenerationCancelled("cancelled before generation started")

        output = model.generate(
            **inputs,
            **sampling,
            max_new_tokens=max_new_tokens,
            min_new_tokens=0,
            logits_processor=LogitsProcessorList(extra_processors),
            stopping_criteria=StoppingCriteriaList([monitor]),
        )
        # transformers decodes the codes inside generate; the decoder loop ends at the last step.
        clock.lap("generate", until=monitor.last_step_at)
        clock.lap("decode")
        wav = output[0].float().cpu()
        expected = (prompt_frames + new_frames) * hop_length
        return _fit_length(wav, expected), loaded.sample_rate

    def _encode_decode(
        self, request: GenerationRequest, model_source: str | None, clock: _PhaseClock
    ) -> tuple[torch.Tensor, int]:
        # `duration` does not apply: the output is as long as the (trimmed) input clip.
        compression = self.cache.get_compression(model_source)
        clock.lap("load")
        with torch.inference_mode():
            return self._run_compression_model(request, compression, clock)

    def _run_compression_model(
        self, request: GenerationRequest, compression: LoadedCompression, clock: _PhaseClock
    ) -> tuple[torch.Tensor, int]:
        clip = self._load_input(request, compression.sample_rate, compression.audio_channels)
        codec = compression.model
        batch = clip[None].to(compression.device, compression.dtype)
        clock.lap("prepare")
        encoded = codec.encode(batch)
        clock.lap("generate")
        decoded = codec.decode(encoded.audio_codes, encoded.audio_scales).audio_values
        clock.lap("decode")
        wav = decoded[0].float().cpu()
        return _fit_length(wav, clip.shape[-1]), compression.sample_rate

    # -- inputs ----------------------------------------------------------------------------------
    def _text_inputs(self, loaded: LoadedMusicGen, prompt: str | None) -> dict[str, torch.Tensor]:
        tokens = loaded.tokenizer([prompt or ""], return_tensors="pt")
        input_ids = tokens["input_ids"].to(loaded.device)
        attention_mask = tokens["attention_mask"].to(loaded.device)
        if prompt is None:
            # audiocraft conditions a missing description on "" with its mask zeroed: no text at all.
            attention_mask = torch.zeros_like(attention_mask)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def _load_input(self, request: GenerationRequest, sample_rate: int, channels: int) -> torch.Tensor:
        """The input clip decoded at `sample_rate`/`channels` and trimmed to [start*sr : end*sr]."""
        assert request.input_audio is not None
        clip = audio.load_audio(
            request.input_audio,
            sample_rate=sample_rate,
            channels=channels,
            start_s=request.continuation_start,
            end_s=request.continuation_end,
            timeout_s=self.settings.engine.decode_timeout_s,
            max_seconds=self.settings.engine.max_input_seconds,
        )
        if clip.shape[-1] == 0:
            raise RequestError("The trimmed clip is empty: check continuation_start and continuation_end.")
        # The clip ends at start + its trimmed length (the decoder stops reading at continuation_end),
        # which is all the 30 s budget of a continuation needs.
        request.check_input_length(request.continuation_start + clip.shape[-1] / sample_rate)
        return clip

    def _encode_prompt(self, loaded: LoadedMusicGen, clip: torch.Tensor) -> torch.Tensor:
        """EnCodec codes of the continuation prompt as decoder_input_ids [codebooks, frames]
        (stereo models interleave left/right codebooks, as transformers does)."""
        codec = loaded.model.audio_encoder
        batch = clip[None].to(loaded.device, CODEC_DTYPE)  # [1, channels, samples]
        if loaded.audio_channels == 2:
            left = codec.encode(batch[:, :1]).audio_codes[0]
            right = codec.encode(batch[:, 1:]).audio_codes[0]
            codes = torch.stack([left, right], dim=2).flatten(1, 2)  # [1, 2*K, frames], L/R alternating
        else:
            codes = codec.encode(batch).audio_codes[0]  # [1, K, frames]
        return codes.reshape(-1, codes.shape[-1])

    def _stem_separator(self, device: torch.device) -> torch.nn.Module | None:
        """The demucs model for melody stems (loaded once), or None when `[melody] stem_separation` is off."""
        if not self.settings.melody.stem_separation:
            return None
        if self._demucs is None:
            from inference.stems import load_demucs

            self._demucs = load_demucs(self.settings.melody.demucs_model)
        # Demucs runs in float32 whatever the MusicGen dtype (audiocraft autocasts it to float32).
        return self._demucs.to(device=device, dtype=torch.float32)

    def _melody_chroma(
        self, loaded: LoadedMusicGen, clip: torch.Tensor, separator: torch.nn.Module | None
    ) -> torch.Tensor:
        """audiocraft's melody conditioning: demucs stems (vocals + other) when configured, then the argmax chroma."""
        if separator is not None:
            from inference.stems import melody_stems

            mono = melody_stems(clip, loaded.sample_rate, separator, loaded.device)
        else:
            mono = clip.mean(dim=0, keepdim=True)
        return extract_chroma(mono, loaded.sample_rate)  # [1, frames, 12]


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
