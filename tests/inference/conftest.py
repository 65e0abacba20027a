"""Fixtures shared by the inference tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from inference.engine.musicgen_engine import MusicGenEngine
    from inference.settings import EngineSettings


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module: the machine is shared, and a single thread also keeps CPU
    results bit-stable between runs."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def engine(engine_settings: EngineSettings) -> MusicGenEngine:
    """An engine on the tiny models, one per test module (its model cache warms up once there)."""
    from inference.engine.musicgen_engine import MusicGenEngine

    return MusicGenEngine(engine_settings)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs), filled to the last byte; skipped where mounting needs root."""
    mount_point = tmp_path / "full-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        with (
            (mount_point / "filler").open("wb", buffering=0) as file,
            pytest.raises(OSError, match="No space"),
        ):
            while True:
                file.write(b"\0" * 4096)
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
