"""Continuing a long stereo clip through the context menu while watching the bot process's memory.

Shared by tests/bot/test_long_clip_memory.py and bench/memory.py. The bot runs in this process (the
fake Discord too; the inference worker is a child process), so the peak resident set of this process
while a continuation goes from the modal's Submit to the posted result is what the bot needed for it.
Linux lets a process reset its own peak (`/proc/self/clear_refs`), so each measurement starts at the
resident size of that moment and counts only what the continuation added.
"""

from __future__ import annotations

import asyncio
import gc
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from inference.media.ffmpeg import ffmpeg_executable
from tests.bot.scenario_harness import posted_result, queued_job_id
from tests.fake_discord import FakeChannel, FakeDiscord, FakeInteraction, FakeMember, FakeMessage

CONTEXT_MENU = "Continue with MusicGen"
MIB = 1024 * 1024


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    assert match is not None, f"no {field} in /proc/self/status"
    return int(match.group(1))


def can_measure_peak_memory() -> bool:
    """Whether this process can reset and read its own peak resident set (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _status_kib("VmHWM")
    except (OSError, AssertionError):
        return False
    return True


def reset_peak_memory() -> int:
    """Forget the peak so far; returns the resident bytes now (the new baseline)."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def peak_memory() -> int:
    """The peak resident bytes since the last reset."""
    return _status_kib("VmHWM") * 1024


def make_long_stereo_mp3(path: Path, *, seconds: float, bitrate: str = "64k") -> bytes:
    """A stereo MP3 at 44.1 kHz: a different tone on each side, like a real mix."""
    subprocess.run(
        [ffmpeg_executable(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"sine=frequency=220:duration={seconds}:sample_rate=44100",
         "-f", "lavfi", "-i", f"sine=frequency=330:duration={seconds}:sample_rate=44100",
         "-filter_complex", "[0:a][1:a]join=inputs=2:channel_layout=stereo",
         "-c:a", "libmp3lame", "-compression_level", "9", "-b:a", bitrate, str(path)],
        check=True,
    )  # fmt: skip
    return path.read_bytes()


@dataclass(frozen=True)
class Continued:
    """What the continuations posted, and the most memory the bot process added meanwhile."""

    job_ids: list[int]
    results: list[FakeMessage]
    peak_increase_bytes: int

    @property
    def peak_increase_mib(self) -> float:
        return self.peak_increase_bytes / MIB


async def _open_modal(fake: FakeDiscord, member: FakeMember, message: FakeMessage) -> FakeInteraction:
    opened = await fake.invoke_message_command(member, message, CONTEXT_MENU)
    await opened.wait_for_response()
    assert opened.response_type == 9, "the bot answered with its modal"
    return opened


async def _submit(fake: FakeDiscord, member: FakeMember, opened: FakeInteraction, seconds: int) -> int:
    submitted = await fake.submit_modal(member, opened, {"seconds": str(seconds)})
    await submitted.wait_for_response()
    return await queued_job_id(submitted, timeout=120)


async def continue_at_once(
    fake: FakeDiscord,
    channel: FakeChannel,
    members: list[FakeMember],
    message: FakeMessage,
    *,
    seconds: int = 1,
    timeout_s: float = 600,
) -> Continued:
    """Each member opens the context menu on `message`; then all submit at the same moment and the
    peak memory is measured from the submissions until every result is posted."""
    opened = [await _open_modal(fake, member, message) for member in members]
    baseline = reset_peak_memory()
    job_ids = await asyncio.gather(
        *(_submit(fake, member, modal, seconds) for member, modal in zip(members, opened, strict=True))
    )
    results = await asyncio.gather(*(posted_result(fake, channel, job_id, timeout_s) for job_id in job_ids))
    return Continued(list(job_ids), list(results), peak_memory() - baseline)
