"""Audio editing the bot does itself (no torch): continuing a clip and stitching the whole piece.

A continuation job gives the model only the tail of the source (shorter than the model's 30 s
window; new seconds past the window are made window by window) and gets back that tail, re-decoded
by EnCodec, followed by the new seconds, normalized as a whole. The piece
a member hears is the full original followed by the new seconds only, so:

- the tail is a whole number of EnCodec frames (20 ms at 32 kHz): the model's output then lines up
  sample for sample with the original's last seconds, and the new seconds start exactly at its end;
- the new seconds are brought to the original's level by comparing the re-decoded tail with the
  original tail as the model heard it: channel by channel for a stereo model given a stereo clip,
  else both mixed down to mono (the same music, so their RMS ratio is the gain the job's
  normalization applied, one gain for every channel);
- the original is kept as it was, in its own channels (a stereo clip stays stereo; a mono model's
  new seconds go to both channels, a stereo model's keep their own two, and a mono clip continued
  by a stereo model is put on both channels), apart from a crossfade of at most 20 ms into the
  re-decoded tail just before the join, channel by channel, so there is no click.

Memory: a clip may be 10 minutes of stereo. Its length is counted as ffmpeg streams it past; the
piece is written by ffmpeg (the whole original, as a 16-bit WAV on disk) and only its last seconds
and the model's output (the tail and the new seconds: up to `[limits] max_duration_s` and 30 s
more) are ever in the bot's memory, where the crossfade and the new seconds are computed and written
into the file. Decodes take one of the bot's decode slots (`bot.audio.files.decode_slot`), so a
burst of requests cannot add up.

Everything here blocks (ffmpeg child processes, numpy): call it with `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bot.audio.files import decode_slot
from inference.media.ffmpeg import (
    WavLayout,
    configure_pydub,
    count_audio_frames,
    decode_audio_file,
    decode_to_wav,
    encode_mp3,
)
from inference.request import RequestError
from inference.windows import RELEASED_MODEL_WINDOW_S

__all__ = [
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "ContextWindow",
    "FittedFile",
    "Join",
    "StitchedPiece",
    "clip_channels",
    "clip_seconds",
    "context_window",
    "decode_clip",
    "encode_to_fit",
    "join_continuation",
    "level_match_gain",
    "mp3_path_for",
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


def context_window(source_seconds: float, context_s: float) -> ContextWindow:
    """The last `context_s` seconds of the source (all of it when shorter), in whole frames.

    The tail is the first window's prompt (`[limits] continuation_context_s` keeps it shorter than
    the model's 30 s); new seconds past the window are made window by window. It is cut to whole
    20 ms EnCodec frames so the model's output lines up with the original sample for sample.
    """
    source_samples = round(source_seconds * SAMPLE_RATE)
    wanted_s = min(context_s, source_samples / SAMPLE_RATE)
    frames = math.floor(wanted_s * FRAME_RATE + 1e-9)
    if frames < 1:
        raise RequestError("That clip is too short to continue (it needs at least 20 ms of audio).")
    context_samples = frames * FRAME_SAMPLES
    start_sample = source_samples - context_samples
    return ContextWindow(
        start_s=start_sample / SAMPLE_RATE,
        seconds=context_samples / SAMPLE_RATE,
        source_seconds=source_samples / SAMPLE_RATE,
    )


def decode_clip(path: str | Path, *, channels: int, timeout_s: float, max_seconds: float) -> np.ndarray:
    """Any audio file as float32 [samples, channels] at 32 kHz, mixed like the model's input is
    (mono = the mean of both channels). For short files and checks: it holds every sample."""
    with decode_slot():
        samples = decode_audio_file(
            path, sample_rate=SAMPLE_RATE, timeout_s=timeout_s, max_seconds=max_seconds
        )
    if channels == 1 and samples.shape[1] > 1:
        return samples.mean(axis=1, keepdims=True, dtype=np.float32)
    return _to_channels(samples, channels)


def clip_channels(path: str | Path, *, timeout_s: float) -> int:
    """The channels of an audio file as the bot posts it: 1 (mono) or 2 (stereo, or a wider clip
    folded to stereo). Only its first 20 ms are decoded: without a decode slot, since it holds no
    more than that, and a member's form waits for it."""
    samples = decode_audio_file(
        path, sample_rate=SAMPLE_RATE, timeout_s=timeout_s, end_s=FRAME_SAMPLES / SAMPLE_RATE
    )
    return int(samples.shape[1])


