"""Decoding uploads with the ffmpeg binary in a child process, and pointing pydub at that binary.

Torch-free on purpose: the bot (which must never import torch) can use `probe_duration`,
`decode_audio_file` and `configure_pydub` from here; `inference.engine.audio` re-exports them.

Why a child process: an upload is untrusted input. Running the decoder as a separate `ffmpeg`
process with a deadline means a decoder crash, hang or memory blow-up ends that process, never the
bot or the inference worker that asked for the audio.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import resource
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from inference.media.environment import child_environment
from inference.request import RequestError

log = logging.getLogger(__name__)

DEFAULT_MAX_SECONDS = 600.0
# Address space an ffmpeg child may map. Decoding a few minutes of audio needs well under this; a
# file built to make the decoder allocate without end hits this wall instead of the host's memory.
FFMPEG_MEMORY_LIMIT_BYTES = 2 << 30
# Decoding stops this far past the last second we need, so "longer than the limit" is detectable
# without decoding the rest of a huge file.
_DECODE_MARGIN_S = 1.0
# Demuxers an upload may use. A whitelist keeps playlist/script formats (hls, concat, ...) that can
# pull in other files out of reach of an uploaded file; audio containers and common video
# containers (a phone clip with a sound track) stay allowed.
_ALLOWED_DEMUXERS = (
    "wav,w64,mp3,ogg,flac,mov,matroska,aac,loas,aiff,caf,au,wv,ape,tta,amr,amrnb,amrwb,"
    "ac3,eac3,dts,asf,mpc,mpc8,avi,mpeg,mpegts"
)
# Sun AU is the raw-PCM container made for pipes: a fixed header that says where the samples start
# and how many channels there are, then big-endian samples. Encoding 6 = 32-bit IEEE float.
_AU_HEADER = struct.Struct(">4sIIIII")
_AU_FLOAT32 = 6
# Rate used when only counting samples: 1/8000 s resolution at 16 kB/s of pipe traffic.
_PROBE_SAMPLE_RATE = 8000
_SUPPORTED_HINT = "Try wav, mp3, ogg, opus, flac or m4a."


class AudioDecodeError(RequestError):
    """An upload that can't be used as audio (unreadable, empty, too long, too slow to decode).

    The message is shown to the person as is; `details` keeps ffmpeg's own words for the logs.
    """

    def __init__(self, message: str, *, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def bundled_ffmpeg() -> str:
    """imageio-ffmpeg's binary: the one this project is tested with, on every machine the same."""
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - imageio-ffmpeg is a hard dependency
        raise RuntimeError("No ffmpeg found: install the imageio-ffmpeg package.") from exc
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def resolve_ffmpeg_setting(setting: str) -> str | None:
    """The binary `[engine] ffmpeg` names: None for "" (the bundled one), else a path or a command
    looked up on PATH. ValueError, saying what to fix, when there is no such executable."""
    if not setting.strip():
        return None
    found = shutil.which(setting.strip())
    if found is None:
        raise ValueError(
            f"[engine] ffmpeg = {setting!r}: no such executable (give a path, a command on PATH, "
            'or "" for the bundled imageio-ffmpeg binary)'
        )
    return found


# The binary `[engine] ffmpeg` names, once `use_ffmpeg` has been told; None: the bundled one.
_configured_ffmpeg: str | None = None


def use_ffmpeg(setting: str) -> str:
    """Run every later ffmpeg of this process with the binary `[engine] ffmpeg` names ("" = bundled).

    The bot and each worker call it once at start-up with their settings. Returns the executable.
    """
    global _configured_ffmpeg
    _configured_ffmpeg = resolve_ffmpeg_setting(setting)
    return ffmpeg_executable()


def ffmpeg_executable() -> str:
    """The ffmpeg to run: the one `use_ffmpeg` was given, else imageio-ffmpeg's binary.

    Never whatever `ffmpeg` happens to be on PATH: a distribution's older ffmpeg decodes some files
    to other lengths (an AAC clip's end padding) and ignores some write errors, so results would
    depend on the host. A system binary is used only when configured.
    """
    return _configured_ffmpeg if _configured_ffmpeg is not None else bundled_ffmpeg()


# -- running ffmpeg ----------------------------------------------------------------------------


@dataclass
class _FfmpegRun:
    returncode: int
    output: bytearray
    output_bytes: int
    stderr: str
    timed_out: bool
    over_limit: bool
    # The reader had all it needed and stopped ffmpeg early: its exit status means nothing.
    stopped_early: bool = False


class _OutputSink(Protocol):
    def feed(self, chunk: bytes) -> bool:
        """Take the next bytes of ffmpeg's output; False when nothing more is needed."""


