"""The data dir's disk: uploads and outputs kept within an age and size budget, and new jobs
refused while the disk is nearly full.

`[storage] keep_days` and `max_gb` bound what the bot keeps; a sweep at start-up and then every
hour deletes files past the age, then the oldest ones until the total fits. Files a pending job
still needs (its upload) are never deleted. A job whose files are gone can no longer be replayed;
/replay says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

GIB = 1024**3
MIB = 1024**2
SWEEP_INTERVAL_S = 3600.0


@dataclass(frozen=True)
class RetentionPolicy:
    keep_days: float
    max_bytes: int


def sweep_files(
    folders: Iterable[Path], *, policy: RetentionPolicy, keep: set[Path], now: float | None = None
) -> list[Path]:
    """Delete files older than the policy's age, then the oldest until the rest fit its size.

    `keep`: files in use (a pending job's upload), never deleted. Returns what was deleted.
    """
    now = time.time() if now is None else now
    files: list[tuple[float, int, Path]] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.is_file() and path.resolve() not in keep:
                    stat = path.stat()
                    files.append((stat.st_mtime, stat.st_size, path))
    files.sort()
    kept_bytes = sum(size for _, size, _ in files) + sum(_size(path) for path in keep)
    oldest_allowed = now - policy.keep_days * 86400
    deleted: list[Path] = []
    for mtime, size, path in files:
        if mtime >= oldest_allowed and kept_bytes <= policy.max_bytes:
            break
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            deleted.append(path)
        kept_bytes -= size
    return deleted


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def low_disk_refusal(folder: Path, min_free_bytes: int) -> str | None:
    """A sentence for the member when the data dir's disk has less than `min_free_bytes` free."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= min_free_bytes:
        return None
    logger.error(
        "only %.1f MiB free on the disk of %s (below [storage] min_free_mb): refusing new jobs",
        free / MIB,
        folder,
    )
    return "The bot's disk is full right now, so it cannot take new jobs. The owner has been told; try again later."


class StorageJanitor:
    """Runs `sweep_files` over the uploads and outputs now and every `interval_s` in the background."""

    def __init__(
        self,
        folders: list[Path],
        policy: RetentionPolicy,
        files_in_use: Callable[[], Awaitable[set[Path]]],
        *,
        interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self.folders = folders
        self.policy = policy
        self._files_in_use = files_in_use
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> list[Path]:
        keep = {path.resolve() for path in await self._files_in_use()}
        deleted = await asyncio.to_thread(sweep_files, self.folders, policy=self.policy, keep=keep)
        if deleted:
            logger.info(
                "storage: deleted %d old file(s) to stay within [storage] keep_days/max_gb", len(deleted)
            )
        return deleted

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="storage-janitor")

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # a sweep that fails (disk error) must not end the next ones
                logger.exception("storage: the sweep failed")
            await asyncio.sleep(self._interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
