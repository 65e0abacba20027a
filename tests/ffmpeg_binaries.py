"""The ffmpeg binaries a test can run the code with: the bundled one, and a system one where installed.

The bot uses imageio-ffmpeg's binary unless `[engine] ffmpeg` names another; owners often name their
distribution's (Debian 12 ships ffmpeg 5.1), so the checks that depend on the binary run with both.
The system one is skipped where none is installed (`apt-get install ffmpeg` adds it).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from inference.media.ffmpeg import bundled_ffmpeg, use_ffmpeg

BINARIES = ("bundled", "system")


def system_ffmpeg() -> str | None:
    """An ffmpeg on PATH that is not the bundled one, if there is one."""
    found = shutil.which("ffmpeg")
    if found is None or Path(found).resolve() == Path(bundled_ffmpeg()).resolve():
        return None
    return found


@contextmanager
def running_with(setting: str) -> Iterator[str]:
    """Every ffmpeg this process starts is `setting` ([engine] ffmpeg) until the block ends."""
    executable = use_ffmpeg(setting)
    try:
        yield executable
    finally:
        use_ffmpeg("")


@contextmanager
def running_binary(which: str) -> Iterator[str]:
    """`which` of BINARIES; skips the test for "system" where none is installed."""
    if which == "bundled":
        with running_with("") as executable:
            yield executable
        return
    system = system_ffmpeg()
    if system is None:
        pytest.skip("no system ffmpeg installed (apt-get install ffmpeg) to test with a second binary")
    with running_with(system) as executable:
        yield executable