def clip_seconds(path: str | Path, *, timeout_s: float, max_seconds: float) -> float:
    """The exact length of a clip once decoded at 32 kHz, as the worker will decode it.

    (A probe at a lower rate can be a few samples off, and the context window must end exactly
    where the clip does to be whole frames.) The samples are counted as they stream past, never
    kept: a 10-minute clip costs no memory here.
    """
    with decode_slot():
        frames = count_audio_frames(
            path, sample_rate=SAMPLE_RATE, timeout_s=timeout_s, max_seconds=max_seconds
        )
    return frames / SAMPLE_RATE


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0


def _mixdown(samples: np.ndarray) -> np.ndarray:
    """[T, C] to [T]: the mean of the channels, the mono the model hears."""
    return samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]


def _to_channels(samples: np.ndarray, channels: int) -> np.ndarray:
    """A mono [T, 1] signal on every one of `channels` unchanged (wider audio is already there)."""
    return samples if samples.shape[1] == channels else np.repeat(samples[:, :1], channels, axis=1)


def level_match_gain(original_tail: np.ndarray, redecoded_tail: np.ndarray) -> float:
    """The gain that brings the model's output back to the original's level (1 if either is silent).

    Both are compared as the model heard the original ([T] or [T, C]). With the same channels on
    both sides (a stereo model given a stereo clip), each channel is compared with its own: their
    mixdown could cancel out (a side out of phase with the other) where the channels do not.
    Otherwise (a mono model given a stereo clip) as mono mixdowns: the model was given the
    mixdown. One gain for every channel either way: the job's normalization scaled them all alike,
    so the new seconds keep the balance the model gave them.
    """
    if (
        original_tail.ndim == 2
        and redecoded_tail.ndim == 2
        and original_tail.shape[1] == redecoded_tail.shape[1]
    ):
        original, redecoded = original_tail, redecoded_tail
    else:
        original = _mixdown(original_tail) if original_tail.ndim == 2 else original_tail
        redecoded = _mixdown(redecoded_tail) if redecoded_tail.ndim == 2 else redecoded_tail
    original_rms, redecoded_rms = _rms(original), _rms(redecoded)
    if original_rms < _SILENT_RMS or redecoded_rms < _SILENT_RMS:
        return 1.0
    return original_rms / redecoded_rms


@dataclass(frozen=True)
class Join:
    """How the new seconds join the original: its last frames after the crossfade, then the new part.

    Both have the piece's channels (the wider of the original's and the model's). The piece is the
    original without its last `len(faded_tail)` frames, then `faded_tail`, then `new_part`.
    """

    faded_tail: np.ndarray
    new_part: np.ndarray
    gain: float


def join_continuation(
    original_tail: np.ndarray, generated: np.ndarray, new_samples: int, *, context_samples: int | None = None
) -> Join:
    """The crossfaded end of the original and the new seconds at its level.

    `original_tail`: the original's last frames [T, C] (its last 30 s are always enough: all of
    them when shorter); `generated`: the model's output (the re-decoded tail, then the new samples).
    The last ≤ 20 ms of the original crossfade linearly into the re-decoded tail, which is the same
    music, so the join has neither a click nor a jump in loudness. `context_samples`: how much of
    the original's end the model was given, when it was not a whole number of frames (EnCodec then
    decoded padding after it, which lies between the two parts and is left out); by default all of
    `generated` before the new samples.
    """
    if not 0 < new_samples <= generated.shape[0]:
        raise ValueError(f"new_samples {new_samples} is not within the generated {generated.shape[0]}")
    channels = max(original_tail.shape[1], generated.shape[1])
    decoded_context = generated.shape[0] - new_samples
    # The original's last sample lines up with the end of the context in the model's output.
    aligned_end = decoded_context if context_samples is None else min(context_samples, decoded_context)
    tail_samples = min(aligned_end, original_tail.shape[0])
    redecoded_tail = generated[aligned_end - tail_samples : aligned_end]
    gain = level_match_gain(original_tail[original_tail.shape[0] - tail_samples :], redecoded_tail)
    new_part = np.clip(generated[generated.shape[0] - new_samples :] * gain, -1.0, 1.0)
    fade = min(round(CROSSFADE_S * SAMPLE_RATE), tail_samples)
    ramp = np.linspace(0.0, 1.0, fade + 2, dtype=np.float32)[1:-1, None]
    into = np.clip(redecoded_tail[tail_samples - fade :] * gain, -1.0, 1.0)
    fading = _to_channels(original_tail[original_tail.shape[0] - fade :], channels)
    faded_tail = fading * (1.0 - ramp) + _to_channels(into, channels) * ramp
    return Join(
        faded_tail=faded_tail.astype(np.float32),
        new_part=_to_channels(new_part, channels).astype(np.float32),
        gain=gain,
    )


