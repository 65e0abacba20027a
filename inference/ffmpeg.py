"""Decoding uploads with the ffmpeg binary in a child process, and pointing pydub at that binary.

Torch-free on purpose: the bot (which must never import torch) can use `probe_duration`,
`decode_audio_file` and `configure_pydub` from here; `inference.audio` re-exports them.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from inference.environment import child_environment
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


def ffmpeg_executable() -> str:
    """The ffmpeg to run: a system `ffmpeg` on PATH if there is one, else imageio-ffmpeg's binary."""
    system_ffmpeg = shutil.which("ffmpeg")
    if system_ffmpeg:
        return system_ffmpeg
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - imageio-ffmpeg is a hard dependency
        raise RuntimeError("No ffmpeg found: install ffmpeg or the imageio-ffmpeg package.") from exc
    return imageio_ffmpeg.get_ffmpeg_exe()


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


# -- public functions --------------------------------------------------------------------------


class _AuWindow:
    """Reads ffmpeg's AU stream and keeps only the sample frames [first, last): the rest of the file
    is counted, never stored, so memory is bounded by the window, not by the upload."""

    def __init__(self, first_frame: int, last_frame: int | None) -> None:
        self.first_frame = first_frame
        self.last_frame = last_frame
        self.frames_seen = 0
        self.channels = 0
        self.kept = bytearray()
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
        data = self._partial + chunk
        usable = len(data) - len(data) % self._frame_bytes
        self._partial = data[usable:]
        frames = usable // self._frame_bytes
        start = self.frames_seen
        self.frames_seen += frames
        keep_from = max(self.first_frame - start, 0)
        keep_to = frames if self.last_frame is None else min(self.last_frame - start, frames)
        if keep_to > keep_from:
            self.kept += data[keep_from * self._frame_bytes : keep_to * self._frame_bytes]
        return self.last_frame is None or self.frames_seen < self.last_frame

    def samples(self) -> np.ndarray:
        if not self.channels:
            return np.zeros((0, 1), dtype=np.float32)
        return np.frombuffer(bytes(self.kept), dtype=">f4").reshape(-1, self.channels).astype(np.float32)


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
    path = Path(path)
    _check_readable(path)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    needed_until_s = end_s if end_s is not None else float("inf")
    decode_limit_s = min(needed_until_s, max_seconds) + _DECODE_MARGIN_S
    max_channels = 2
    output_limit_bytes = (
        _AU_HEADER.size + 1024 + int(decode_limit_s * sample_rate + sample_rate) * max_channels * 4
    )
    args = [
        *_input_args(path),
        "-t", f"{decode_limit_s:.6f}",
        "-ar", str(sample_rate),
        # Mono and stereo pass through unmixed, so the caller can mix the way audiocraft does;
        # anything wider is folded to stereo by ffmpeg's standard down-mix.
        "-af", "aformat=channel_layouts=mono|stereo",
        "-c:a", "pcm_f32be", "-f", "au", "pipe:1",
    ]  # fmt: skip
    # round(), not int(): 0.29 s * 32000 is 9279.999... in floating point and means sample 9280.
    first_frame = round(start_s * sample_rate)
    last_frame = None if end_s is None else round(end_s * sample_rate)
    if needed_until_s > max_seconds:
        # Read just past the limit, so that "longer than allowed" is seen.
        last_frame = None
    window = _AuWindow(first_frame, last_frame)
    run = _run_ffmpeg(
        args, timeout_s=timeout_s, output_limit_bytes=output_limit_bytes, keep_output=False, sink=window
    )
    if run.over_limit:
        raise _too_long_error(max_seconds)
    _raise_for_failure(run, timeout_s=timeout_s, path=path)
    if window.frames_seen == 0:
        raise AudioDecodeError("Couldn't read that audio file: it contains no audio.", details=run.stderr)
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
    # Without max_seconds the byte limit is a day of audio: counting costs nothing to keep.
    output_limit_bytes = int(min(limit_s + 1.0, 86400.0) * _PROBE_SAMPLE_RATE) * 2
    args = [
        *_input_args(path),
        *limit_args,
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
    libsndfile's LAME. Raises RuntimeError with ffmpeg's message when it fails.
    """
    if (wav_file is None) == (samples is None):
        raise ValueError("give exactly one of wav_file and samples")
    if samples is not None:
        channels = samples.shape[1]
        source = ["-f", "f32le", "-ar", str(sample_rate), "-ac", str(channels), "-i", "pipe:0"]
        data: bytes | None = np.ascontiguousarray(samples, dtype="<f4").tobytes()
        audio_seconds = samples.shape[0] / sample_rate
    else:
        source = ["-i", os.fspath(wav_file)]  # type: ignore[arg-type]
        data = None
        audio_seconds = DEFAULT_MAX_SECONDS
    command = [
        ffmpeg_executable(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *source,
        "-c:a", "libmp3lame", "-b:a", bitrate, "-f", "mp3", os.fspath(output),
    ]  # fmt: skip
    result = subprocess.run(
        command, input=data, capture_output=True, timeout=60.0 + audio_seconds, env=child_environment()
    )
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg could not encode mp3: {result.stderr.decode('utf-8', 'replace').strip()}")
    return Path(output)


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
