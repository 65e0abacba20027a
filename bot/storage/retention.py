"""The data dir's disk: uploads and outputs kept within an age and size budget, and new jobs
refused while the disk is nearly full.

`[storage] keep_days` and `max_gb` bound what the bot keeps; a sweep at start-up and then every
hour deletes files past the age, then the oldest ones until the total fits. Files still in use are
never deleted (`files_in_use`): a pending job's upload and outputs, and what an open jam needs (its
piece so far, with the new part of its latest turn, and the outputs of the turn being made). A job
whose files are gone can no longer be replayed; /replay says so.
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

import aiosqlite

from bot.audio.editing import new_part_path_for

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


async def files_in_use(connection: aiosqlite.Connection, outputs_dir: Path) -> set[Path]:
    """The files the sweep must leave alone.

    - a queued or running job's upload, and the outputs it writes when it ends (until it is posted);
    - an open jam's piece so far (its latest finished turn's whole piece: what `/jam export`,
      `/jam end` and the next turn read) with that turn's new part, and every output of its turn in
      progress, also once the job is done and the turn not yet recorded. The pieces of earlier turns
      are each a beginning of the latest one and nothing reads them: they age like any output.
    """
    keep: set[Path] = set()
    async with connection.execute(
        "SELECT id, input_audio, output_format FROM jobs WHERE status IN ('queued', 'running')"
    ) as cursor:
        for job_id, input_audio, output_format in await cursor.fetchall():
            if input_audio is not None:
                keep.add(Path(input_audio))
            keep |= job_outputs(outputs_dir, job_id, output_format)
    async with connection.execute(
        "SELECT t.piece_path FROM jam_turns t JOIN jams ON jams.id = t.jam_id "
        "WHERE jams.status = 'open' AND t.status = 'done' AND t.piece_path IS NOT NULL "
        "AND t.number = (SELECT MAX(number) FROM jam_turns d WHERE d.jam_id = t.jam_id AND d.status = 'done')"
    ) as cursor:
        for (piece_path,) in await cursor.fetchall():
            keep |= {Path(piece_path), new_part_path_for(piece_path)}
    async with connection.execute(
        "SELECT jobs.id, jobs.output_format, jobs.output_path FROM jam_turns t "
        "JOIN jams ON jams.id = t.jam_id JOIN jobs ON jobs.id = t.job_id "
        "WHERE jams.status = 'open' AND t.status = 'started'"
    ) as cursor:
        for job_id, output_format, output_path in await cursor.fetchall():
            keep |= job_outputs(outputs_dir, job_id, output_format)
            if output_path is not None:
                keep |= {Path(output_path), new_part_path_for(output_path)}
    return keep


def job_outputs(outputs_dir: Path, job_id: int, output_format: str) -> set[Path]:
    """What a job writes in the outputs: the model's file (named by the worker) and, for a
    continuation, the whole piece and its new part (named when the piece is stitched)."""
    made = outputs_dir / f"{job_id}.{output_format}"
    piece = made.with_name(f"{made.stem}-piece.wav")
    return {made, piece, new_part_path_for(piece)}


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