def stitch_continuation(
    original: np.ndarray, generated: np.ndarray, new_samples: int, *, context_samples: int | None = None
) -> np.ndarray:
    """The whole piece in memory: `original` [T, C], then the last `new_samples` of `generated` at the
    original's level, crossfaded as `join_continuation` says (for short clips and checks; the bot
    writes pieces with `stitch_files`, which never holds a whole original)."""
    join = join_continuation(original, generated, new_samples, context_samples=context_samples)
    channels = join.new_part.shape[1]
    kept = _to_channels(original[: original.shape[0] - join.faded_tail.shape[0]], channels)
    return np.concatenate([kept, join.faded_tail, join.new_part]).astype(np.float32)


def _pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples as 16-bit PCM, rounded as ffmpeg rounds (x 32768, clipped), so what we write
    beside ffmpeg's own samples is on the same scale."""
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")


def write_wav(samples: np.ndarray, path: str | Path) -> Path:
    """16-bit PCM WAV at 32 kHz (pydub writes WAV itself, without ffmpeg)."""
    configure_pydub()
    from pydub import AudioSegment

    AudioSegment(
        _pcm16(samples).tobytes(), frame_rate=SAMPLE_RATE, sample_width=2, channels=samples.shape[1]
    ).export(str(path), format="wav")
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


@contextlib.contextmanager
def _draft_beside(path: Path, suffix: str) -> Iterator[Path]:
    """A new file of our own next to `path` (same folder, so renaming it onto `path` is atomic);
    removed afterwards unless it was renamed away."""
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f"{suffix}.part")
    os.close(descriptor)
    draft = Path(name)
    try:
        yield draft
    finally:
        draft.unlink(missing_ok=True)


def _read_frames(wav: Path, layout: WavLayout, first: int, count: int) -> np.ndarray:
    """Frames [first, first + count) of a 16-bit WAV as float32 [count, channels]."""
    with wav.open("rb") as file:
        file.seek(layout.data_offset + first * layout.frame_bytes)
        data = file.read(count * layout.frame_bytes)
    return (np.frombuffer(data, dtype="<i2").reshape(-1, layout.channels) / np.float32(32768.0)).astype(
        np.float32
    )


