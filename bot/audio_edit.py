"""Audio editing the bot does itself (no torch): continuing a clip and stitching the whole piece.

A continuation job gives the model only the tail of the source (MusicGen sees at most 30 s) and gets
back that tail, re-decoded by EnCodec, followed by the new seconds, normalized as a whole. The piece
a member hears is the full original followed by the new seconds only, so:

- the tail is a whole number of EnCodec frames (20 ms at 32 kHz): the model's output then lines up
  sample for sample with the original's last seconds, and the new seconds start exactly at its end;
- the new seconds are brought to the original's level by comparing the re-decoded tail with the
  original tail (the same music, so their RMS ratio is the gain the job's normalization applied);
- the original is kept as it was, apart from a crossfade of at most 20 ms into the re-decoded tail
  just before the join, so there is no click.

Everything here blocks (ffmpeg child processes, numpy): call it with `asyncio.to_thread`.
"""

from __future__ import annotations

import math
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bot.audio_files import encode_mp3
from inference.ffmpeg import configure_pydub, decode_audio_file
from inference.request import MAX_DURATION_S, RequestError

__all__ = [
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "ContextWindow",
    "FittedFile",
    "StitchedPiece",
    "clip_seconds",
    "context_window",
    "decode_clip",
    "encode_to_fit",
    "level_match_gain",
    "stitch_continuation",
    "stitch_files",
    "wav_seconds",
    "write_wav",
]

SAMPLE_RATE = 32_000  # MusicGen's EnCodec rate: every piece is posted at this rate
FRAME_RATE = 50  # EnCodec frames per second
FRAME_SAMPLES = SAMPLE_RATE // FRAME_RATE  # 640 samples = 20 ms
CROSSFADE_S = 0.02
# Below this RMS a stretch is near-silent: its level says nothing about the gain.
_SILENT_RMS = 1e-4
# MP3 bitrates tried when a WAV is over the upload limit, best first (kbit/s).
MP3_BITRATES_KBPS = (320, 256, 192, 160, 128, 96, 64, 48, 32)


@dataclass(frozen=True)
class ContextWindow:
    """The tail of a source clip the model continues from, in seconds of the 32 kHz clip."""

    start_s: float
    seconds: float
    source_seconds: float


def context_window(source_seconds: float, new_seconds: int, context_s: float) -> ContextWindow:
    """The last `context_s` seconds of the source (fewer when the new ones need the room), whole frames.

    The model's 30 s hold the tail and the new seconds together; the tail is cut to whole 20 ms
    EnCodec frames so the model's output lines up with the original sample for sample.
    """
    source_samples = round(source_seconds * SAMPLE_RATE)
    wanted_s = min(context_s, MAX_DURATION_S - new_seconds, source_samples / SAMPLE_RATE)
    frames = math.floor(wanted_s * FRAME_RATE + 1e-9)
    if frames < 1:
        raise RequestError(
            "That clip is too short to continue (it needs at least 20 ms of audio), "
            f"or {new_seconds} s leave no room for it in the model's {MAX_DURATION_S} s."
        )
    context_samples = frames * FRAME_SAMPLES
    start_sample = source_samples - context_samples
    return ContextWindow(
        start_s=start_sample / SAMPLE_RATE,
        seconds=context_samples / SAMPLE_RATE,
        source_seconds=source_samples / SAMPLE_RATE,
    )


def decode_clip(path: str | Path, *, channels: int, timeout_s: float, max_seconds: float) -> np.ndarray:
    """Any audio file as float32 [samples, channels] at 32 kHz, mixed like the model's input is."""
    samples = decode_audio_file(path, sample_rate=SAMPLE_RATE, timeout_s=timeout_s, max_seconds=max_seconds)
    if samples.shape[1] == channels:
        return samples
    if channels == 1:
        return samples.mean(axis=1, keepdims=True, dtype=np.float32)
    return np.repeat(samples[:, :1], channels, axis=1)


def clip_seconds(path: str | Path, *, timeout_s: float, max_seconds: float) -> float:
    """The exact length of a clip once decoded at 32 kHz, as the worker will decode it.

    (A probe at a lower rate can be a few samples off, and the context window must end exactly
    where the clip does to be whole frames.)
    """
    samples = decode_audio_file(path, sample_rate=SAMPLE_RATE, timeout_s=timeout_s, max_seconds=max_seconds)
    return samples.shape[0] / SAMPLE_RATE


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0


def level_match_gain(original_tail: np.ndarray, redecoded_tail: np.ndarray) -> float:
    """The gain that brings the model's output back to the original's level (1 if either is silent)."""
    original_rms, redecoded_rms = _rms(original_tail), _rms(redecoded_tail)
    if original_rms < _SILENT_RMS or redecoded_rms < _SILENT_RMS:
        return 1.0
    return original_rms / redecoded_rms


