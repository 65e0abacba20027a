"""Audio file chores the bot does itself, without torch: vet an upload, share out the decode slots.

Decoding is `inference.media.ffmpeg` (torch-free): an ffmpeg child process with a deadline, input
whitelists and the imageio-ffmpeg binary unless `[engine] ffmpeg` names another. It blocks: call it with
`asyncio.to_thread`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from inference.media.ffmpeg import AudioDecodeError, probe_duration

__all__ = [
    "AUDIO_EXTENSIONS",
    "MAX_CONCURRENT_DECODES",
    "AudioDecodeError",
    "decode_slot",
    "looks_like_audio",
    "measure_upload",
]

# Decodes the bot process runs at once: measuring an upload, counting a clip, stitching a piece,
# drawing a picture. Each holds at most a model's 30 s of samples in the bot and runs an ffmpeg child
# on the bot's cores, so a burst of requests waits its turn instead of adding up.
MAX_CONCURRENT_DECODES = 2
_decode_slots = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)


@contextmanager
def decode_slot() -> Iterator[None]:
    """Hold one of the bot's decode slots (blocks until one is free: call it from a worker thread)."""
    with _decode_slots:
        yield


# Extensions Discord users commonly attach that ffmpeg decodes; anything else is refused up front.
AUDIO_EXTENSIONS = frozenset(
    {
        "mp3",
        "wav",
        "ogg",
        "oga",
        "opus",
        "flac",
        "m4a",
        "aac",
        "webm",
        "mp4",
        "mov",
        "aif",
        "aiff",
        "wma",
        "mka",
        "caf",
    }
)


def looks_like_audio(filename: str, content_type: str | None) -> bool:
    """A cheap check before downloading: an audio/video content type or a known audio extension."""
    if content_type and content_type.split(";")[0].strip().lower().startswith(("audio/", "video/")):
        return True
    return Path(filename).suffix.lower().lstrip(".") in AUDIO_EXTENSIONS


def measure_upload(path: str | Path, *, max_seconds: float, timeout_s: float) -> float:
    """Seconds of audio in an upload; AudioDecodeError (a friendly RequestError) if unreadable or too long."""
    with decode_slot():
        seconds = probe_duration(path, timeout_s=timeout_s, max_seconds=max_seconds)
    if seconds > max_seconds:
        raise AudioDecodeError(
            f"That clip is longer than {max_seconds:g} s, the most this bot accepts. Trim it and try again."
        )
    return seconds