def _limit_memory(pid: int) -> None:
    """Cap the child's address space, so a file crafted to make the decoder allocate without end
    meets a failed allocation (ffmpeg exits with an error) instead of the host's OOM killer.

    Set from outside with prlimit rather than in a preexec_fn, which is unsafe in a process with
    threads (the bot decodes from worker threads). The cap binds every allocation after the first
    instants of start-up, which is all of decoding.
    """
    with contextlib.suppress(ProcessLookupError):  # already gone: nothing left to bound
        resource.prlimit(pid, resource.RLIMIT_AS, (FFMPEG_MEMORY_LIMIT_BYTES, FFMPEG_MEMORY_LIMIT_BYTES))


def _run_ffmpeg(
    args: list[str],
    *,
    timeout_s: float,
    output_limit_bytes: int,
    keep_output: bool,
    sink: _OutputSink | None = None,
) -> _FfmpegRun:
    """Run ffmpeg with `args`, reading its stdout; kill it at the deadline or past the byte limit.

    The output is kept whole (`keep_output`), or handed to `sink` chunk by chunk (which may stop
    the run once it has what it needs), or only counted.
    """
    output = bytearray()
    output_bytes = 0
    over_limit = False
    stopped_early = False
    reached_end = False
    timed_out = threading.Event()
    started = time.monotonic()
    # stderr goes to a file, not a pipe, so a chatty decoder can never block on a full pipe.
    with tempfile.TemporaryFile() as stderr_file:
        process = subprocess.Popen(
            [ffmpeg_executable(), "-nostdin", "-hide_banner", "-loglevel", "error", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            env=child_environment(),
        )
        _limit_memory(process.pid)

        def kill_at_deadline() -> None:
            timed_out.set()
            process.kill()

        deadline = threading.Timer(timeout_s, kill_at_deadline)
        deadline.daemon = True
        deadline.start()
        try:
            assert process.stdout is not None
            while chunk := process.stdout.read(1 << 20):
                output_bytes += len(chunk)
                if output_bytes > output_limit_bytes:
                    over_limit = True
                    break
                if sink is not None and not sink.feed(chunk):
                    stopped_early = True
                    break
                if keep_output:
                    output += chunk
            else:
                reached_end = True
        finally:
            deadline.cancel()
            if not reached_end:  # stopped early (limit or an exception): nobody reads any more
                process.kill()
            process.stdout.close()  # type: ignore[union-attr]
            try:
                returncode = process.wait(timeout=max(timeout_s - (time.monotonic() - started), 1.0))
            except subprocess.TimeoutExpired:  # closed its output but never exited
                timed_out.set()
                process.kill()
                returncode = process.wait()
        stderr_file.seek(0)
        stderr = stderr_file.read(64 * 1024).decode("utf-8", "replace")
    return _FfmpegRun(returncode, output, output_bytes, stderr, timed_out.is_set(), over_limit, stopped_early)


def _input_args(path: Path) -> list[str]:
    # "file:" stops a name like "http:x.mp3" being read as a URL; the whitelists keep a hostile file
    # from reaching other protocols or files.
    return [
        "-protocol_whitelist", "file",
        "-format_whitelist", _ALLOWED_DEMUXERS,
        "-i", f"file:{path.resolve()}",
        "-map", "0:a:0", "-vn", "-sn", "-dn", "-map_metadata", "-1",
    ]  # fmt: skip


def _check_readable(path: Path) -> None:
    if not path.exists() or path.is_dir():
        raise FileNotFoundError(f"No audio file at {path}")
    if path.is_file() and path.stat().st_size == 0:
        raise AudioDecodeError("Couldn't read that audio file: it is empty (0 bytes).")


def _raise_for_failure(run: _FfmpegRun, *, timeout_s: float, path: Path) -> None:
    if run.stopped_early and not run.timed_out:
        return
    if run.timed_out:
        raise AudioDecodeError(
            f"Couldn't read that audio file: decoding it took longer than {timeout_s:g} s, so I "
            "stopped. It may be damaged; a plain wav, mp3, ogg or flac file works best.",
            details=run.stderr,
        )
    if run.returncode != 0:
        log.info("ffmpeg could not decode %s (exit %s): %s", path, run.returncode, run.stderr.strip())
        if "matches no streams" in run.stderr:
            raise AudioDecodeError(
                "Couldn't read that audio file: it has no audio track.", details=run.stderr
            )
        raise AudioDecodeError(
            "Couldn't read that audio file: it isn't an audio format I know, or it is damaged. "
            + _SUPPORTED_HINT,
            details=run.stderr,
        )


def _too_long_error(max_seconds: float) -> AudioDecodeError:
    return AudioDecodeError(
        f"Couldn't read that audio file: it is longer than {max_seconds:g} s, the most I accept. "
        "Trim it and try again."
    )


# -- the end of a clip, as its container states it -----------------------------------------------

# Boxes an ISO base media file (mp4, m4a, mov, 3gp) starts with.
_MOV_FIRST_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"})
# Room for the packet list of a long clip (a line per packet, about 60 bytes; AAC has 47 packets a
# second at 48 kHz): the list is parsed as it arrives, never held.
_PACKET_LIST_LIMIT_BYTES = 256 << 20


def _looks_like_mov(path: Path) -> bool:
    # Only regular files are sniffed: opening a named pipe would block until someone writes to it.
    if not path.is_file():
        return False
    with path.open("rb") as file:
        head = file.read(8)
    return len(head) == 8 and head[4:8] in _MOV_FIRST_BOXES


class _PacketEnd:
    """Reads ffmpeg's framecrc listing of the audio packets: where the last one ends, in seconds."""

    def __init__(self) -> None:
        self.time_base: tuple[int, int] | None = None
        self.end_ticks: int | None = None
        self.unknown_duration = False
        self._partial = b""

    def feed(self, chunk: bytes) -> bool:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._read(line.decode("ascii", "replace").strip())
        return True

    def _read(self, line: str) -> None:
        if line.startswith("#tb 0:"):
            numerator, _, denominator = line.removeprefix("#tb 0:").strip().partition("/")
            self.time_base = int(numerator), int(denominator)
            return
        fields = [field.strip() for field in line.split(",")]
        if len(fields) < 5 or fields[0] != "0":
            return
        pts, duration = int(fields[2]), int(fields[3])
        if duration <= 0:
            self.unknown_duration = True
        end = pts + duration
        self.end_ticks = end if self.end_ticks is None else max(self.end_ticks, end)

    def end_s(self) -> str | None:
        """The end as atrim takes it (seconds to the microsecond: exact to the sample below 1 MHz)."""
        if self.time_base is None or self.end_ticks is None or self.unknown_duration:
            return None
        numerator, denominator = self.time_base
        if numerator <= 0 or denominator <= 0 or self.end_ticks <= 0:
            return None
        microseconds = (self.end_ticks * numerator * 1_000_000 * 2 + denominator) // (2 * denominator)
        return f"{microseconds // 1_000_000}.{microseconds % 1_000_000:06d}"


def _container_end_filters(path: Path, *, timeout_s: float, limit_s: float) -> list[str]:
    """A trim at the end the container states, for the formats whose decoders may run past it.

    An AAC encoder pads its last packet to 1024 samples; mp4/m4a/mov record the real length (the
    edit list, the last packet's duration). imageio-ffmpeg's ffmpeg drops the padding; older ones
    (Debian 12's 5.1) decode it, so the same clip came out up to 1023 samples longer. Trimming to the
    packets' own end gives every ffmpeg the same length. Costs one demuxing pass (no decoding), only
    for those containers; if that pass fails the decode goes on untrimmed and reports any problem.
    """
    if not _looks_like_mov(path):
        return []
    args = [*_input_args(path), "-t", f"{limit_s:.6f}", "-c:a", "copy", "-f", "framecrc", "pipe:1"]
    packets = _PacketEnd()
    run = _run_ffmpeg(
        args,
        timeout_s=timeout_s,
        output_limit_bytes=_PACKET_LIST_LIMIT_BYTES,
        keep_output=False,
        sink=packets,
    )
    end_s = packets.end_s()
    if run.returncode != 0 or run.timed_out or run.over_limit or end_s is None:
        return []
    return [f"atrim=end={end_s}"]


def _decode_args(
    path: Path, *, sample_rate: int, limit_s: float, timeout_s: float, then: tuple[str, ...] = ()
) -> list[str]:
    """Input, trim, resampling and channel options shared by every decode, so a clip counted,
    streamed, written as WAV or decoded into memory always has the same samples (`then`: filters
    after these)."""
    filters = [
        *_container_end_filters(path, timeout_s=timeout_s, limit_s=limit_s),
        # Mono and stereo pass through unmixed, so the caller can mix the way audiocraft does;
        # anything wider is folded to stereo by ffmpeg's standard down-mix.
        "aformat=channel_layouts=mono|stereo",
        *then,
    ]
    return [
        *_input_args(path),
        "-t", f"{limit_s:.6f}",
        "-ar", str(sample_rate),
        "-af", ",".join(filters),
    ]  # fmt: skip


# -- public functions --------------------------------------------------------------------------


class _AuStream:
    """Reads ffmpeg's AU stream (a header, then big-endian float32 sample frames) as it arrives and
    hands whole frames to `take`; this base only counts them."""

    def __init__(self) -> None:
        self.frames_seen = 0
        self.channels = 0
        self._head = bytearray()  # the header and any bytes before the samples, until parsed
        self._frame_bytes = 0
        self._partial = b""

    def feed(self, chunk: bytes) -> bool:
        if not self._frame_bytes:
            self._head += chunk
            if len(self._head) < _AU_HEADER.size:
                return True
            magic, data_offset, _size, encoding, _rate, channels = _AU_HEADER.unpack_from(self._head)
            if magic != b".snd" or encoding != _AU_FLOAT32 or channels not in (1, 2):
                # Only our own ffmpeg command writes this stream, so this is a bug, not a bad upload.
                raise RuntimeError(f"Unexpected ffmpeg output header {magic!r} {encoding} {channels}")
            if len(self._head) < data_offset:
                return True
            self.channels, self._frame_bytes = channels, 4 * channels
            chunk, self._head = bytes(self._head[data_offset:]), bytearray()
        data = self._partial + chunk if self._partial else chunk
        usable = len(data) - len(data) % self._frame_bytes
        self._partial = data[usable:]
        frames = usable // self._frame_bytes
        start = self.frames_seen
        self.frames_seen += frames
        return self.take(data, start, frames) if frames else True

    def take(self, data: bytes, first_frame: int, frames: int) -> bool:
        """The stream's frames [first_frame, first_frame + frames), the start of `data`; False when
        nothing more is needed."""
        return True

    def as_samples(self, data: bytes | bytearray, frames: int) -> np.ndarray:
        return (
            np.frombuffer(data, dtype=">f4", count=frames * self.channels)
            .reshape(-1, self.channels)
            .astype(np.float32)
        )


class _AuWindow(_AuStream):
    """Keeps only the sample frames [first, last): the rest of the file is counted, never stored,
    so memory is bounded by the window, not by the upload."""

    def __init__(self, first_frame: int, last_frame: int | None) -> None:
        super().__init__()
        self.first_frame = first_frame
        self.last_frame = last_frame
        self.kept = bytearray()

    def take(self, data: bytes, first_frame: int, frames: int) -> bool:
        keep_from = max(self.first_frame - first_frame, 0)
        keep_to = frames if self.last_frame is None else min(self.last_frame - first_frame, frames)
        if keep_to > keep_from:
            self.kept += data[keep_from * self._frame_bytes : keep_to * self._frame_bytes]
        return self.last_frame is None or self.frames_seen < self.last_frame

    def samples(self) -> np.ndarray:
        if not self.channels:
            return np.zeros((0, 1), dtype=np.float32)
        return self.as_samples(self.kept, len(self.kept) // self._frame_bytes)


class _AuConsumer(_AuStream):
    """Hands each arriving stretch of samples to `consume`, keeping none of them."""

    def __init__(self, consume: Callable[[np.ndarray], None]) -> None:
        super().__init__()
        self.consume = consume

    def take(self, data: bytes, first_frame: int, frames: int) -> bool:
        self.consume(self.as_samples(data, frames))
        return True


def _decode_to_sink(
    path: Path, sink: _AuStream, *, sample_rate: int, timeout_s: float, limit_s: float, max_seconds: float
) -> _FfmpegRun:
    """Run the shared decode into `sink` as 32-bit float AU; raise AudioDecodeError for a file that
    is unreadable, empty or (read past `max_seconds`) too long."""
    max_channels = 2
    output_limit_bytes = _AU_HEADER.size + 1024 + int(limit_s * sample_rate + sample_rate) * max_channels * 4
    args = [
        *_decode_args(path, sample_rate=sample_rate, limit_s=limit_s, timeout_s=timeout_s),
        "-c:a", "pcm_f32be", "-f", "au", "pipe:1",
    ]  # fmt: skip
    run = _run_ffmpeg(
        args, timeout_s=timeout_s, output_limit_bytes=output_limit_bytes, keep_output=False, sink=sink
    )
    if run.over_limit:
        raise _too_long_error(max_seconds)
    _raise_for_failure(run, timeout_s=timeout_s, path=path)
    if sink.frames_seen == 0:
        raise AudioDecodeError("Couldn't read that audio file: it contains no audio.", details=run.stderr)
    return run


def _prepare(path: str | os.PathLike[str], sample_rate: int) -> Path:
    path = Path(path)
    _check_readable(path)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    return path


def decode_audio_file(
    path: str | os.PathLike[str],
    *,
    sample_rate: int,
    timeout_s: float = 30.0,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    start_s: float = 0.0,
    end_s: float | None = None,
) -> np.ndarray:
    """Decode any audio file into float32 [samples, channels] at `sample_rate`, in a child process.

    Channels are the file's own for mono and stereo; files with more channels come back as
    ffmpeg's stereo down-mix. Only the samples [round(start_s*sr), round(end_s*sr)) are kept
    (`end_s=None`: to the end), and decoding stops at `end_s`: a long upload costs decoding time
    up to the window, never memory beyond it. Raises AudioDecodeError for anything unreadable,
    empty, slower than `timeout_s`, or longer than `max_seconds` (when audio past `max_seconds` is
    needed), and RequestError when `start_s` is past the end of the audio.
    """
    path = _prepare(path, sample_rate)
    needed_until_s = end_s if end_s is not None else float("inf")
    # round(), not int(): 0.29 s * 32000 is 9279.999... in floating point and means sample 9280.
    first_frame = round(start_s * sample_rate)
    last_frame = None if end_s is None else round(end_s * sample_rate)
    if needed_until_s > max_seconds:
        # Read just past the limit, so that "longer than allowed" is seen.
        last_frame = None
    window = _AuWindow(first_frame, last_frame)
    _decode_to_sink(
        path,
        window,
        sample_rate=sample_rate,
        timeout_s=timeout_s,
        limit_s=min(needed_until_s, max_seconds) + _DECODE_MARGIN_S,
        max_seconds=max_seconds,
    )
    if needed_until_s > max_seconds and window.frames_seen > max_seconds * sample_rate:
        raise _too_long_error(max_seconds)
    if first_frame >= window.frames_seen:
        raise RequestError(
            f"The start time ({start_s:g} s) is past the end of the clip "
            f"({window.frames_seen / sample_rate:.2f} s long)."
        )
    samples = window.samples()
    if end_s is not None:
        samples = samples[: max(round(end_s * sample_rate) - first_frame, 0)]
    return samples


def _decode_whole_file(
    path: str | os.PathLike[str], sink: _AuStream, *, sample_rate: int, timeout_s: float, max_seconds: float
) -> int:
    """Decode the whole file into `sink` and return its number of sample frames; AudioDecodeError for
    a file longer than `max_seconds`, as for any other that cannot be read."""
    path = _prepare(path, sample_rate)
    _decode_to_sink(
        path,
        sink,
        sample_rate=sample_rate,
        timeout_s=timeout_s,
        limit_s=max_seconds + _DECODE_MARGIN_S,
        max_seconds=max_seconds,
    )
    if sink.frames_seen > max_seconds * sample_rate:
        raise _too_long_error(max_seconds)
    return sink.frames_seen


def stream_audio_file(
    path: str | os.PathLike[str],
    consume: Callable[[np.ndarray], None],
    *,
    sample_rate: int,
    timeout_s: float = 30.0,
    max_seconds: float = DEFAULT_MAX_SECONDS,
) -> int:
    """Decode the whole file like `decode_audio_file`, handing `consume` each stretch of float32
    [samples, channels] as it arrives (a few hundred milliseconds at a time) instead of keeping
    them: memory stays flat however long the file. Returns the number of sample frames.
    Raises AudioDecodeError like `decode_audio_file` (after `consume` saw what came before)."""
    return _decode_whole_file(
        path, _AuConsumer(consume), sample_rate=sample_rate, timeout_s=timeout_s, max_seconds=max_seconds
    )


def count_audio_frames(
    path: str | os.PathLike[str],
    *,
    sample_rate: int,
    timeout_s: float = 30.0,
    max_seconds: float = DEFAULT_MAX_SECONDS,
) -> int:
    """How many sample frames `decode_audio_file` gives for the whole file at `sample_rate`: the
    same decode, counted as it streams past, with no sample kept."""
    return _decode_whole_file(
        path, _AuStream(), sample_rate=sample_rate, timeout_s=timeout_s, max_seconds=max_seconds
    )


# -- 16-bit WAV files ffmpeg writes -------------------------------------------------------------

_RIFF_HEADER = struct.Struct("<4sI4s")
_CHUNK_HEADER = struct.Struct("<4sI")
_FMT_PCM = struct.Struct("<HHIIHH")
_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


@dataclass(frozen=True)
class WavLayout:
    """Where a PCM WAV keeps its samples: what `read_wav_layout` finds in the header."""

    channels: int
    sample_rate: int
    sample_width: int  # bytes per sample
    data_offset: int  # where the first sample frame starts
    frames: int
    data_size_field_offset: int  # the data chunk's size field
    file_size: int

    @property
    def frame_bytes(self) -> int:
        return self.channels * self.sample_width


def read_wav_layout(path: str | os.PathLike[str]) -> WavLayout:
    """The layout of a PCM WAV whose data chunk is its last (what ffmpeg and pydub write).

    RuntimeError for a file that is not one, or whose data chunk is cut short: a writer that
    stopped early (a full disk) leaves a header promising more samples than the file holds.
    """
    path = Path(path)
    file_size = path.stat().st_size
    if file_size < _RIFF_HEADER.size:
        raise RuntimeError(
            f"{path.name} is incomplete: {file_size} bytes, not even a header (was the disk full?)"
        )
    with path.open("rb") as file:
        riff, _riff_size, wave_id = _RIFF_HEADER.unpack(file.read(_RIFF_HEADER.size).ljust(_RIFF_HEADER.size))
        if riff != b"RIFF" or wave_id != b"WAVE":
            raise RuntimeError(f"{path.name} is not a WAV file")
        fmt: tuple[int, ...] | None = None
        offset = _RIFF_HEADER.size
        while offset + _CHUNK_HEADER.size <= file_size:
            file.seek(offset)
            chunk_id, chunk_size = _CHUNK_HEADER.unpack(file.read(_CHUNK_HEADER.size))
            if chunk_id == b"fmt ":
                fmt = _FMT_PCM.unpack(file.read(_FMT_PCM.size).ljust(_FMT_PCM.size))
            elif chunk_id == b"data":
                if fmt is None or fmt[0] not in (_WAVE_FORMAT_PCM, _WAVE_FORMAT_EXTENSIBLE):
                    raise RuntimeError(f"{path.name} is not a PCM WAV file")
                _format, channels, sample_rate, _byte_rate, block_align, bits = fmt
                data_offset = offset + _CHUNK_HEADER.size
                if data_offset + chunk_size > file_size or bits % 8 or block_align != channels * bits // 8:
                    raise RuntimeError(
                        f"{path.name} is incomplete: its header promises {chunk_size} bytes of samples, "
                        f"the file holds {file_size - data_offset} (was the disk full?)"
                    )
                return WavLayout(
                    channels=channels,
                    sample_rate=sample_rate,
                    sample_width=bits // 8,
                    data_offset=data_offset,
                    frames=chunk_size // block_align,
                    data_size_field_offset=offset + 4,
                    file_size=file_size,
                )
            offset += _CHUNK_HEADER.size + chunk_size + (chunk_size & 1)
    raise RuntimeError(f"{path.name} has no samples (no data chunk): the writer stopped early")


# How ffmpeg (every version) reports that it could not write its output file.
_WRITE_FAILURE = re.compile(
    r"Error (?:writing|closing|opening output)|No space left on device|Disk quota exceeded|Read-only file system"
)


def decode_to_wav(
    path: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    sample_rate: int,
    timeout_s: float = 30.0,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    mono_to_stereo: bool = False,
) -> WavLayout:
    """Decode the whole file into a 16-bit PCM WAV at `target`, written by the ffmpeg child: the
    samples never pass through this process, however long the clip.

    The same samples as `decode_audio_file` (channels kept, wider than stereo folded to stereo),
    then rounded to 16 bits. `mono_to_stereo`: the file is known to be mono, and each sample goes
    to both channels unchanged (ffmpeg's own up-mix would lower it by 3 dB). Raises AudioDecodeError
    like `decode_audio_file`, and RuntimeError when the WAV could not be written whole (a full disk);
    a failed or too long decode leaves no file at `target`.
    """
    path = _prepare(path, sample_rate)
    target = Path(target).resolve()
    limit_s = max_seconds + _DECODE_MARGIN_S
    then = ("pan=stereo|c0=c0|c1=c0",) if mono_to_stereo else ()
    args = _decode_args(path, sample_rate=sample_rate, limit_s=limit_s, timeout_s=timeout_s, then=then)
    args += ["-c:a", "pcm_s16le", "-fflags", "+bitexact", "-f", "wav", "-y", str(target)]
    try:
        run = _run_ffmpeg(args, timeout_s=timeout_s, output_limit_bytes=0, keep_output=False)
        if _WRITE_FAILURE.search(run.stderr):
            # Our side, not the upload's: say so rather than call the clip unreadable.
            raise RuntimeError(f"ffmpeg could not write {target.name}: {run.stderr.strip()}")
        _raise_for_failure(run, timeout_s=timeout_s, path=path)
        layout = read_wav_layout(target)
        if layout.frames == 0:
            raise AudioDecodeError("Couldn't read that audio file: it contains no audio.", details=run.stderr)
        if layout.frames > max_seconds * sample_rate:
            raise _too_long_error(max_seconds)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return layout


def probe_duration(
    path: str | os.PathLike[str], *, timeout_s: float = 30.0, max_seconds: float | None = None
) -> float:
    """Seconds of audio in `path`, found by decoding it in a child process and counting samples.

    Counting decoded samples is right even where headers lie or are missing (VBR mp3 without a
    Xing header, browser-recorded webm). With `max_seconds`, decoding stops just past it: any
    result above `max_seconds` then only means "too long". Raises AudioDecodeError like
    `decode_audio_file`.
    """
    path = Path(path)
    _check_readable(path)
    limit_args: list[str] = []
    limit_s = float("inf")
    if max_seconds is not None:
        limit_s = max_seconds + _DECODE_MARGIN_S
        limit_args = ["-t", f"{limit_s:.6f}"]
    trim = _container_end_filters(path, timeout_s=timeout_s, limit_s=min(limit_s, 86400.0))
    # Without max_seconds the byte limit is a day of audio: counting costs nothing to keep.
    output_limit_bytes = int(min(limit_s + 1.0, 86400.0) * _PROBE_SAMPLE_RATE) * 2
    args = [
        *_input_args(path),
        *limit_args,
        *(["-af", ",".join(trim)] if trim else []),
        "-ac", "1", "-ar", str(_PROBE_SAMPLE_RATE),
        "-c:a", "pcm_s16le", "-f", "s16le", "pipe:1",
    ]  # fmt: skip
    run = _run_ffmpeg(args, timeout_s=timeout_s, output_limit_bytes=output_limit_bytes, keep_output=False)
    if run.over_limit:
        raise _too_long_error(output_limit_bytes / 2 / _PROBE_SAMPLE_RATE)
    _raise_for_failure(run, timeout_s=timeout_s, path=path)
    duration_s = run.output_bytes / 2 / _PROBE_SAMPLE_RATE
    if duration_s == 0:
        raise AudioDecodeError("Couldn't read that audio file: it contains no audio.")
    return duration_s


# -- MP3 encoding ----------------------------------------------------------------------------

MP3_BITRATE = "320k"
# A constant-bitrate MP3 holds bitrate x time; one whole enough to keep has at least this share of
# it (frame rounding and the tags only add, a writer that stopped early leaves much less).
_MP3_MIN_SHARE_OF_BITRATE = 0.9


def _bits_per_second(bitrate: str) -> int:
    text = bitrate.strip().lower()
    return int(float(text[:-1]) * 1000) if text.endswith("k") else int(text)


def _seconds_in_wav(path: Path) -> float | None:
    try:
        layout = read_wav_layout(path)
    except (OSError, RuntimeError, struct.error):
        return None  # not a plain PCM WAV: ffmpeg reads it anyway; only the size check is skipped
    return layout.frames / layout.sample_rate if layout.sample_rate else None


def encode_mp3(
    output: str | os.PathLike[str],
    *,
    wav_file: str | os.PathLike[str] | None = None,
    samples: np.ndarray | None = None,
    sample_rate: int = 0,
    bitrate: str = MP3_BITRATE,
) -> Path:
    """The one MP3 encoder: ffmpeg's libmp3lame (CBR `bitrate`), in a child process like the decoder.

    Encodes either a `wav_file` (the bot re-encoding a result) or float `samples` [samples, channels]
    at `sample_rate` (the engine writing one); ~0.13 s for 30 s here, about 3x faster than
    libsndfile's LAME. The MP3 is written to a temporary file beside `output` and renamed onto it
    only once checked whole (ffmpeg's exit status, and a size that carries the bitrate for the
    audio's length: some ffmpeg versions exit 0 after failing to write to a full disk), so `output`
    is never a partial file and concurrent encodes never see each other's. Raises RuntimeError with
    ffmpeg's message when it fails.
    """
    if (wav_file is None) == (samples is None):
        raise ValueError("give exactly one of wav_file and samples")
    output = Path(output).resolve()
    if samples is not None:
        channels = samples.shape[1]
        source = ["-f", "f32le", "-ar", str(sample_rate), "-ac", str(channels), "-i", "pipe:0"]
        data: bytes | None = np.ascontiguousarray(samples, dtype="<f4").tobytes()
        audio_seconds: float | None = samples.shape[0] / sample_rate
    else:
        source = ["-i", os.fspath(Path(wav_file).resolve())]  # type: ignore[arg-type]
        data = None
        audio_seconds = _seconds_in_wav(Path(wav_file))  # type: ignore[arg-type]
    descriptor, temporary_name = tempfile.mkstemp(
        dir=output.parent, prefix=f".{output.name}.", suffix=".part"
    )
    os.close(descriptor)
    temporary = Path(temporary_name)
    command = [
        ffmpeg_executable(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *source,
        "-c:a", "libmp3lame", "-b:a", bitrate, "-f", "mp3", str(temporary),
    ]  # fmt: skip
    try:
        result = subprocess.run(
            command,
            input=data,
            capture_output=True,
            timeout=60.0 + (audio_seconds if audio_seconds is not None else DEFAULT_MAX_SECONDS),
            env=child_environment(),
        )
        message = result.stderr.decode("utf-8", "replace").strip()
        if result.returncode != 0 or _WRITE_FAILURE.search(message):
            raise RuntimeError(f"ffmpeg could not encode mp3: {message}")
        written = temporary.stat().st_size
        if audio_seconds is not None:
            expected = _bits_per_second(bitrate) / 8 * audio_seconds * _MP3_MIN_SHARE_OF_BITRATE
            if written < expected:
                raise RuntimeError(
                    f"ffmpeg wrote an incomplete mp3 ({written} bytes where {expected:.0f} or more were "
                    f"due; was the disk full?): {message}"
                )
        os.replace(temporary, output)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return output


# -- pydub -------------------------------------------------------------------------------------

_SAMPLE_FORMAT_TOKEN = re.compile(r"^(?P<fmt>[su](?P<bits>\d{1,2})p?|fltp?|dblp?)(?: \(\d+ bit\))?$")


def _mediainfo_from_ffmpeg(filepath: Any, read_ahead_limit: int = -1) -> dict[str, Any]:
    """Stand-in for pydub's ffprobe-based `mediainfo_json`, built from `ffmpeg -i` alone.

    pydub 0.25.1's `AudioSegment.from_file` asks ffprobe for the first audio stream's codec and
    sample format, only to choose the PCM width of its intermediate wav. imageio-ffmpeg ships no
    ffprobe, so this reads the same facts from the stream lines ffmpeg prints (with pydub's own
    stream-line parser). An empty answer makes pydub fall back to 16-bit PCM, which is what it
    picks for lossy codecs anyway.
    """
    from pydub.utils import get_extra_info

    try:
        path = os.fsdecode(filepath)
    except TypeError:  # a file object: pydub pipes it to ffmpeg; 16-bit PCM is fine
        return {}
    try:
        result = subprocess.run(
            [ffmpeg_executable(), "-nostdin", "-hide_banner", "-i", path],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            env=child_environment(),
        )
    except subprocess.TimeoutExpired:
        return {}
    stream_tokens = get_extra_info(result.stderr.decode("utf-8", "replace"))
    for index, tokens in sorted(stream_tokens.items()):
        if "Audio" not in tokens:
            continue
        after_audio = tokens[tokens.index("Audio") + 1 :]
        stream: dict[str, Any] = {"index": index, "codec_type": "audio"}
        if after_audio:
            stream["codec_name"] = after_audio[0].split(" ")[0]
        for token in after_audio:
            match = _SAMPLE_FORMAT_TOKEN.match(token)
            if match:
                sample_format = match.group("fmt")
                stream["sample_fmt"] = sample_format
                if match.group("bits"):
                    stream["bits_per_sample"] = int(match.group("bits"))
                else:
                    stream["bits_per_sample"] = 64 if sample_format.startswith("dbl") else 32
                break
        if "bits_per_sample" not in stream:
            return {}
        return {"streams": [stream], "format": {}}
    return {}


def configure_pydub() -> None:
    """Make pydub work with our ffmpeg, even on a machine with no system ffmpeg or ffprobe.

    Points `AudioSegment.converter` at `ffmpeg_executable()`; where no ffprobe is on PATH, swaps
    pydub's ffprobe-based probe for `_mediainfo_from_ffmpeg` so `AudioSegment.from_file` opens
    mp3/ogg/flac/m4a. Idempotent; call it once before using pydub.
    """
    import warnings

    with warnings.catch_warnings():
        # pydub warns at import when ffmpeg is not on PATH: we are about to fix exactly that.
        warnings.simplefilter("ignore", RuntimeWarning)
        import pydub.audio_segment
        import pydub.utils

    pydub.audio_segment.AudioSegment.converter = ffmpeg_executable()
    if not (shutil.which("ffprobe") or shutil.which("avprobe")):
        pydub.audio_segment.mediainfo_json = _mediainfo_from_ffmpeg
        pydub.utils.mediainfo_json = _mediainfo_from_ffmpeg
