"""Audio in and out for the engine: load uploads, normalize generated audio, write wav/mp3.

Loading decodes in a child ffmpeg process (see `inference.media.ffmpeg`: the bundled imageio-ffmpeg
binary unless `[engine] ffmpeg` names another, see `use_ffmpeg`), so a hostile upload can crash or
stall only that process. Normalization follows audiocraft's `audio_utils.normalize_audio` as
`audio_write` uses it and is a pure function on tensors.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pyloudnorm
import soundfile
import torch

from inference.engine.generated_audio import GeneratedAudio
from inference.media.ffmpeg import (
    DEFAULT_MAX_SECONDS,
    AudioDecodeError,
    configure_pydub,
    decode_audio_file,
    encode_mp3,
    ffmpeg_executable,
    probe_duration,
    use_ffmpeg,
)
from inference.request import (
    NORMALIZATION_STRATEGIES,
    OUTPUT_FORMATS,
    GenerationRequest,
    RequestError,
)
from inference.windows import RELEASED_MODEL_WINDOW_S

__all__ = [
    "AudioDecodeError",
    "configure_pydub",
    "ffmpeg_executable",
    "load_audio",
    "normalize_audio",
    "probe_duration",
    "use_ffmpeg",
    "write_audio",
    "write_generated",
]

# audiocraft's audio_write defaults: peak/clip headroom 1 dB, rms headroom 18 dB, loudness -14 LUFS.
PEAK_CLIP_HEADROOM_DB = 1.0
RMS_HEADROOM_DB = 18.0
LOUDNESS_TARGET_LUFS = -14.0
# Below this RMS, loudness normalization leaves the signal alone instead of boosting noise.
LOUDNESS_ENERGY_FLOOR = 2e-3
MP3_BITRATE = "320k"  # audiocraft's audio_write default, and the product's
# The input audio a request uses, counted from continuation_start (see `load_audio`): a released
# model's window. A melody followed past the window is read further (the engine asks for its span).
INPUT_WINDOW_S = RELEASED_MODEL_WINDOW_S
# BS.1770 gates 400 ms blocks; pyloudnorm refuses shorter signals.
_LOUDNESS_BLOCK_S = 0.4


# -- loading -----------------------------------------------------------------------------------


def load_audio(
    path: str | os.PathLike[str],
    *,
    sample_rate: int,
    channels: int,
    start_s: float = 0.0,
    end_s: float | None = None,
    timeout_s: float = 30.0,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    window_s: float = INPUT_WINDOW_S,
) -> torch.Tensor:
    """Decode an upload of any common format into float32 [channels, samples] at `sample_rate`.

    The audio is resampled by ffmpeg, mixed like audiocraft's `convert_audio_channels` (mono = mean
    of the channels, mono to stereo = the same signal on both), then trimmed to
    `[round(start_s*sr) : round(end_s*sr)]` in the output rate; `end_s=None` means the end of the
    clip. At most `window_s` seconds from `start_s` are decoded (a continuation's clip must be
    shorter than the model's 30 s window, encode-decode returns at most 30 s, and a melody is read
    for as long as the piece follows it). Raises AudioDecodeError (a RequestError) for
    unreadable, empty, too slow or too long audio, and RequestError for a trim window outside the clip.
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    if not math.isfinite(start_s) or start_s < 0:
        raise RequestError(f"The start time must be 0 s or later, not {start_s:g} s.")
    if end_s is not None and not math.isfinite(end_s):
        raise RequestError(f"The end time must be a number of seconds, not {end_s:g}.")
    if end_s is not None and end_s <= start_s:
        raise RequestError(f"The end time ({end_s:g} s) must come after the start time ({start_s:g} s).")
    window_end_s = start_s + window_s
    decoded = decode_audio_file(
        path,
        sample_rate=sample_rate,
        timeout_s=timeout_s,
        max_seconds=max_seconds,
        start_s=start_s,
        end_s=window_end_s if end_s is None else min(end_s, window_end_s),
    )
    return _convert_channels(torch.from_numpy(decoded.T.copy()), channels).contiguous()


def _convert_channels(wav: torch.Tensor, channels: int) -> torch.Tensor:
    """audiocraft's `convert_audio_channels` rules for [C, T] audio with C in (1, 2)."""
    source_channels = wav.shape[0]
    if source_channels == channels:
        return wav
    if channels == 1:
        return wav.mean(dim=0, keepdim=True)
    if source_channels == 1:
        return wav.expand(channels, -1)
    return wav[:channels]


# -- normalization -----------------------------------------------------------------------------