def stitch_continuation(
    original: np.ndarray, generated: np.ndarray, new_samples: int, *, context_samples: int | None = None
) -> np.ndarray:
    """The whole piece: `original` [T, C], then the last `new_samples` of `generated` at the original's level.

    `generated` is the model's output (the re-decoded tail, then the new samples). The last
    ≤ 20 ms of the original crossfade linearly into the re-decoded tail, which is the same music,
    so the join has neither a click nor a jump in loudness; the rest of the original is untouched.
    `context_samples`: how much of the original's end the model was given, when it was not a whole
    number of frames (EnCodec then decoded padding after it, which lies between the two parts
    and is left out); by default all of `generated` before the new samples.
    """
    if generated.shape[1] != original.shape[1]:
        raise ValueError("the original and the generated audio must have the same channels")
    if not 0 < new_samples <= generated.shape[0]:
        raise ValueError(f"new_samples {new_samples} is not within the generated {generated.shape[0]}")
    decoded_context = generated.shape[0] - new_samples
    # The original's last sample lines up with the end of the context in the model's output.
    aligned_end = decoded_context if context_samples is None else min(context_samples, decoded_context)
    tail_samples = min(aligned_end, original.shape[0])
    redecoded_tail = generated[aligned_end - tail_samples : aligned_end]
    gain = level_match_gain(original[original.shape[0] - tail_samples :], redecoded_tail)
    new_part = np.clip(generated[generated.shape[0] - new_samples :] * gain, -1.0, 1.0)
    fade = min(round(CROSSFADE_S * SAMPLE_RATE), tail_samples)
    piece = np.concatenate([original, new_part]).astype(np.float32)
    if fade > 0:
        join = original.shape[0]
        ramp = np.linspace(0.0, 1.0, fade + 2, dtype=np.float32)[1:-1, None]
        into = np.clip(redecoded_tail[tail_samples - fade :] * gain, -1.0, 1.0)
        piece[join - fade : join] = original[join - fade :] * (1.0 - ramp) + into * ramp
    return piece


def write_wav(samples: np.ndarray, path: str | Path) -> Path:
    """16-bit PCM WAV at 32 kHz (pydub writes WAV itself, without ffmpeg)."""
    configure_pydub()
    from pydub import AudioSegment

    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
    AudioSegment(pcm.tobytes(), frame_rate=SAMPLE_RATE, sample_width=2, channels=samples.shape[1]).export(
        str(path), format="wav"
    )
    return Path(path)


@dataclass(frozen=True)
class StitchedPiece:
    """The files of a continuation: the whole piece, and the new seconds alone (the fallback)."""

    piece_path: Path
    new_part_path: Path
    original_seconds: float
    new_seconds: float

    @property
    def seconds(self) -> float:
        return self.original_seconds + self.new_seconds


def new_part_path_for(piece_path: str | Path) -> Path:
    """Where `stitch_files` keeps the new seconds alone, next to the whole piece."""
    path = Path(piece_path)
    return path.with_name(f"{path.stem.removesuffix('-piece')}-new.wav")


def stitch_files(
    original_path: str | Path,
    generated_path: str | Path,
    piece_path: str | Path,
    *,
    new_seconds: int,
    context_start_s: float | None = None,
    timeout_s: float,
    max_seconds: float,
) -> StitchedPiece:
    """Decode the source and the model's output, stitch them, and write the piece and the new part as WAV.

    `context_start_s`: where the model's context began in the source (the request's
    continuation_start), so the parts line up even if the context was not whole frames.
    """
    generated = decode_audio_file(
        generated_path, sample_rate=SAMPLE_RATE, timeout_s=timeout_s, max_seconds=MAX_DURATION_S + 1
    )
    original = decode_clip(
        original_path, channels=generated.shape[1], timeout_s=timeout_s, max_seconds=max_seconds
    )
    new_samples = min(new_seconds * SAMPLE_RATE, generated.shape[0])
    context_samples = (
        None if context_start_s is None else original.shape[0] - round(context_start_s * SAMPLE_RATE)
    )
    piece = stitch_continuation(original, generated, new_samples, context_samples=context_samples)
    piece_path = write_wav(piece, piece_path)
    new_part_path = write_wav(piece[original.shape[0] :], new_part_path_for(piece_path))
    return StitchedPiece(
        piece_path=piece_path,
        new_part_path=new_part_path,
        original_seconds=original.shape[0] / SAMPLE_RATE,
        new_seconds=new_samples / SAMPLE_RATE,
    )


@dataclass(frozen=True)
class FittedFile:
    """A file that fits an upload limit, its format, and the MP3 bitrate used (None for the file as is)."""

    path: Path
    format: str
    bitrate_kbps: int | None = None


def wav_seconds(path: str | Path) -> float:
    """Length of a WAV file, from its header."""
    with wave.open(str(path)) as reader:
        return reader.getnframes() / reader.getframerate()


def encode_to_fit(path: str | Path, limit_bytes: int) -> FittedFile | None:
    """The WAV at `path` itself if it fits `limit_bytes`, else the best MP3 that fits, else None.

    The bitrate is estimated from the length (the MP3 is constant bitrate) and checked on the
    file written, stepping down while the file is still too large.
    """
    path = Path(path)
    if path.stat().st_size <= limit_bytes:
        return FittedFile(path, path.suffix.lstrip(".").lower() or "wav")
    seconds = max(wav_seconds(path), 1e-3)
    # 3 % headroom for frame headers and the ID3 tag.
    affordable_kbps = limit_bytes * 8 * 0.97 / seconds / 1000
    mp3_path = path.with_suffix(".mp3")
    for kbps in (rate for rate in MP3_BITRATES_KBPS if rate <= affordable_kbps):
        encode_mp3(path, mp3_path, bitrate=f"{kbps}k")
        if mp3_path.stat().st_size <= limit_bytes:
            return FittedFile(mp3_path, "mp3", kbps)
    mp3_path.unlink(missing_ok=True)
    return None
