"""How one engine configuration's output differs from another's on the same request: the numerics
`bench/dtype_compare.py` reports and `doctor` checks (a device's served path against float32 on the
CPU).

- `codes_and_audio`: a request decoded freely by an engine's own decoding loop (its dtype, kernels,
  static cache and compiled step), with the codes kept.
- `teacher_forced`: the reference's codes fed to an engine step by step, and the code its guided
  argmax picks at every position. Free decoding diverges for good at the first differing code
  (autoregression), so comparing picks in the same context is what isolates the numerics.
- `spectral_difference_db`: the mean |difference| of two clips' log-magnitude spectrograms. For
  scale: two float32 runs of random weights with different seeds differ by about 6 dB.

These drive the engine's internals (a job's decoding row, the decoder of its model) directly, so
they live in the engine's package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from inference.engine import codec
from inference.engine.decoding import DecodingRow, MusicGenDecoder
from inference.engine.musicgen_engine import EngineJob, MusicGenEngine, _PreparedMusic
from inference.request import GenerationRequest

# Window and hop of the spectrograms compared (32 kHz audio: 64 ms windows).
SPECTRUM_WINDOW = 2048
SPECTRUM_HOP = 512


def prepared_row(
    engine: MusicGenEngine, request: GenerationRequest, model_source: str | None = None
) -> _PreparedMusic:
    """The engine's decoding row of a request (one window: at most the model's 30 s), to be decoded
    here rather than finished by the engine."""
    prepared = engine._prepare_music(EngineJob(request, model_source), lambda outcome: None)
    prepared.row.on_finished = None
    return prepared


def codes_and_audio(
    engine: MusicGenEngine, request: GenerationRequest, model_source: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [K, frames] on the CPU, audio [C, T] on the CPU) of one request, decoded freely by the
    engine's own decoding loop."""
    prepared = prepared_row(engine, request, model_source)
    decoder = engine._decoder_for(prepared.loaded)
    with torch.inference_mode():
        (decoded,) = decoder.decode([prepared.row])
        if isinstance(decoded, Exception):
            raise decoded
        wav = codec.decode_codes(prepared.loaded, decoded.codes)
    return decoded.codes.cpu(), wav


@dataclass(frozen=True)
class TeacherForced:
    """What an engine picks when fed another run's codes."""

    picks: torch.Tensor  # [K, frames] on the CPU: the guided argmax at each code's position
    finite: bool  # every logit (conditional and unconditional) was finite
    wav: torch.Tensor  # [C, T] on the CPU: the audio of `picks`


def teacher_forced(
    engine: MusicGenEngine,
    request: GenerationRequest,
    codes: torch.Tensor,
    model_source: str | None = None,
) -> TeacherForced:
    """The codes `engine` picks for `request` (guided argmax, whatever its sampling) when fed `codes`
    [K, frames] rather than its own picks, step by step through its decoder as served (its pass, its
    cache, its compiled step), and the audio of those picks."""
    prepared = prepared_row(engine, request, model_source)
    decoder = engine._decoder_for(prepared.loaded)
    with torch.inference_mode():
        picks, finite = _guided_argmax(decoder, prepared.row, codes)
        wav = codec.decode_codes(prepared.loaded, picks.to(prepared.loaded.device))
    return TeacherForced(picks=picks.cpu(), finite=finite, wav=wav)


def _guided_argmax(
    decoder: MusicGenDecoder, row: DecodingRow, codes: torch.Tensor
) -> tuple[torch.Tensor, bool]:
    """Argmax of the guided logits at every position of `codes` (fed, not picked), and whether every
    logit was finite. Called as the decoding loop calls the decoder (`MusicGenDecoder._step`)."""
    device = row.conditioning.states.device
    full, predicted = _delayed_sequence(decoder, codes.to(device))
    conditioning, masks = decoder._batched_conditioning([row], device)
    guided = row.sampling.needs_unconditional
    rows = 2 if guided else 1
    prefix = int(row.conditioning.states.shape[0]) if row.conditioning.is_prefix else 0
    cache: Any = None
    if decoder.cache_factory is not None:
        cache = decoder.cache_factory(rows, full.shape[-1] + prefix)
    # transformers' pass reads the text's states on every step; ours (and a prefix) on the first only.
    states_every_step = masks is not None and not decoder.can_join
    finite = True
    picks = []
    for position in range(full.shape[-1] - 1):
        column = full[:, position : position + 1]
        output = decoder.forward(
            input_ids=torch.cat([column] * rows),
            encoder_hidden_states=conditioning if (position == 0 or states_every_step) else None,
            encoder_attention_mask=masks,
            cache=cache,
            use_cache=True,
        )
        cache = output.cache
        logits = output.logits[:, -1, :].float().view(rows, decoder.num_codebooks, -1)
        finite = finite and bool(torch.isfinite(logits).all())
        scores = logits[0] if not guided else logits[1] + row.sampling.guidance * (logits[0] - logits[1])
        picks.append(scores.argmax(-1))
    # Position j predicts position j + 1: keep the positions the pattern leaves to the model.
    chosen = torch.stack(picks, dim=-1)[predicted[:, 1:]]
    return chosen.view(codes.shape), finite


def _delayed_sequence(decoder: MusicGenDecoder, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`codes` [K, frames] laid out as the decoder reads them (the start code, then MusicGen's delay
    pattern: codebook k lags by its delay), and where the layout has model-picked codes."""
    start = torch.full((codes.shape[0], 1), decoder.start_id, dtype=torch.long, device=codes.device)
    delay_steps = _delay_steps(decoder, codes)
    _, pattern = decoder.decoder.build_delay_pattern_mask(
        start, decoder.start_id, max_length=1 + codes.shape[-1] + delay_steps
    )
    predicted = pattern == -1
    if not bool((predicted.sum(-1) == codes.shape[-1]).all()):
        raise ValueError("the delay pattern does not hold these codes")
    full = pattern.clone()
    full[predicted] = codes.flatten()  # row by row, in order: codebook k's frames where it lags
    return full, predicted


def _delay_steps(decoder: MusicGenDecoder, codes: torch.Tensor) -> int:
    """Steps the delay pattern adds: codebooks per channel - 1 (a stereo decoder interleaves two)."""
    channels = int(getattr(decoder.decoder.config, "audio_channels", 1))
    return codes.shape[0] // channels - 1


def spectral_difference_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean |difference| of the log-magnitude STFTs (dB) of two clips [C, T] (their mono mixes, over
    the shorter one's length)."""
    window = torch.hann_window(SPECTRUM_WINDOW)

    def spectrum(wav: torch.Tensor) -> torch.Tensor:
        magnitude = torch.stft(
            wav.float().cpu().mean(0), SPECTRUM_WINDOW, SPECTRUM_HOP, window=window, return_complex=True
        ).abs()
        return 20 * torch.log10(magnitude + 1e-5)

    length = min(a.shape[-1], b.shape[-1])
    return float((spectrum(a[..., :length]) - spectrum(b[..., :length])).abs().mean())