def normalize_audio(wav: torch.Tensor, strategy: str, sample_rate: int) -> torch.Tensor:
    """Normalize [C, T] audio the way audiocraft's `audio_write` does before saving.

    - peak: scale so the largest |sample| is -1 dBFS;
    - clip: clamp to ±10**(-1/20);
    - rms: scale so the RMS of the channel mean is -18 dBFS, then clamp to ±1;
    - loudness: scale to -14 LUFS (BS.1770-4, pyloudnorm), then clamp to ±1; audio quieter than
      an RMS of 2e-3, or with no measurable loudness, is only clamped.
    Silent input stays silent (audiocraft would divide by zero). Returns a new tensor.
    """
    if strategy not in NORMALIZATION_STRATEGIES:
        raise ValueError(f"Unknown normalization strategy {strategy!r}")
    if wav.dim() != 2:
        raise ValueError(f"Expected audio shaped [channels, samples], got {tuple(wav.shape)}")
    if wav.numel() == 0:
        return wav.clone()
    scale_peak = 10 ** (-PEAK_CLIP_HEADROOM_DB / 20)
    if strategy == "clip":
        return wav.clamp(-scale_peak, scale_peak)
    if strategy == "peak":
        peak = wav.abs().max()
        return wav * (scale_peak / peak) if peak > 0 else wav.clone()
    if strategy == "rms":
        mono_rms = wav.mean(dim=0).pow(2).mean().sqrt()
        scaled = wav * (10 ** (-RMS_HEADROOM_DB / 20) / mono_rms) if mono_rms > 0 else wav
        return scaled.clamp(-1.0, 1.0)
    return _normalize_loudness(wav, sample_rate).clamp(-1.0, 1.0)


def measure_loudness(wav: torch.Tensor, sample_rate: int) -> float:
    """Integrated loudness of [C, T] audio in LUFS (ITU-R BS.1770-4; -inf when fully gated)."""
    samples = wav.detach().to(torch.float64).cpu().numpy().T
    duration_s = samples.shape[0] / sample_rate
    # Clips shorter than one gating block are measured as a single block.
    block_size_s = min(_LOUDNESS_BLOCK_S, duration_s)
    # pyloudnorm refuses audio where samples < block_size * rate, and n / rate * rate can come out
    # one ulp above n (2007 samples at 32 kHz): step the block just below the clip's length.
    while block_size_s * sample_rate > samples.shape[0]:
        block_size_s = math.nextafter(block_size_s, 0.0)
    meter = pyloudnorm.Meter(sample_rate, block_size=block_size_s)
    return float(meter.integrated_loudness(samples))


def _normalize_loudness(wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
    energy = wav.pow(2).mean().sqrt().item()
    if energy < LOUDNESS_ENERGY_FLOOR:
        return wav
    loudness_lufs = measure_loudness(wav, sample_rate)
    if not math.isfinite(loudness_lufs):
        # E.g. pure DC or sub-bass: the K-weighting removes it all, so there is nothing to match.
        return wav
    return wav * 10.0 ** ((LOUDNESS_TARGET_LUFS - loudness_lufs) / 20.0)


# -- writing -----------------------------------------------------------------------------------


def write_audio(
    wav: torch.Tensor, sample_rate: int, path: str | os.PathLike[str], output_format: str
) -> Path:
    """Write [C, T] float audio as 16-bit PCM wav or 320 kbps CBR mp3, and return the file's path.

    `.wav`/`.mp3` is appended to `path` unless it already ends with it; parent folders are made.
    Samples are clamped to [-1, 1] first; this does not normalize (call `normalize_audio`).
    A failed write leaves no partial file behind.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"Unknown output format {output_format!r}")
    if wav.dim() == 1:
        wav = wav[None]
    if wav.dim() != 2 or wav.shape[0] not in (1, 2):
        raise ValueError(f"Expected mono or stereo audio [channels, samples], got {tuple(wav.shape)}")
    path = Path(path)
    suffix = f".{output_format}"
    if path.suffix.lower() != suffix:
        path = path.with_name(path.name + suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = wav.detach().to(torch.float32).cpu().clamp(-1.0, 1.0).numpy().T
    try:
        if output_format == "wav":
            soundfile.write(path, _to_int16(samples), sample_rate, subtype="PCM_16", format="WAV")
        else:
            encode_mp3(path, samples=samples, sample_rate=sample_rate, bitrate=MP3_BITRATE)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def write_generated(
    generated: GeneratedAudio, request: GenerationRequest, path: str | os.PathLike[str]
) -> Path:
    """Normalise the engine's audio with `request.normalization_strategy` and write it in
    `request.output_format` to `path` (the format's extension is added when missing)."""
    normalized = normalize_audio(generated.wav, request.normalization_strategy, generated.sample_rate)
    return write_audio(normalized, generated.sample_rate, path, request.output_format)


def _to_int16(samples: np.ndarray) -> np.ndarray:
    """audiocraft's `i16_pcm`: scale by 2**15, or by 2**15 - 1 where a full-scale +1 would wrap."""
    scaled = np.round(samples * 2**15)
    if scaled.max(initial=0) >= 2**15:
        scaled = np.round(samples * (2**15 - 1))
    return scaled.astype(np.int16)