def _finish_piece(wav: Path, layout: WavLayout, join: Join) -> int:
    """Write the crossfade over the original's last frames and append the new part; fix the header.

    Returns the piece's frames. The original itself is never read whole: only the seek positions
    of the fade and of the end are touched.
    """
    fade = join.faded_tail.shape[0]
    frames = layout.frames + join.new_part.shape[0]
    data_bytes = frames * layout.frame_bytes
    with wav.open("r+b") as file:
        file.seek(layout.data_offset + (layout.frames - fade) * layout.frame_bytes)
        file.write(_pcm16(join.faded_tail).tobytes())
        file.write(_pcm16(join.new_part).tobytes())
        file.truncate(layout.data_offset + data_bytes)
        file.seek(layout.data_size_field_offset)
        file.write(data_bytes.to_bytes(4, "little"))
        file.seek(4)
        file.write((layout.data_offset + data_bytes - 8).to_bytes(4, "little"))
    return frames


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
    """Write the whole piece (the original, then the new seconds) and the new part alone as WAV.

    ffmpeg writes the original into the piece file at 32 kHz in its own channels (mono or stereo;
    wider clips folded to stereo), then its last seconds are read back to level-match and
    crossfade, and the new part is written after them: the bot holds the model's output and the
    original's tail, never the whole original. The piece appears at `piece_path` only once whole
    (written beside it, then renamed). `context_start_s`: where the model's context began in the
    source (the request's continuation_start), so the parts line up even if the context was not
    whole frames.
    """
    piece_path = Path(piece_path)
    with decode_slot():
        generated = decode_audio_file(
            # The model's output: its context (shorter than its window) and the new seconds.
            generated_path,
            sample_rate=SAMPLE_RATE,
            timeout_s=timeout_s,
            max_seconds=RELEASED_MODEL_WINDOW_S + new_seconds + 1,
        )
        with _draft_beside(piece_path, ".wav") as draft:
            layout = decode_to_wav(
                original_path, draft, sample_rate=SAMPLE_RATE, timeout_s=timeout_s, max_seconds=max_seconds
            )
            if layout.channels < generated.shape[1]:
                # A mono clip continued by a stereo model: the clip goes to both channels as it was.
                with _draft_beside(piece_path, ".wav") as widened:
                    layout = decode_to_wav(
                        draft,
                        widened,
                        sample_rate=SAMPLE_RATE,
                        timeout_s=timeout_s,
                        max_seconds=max_seconds,
                        mono_to_stereo=True,
                    )
                    os.replace(widened, draft)
            new_samples = min(new_seconds * SAMPLE_RATE, generated.shape[0])
            context_samples = (
                None if context_start_s is None else layout.frames - round(context_start_s * SAMPLE_RATE)
            )
            tail_frames = min(layout.frames, generated.shape[0])
            original_tail = _read_frames(draft, layout, layout.frames - tail_frames, tail_frames)
            join = join_continuation(original_tail, generated, new_samples, context_samples=context_samples)
            _finish_piece(draft, layout, join)
            os.replace(draft, piece_path)
    new_part_path = write_wav(join.new_part, new_part_path_for(piece_path))
    return StitchedPiece(
        piece_path=piece_path,
        new_part_path=new_part_path,
        original_seconds=layout.frames / SAMPLE_RATE,
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


def mp3_path_for(path: str | Path, bitrate_kbps: int) -> Path:
    """Where `encode_to_fit` leaves the MP3 of `path` at a bitrate: one name per bitrate, so encodes
    of the same file for different limits never share a file, and at most one per bitrate is left
    for retention to sweep."""
    path = Path(path)
    return path.with_name(f"{path.stem}-{bitrate_kbps}k.mp3")


def encode_to_fit(path: str | Path, limit_bytes: int) -> FittedFile | None:
    """The WAV at `path` itself if it fits `limit_bytes`, else the best MP3 that fits, else None.

    The bitrate is estimated from the length (the MP3 is constant bitrate) and checked on the
    file written, stepping down while the file is still too large. Each try writes a temporary
    file of its own; the one that fits is renamed (atomically) to `mp3_path_for(path, bitrate)`,
    so two calls at once (a jam export beside a turn's post) each measure and return their own
    file. Another call that fits the same bitrate replaces that name with the same encoding, which
    a reader still holding the file it opened never notices. The MP3s stay beside the WAV for the
    storage sweep, like every output.
    """
    path = Path(path)
    if path.stat().st_size <= limit_bytes:
        return FittedFile(path, path.suffix.lstrip(".").lower() or "wav")
    seconds = max(wav_seconds(path), 1e-3)
    # 3 % headroom for frame headers and the ID3 tag.
    affordable_kbps = limit_bytes * 8 * 0.97 / seconds / 1000
    for kbps in (rate for rate in MP3_BITRATES_KBPS if rate <= affordable_kbps):
        with _draft_beside(path, ".mp3") as draft:
            encode_mp3(draft, wav_file=path, bitrate=f"{kbps}k")
            if draft.stat().st_size <= limit_bytes:
                fitted = mp3_path_for(path, kbps)
                os.replace(draft, fitted)
                return FittedFile(fitted, "mp3", kbps)
    return None
