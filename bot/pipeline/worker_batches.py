"""The batches on the workers: which worker each holds, which may still be joined, and how long a free
worker waits for the next batch to fill.

A batch holds its worker while any of its jobs (joined ones included) is on it. With continuous
batching, queued jobs that share a running batch's key join it between two decoder steps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from bot.pipeline.scheduler import ScheduledJob


@dataclass(eq=False)
class WorkerBatch:
    """A batch on a worker: it holds the worker while any of its jobs (joined ones included) runs."""

    # Its jobs still on the worker (or about to be), with their seconds of audio.
    members: dict[int, float]
    # The batch key queued jobs may join it with (continuous batching); None: nobody joins it.
    joinable_key: Hashable | None

    @property
    def longest_seconds(self) -> float:
        return max(self.members.values())


class WorkerBatches:
    """The batches on `slots` workers (one each), and when each queued job arrived, for the batch wait."""

    def __init__(self, *, slots: int, batch_wait_s: float) -> None:
        self.slots = slots
        self.batch_wait_s = batch_wait_s
        self._on_workers: list[WorkerBatch] = []
        # When each queued job arrived (loop time), for the batch wait.
        self._queued_at: dict[int, float] = {}

    @property
    def all_busy(self) -> bool:
        return len(self._on_workers) >= self.slots

    def arrived(self, job_id: int) -> None:
        """A job was queued now (a resumed or retried one never was: it has waited long enough)."""
        self._queued_at[job_id] = asyncio.get_running_loop().time()

    def dequeued(self, job_id: int) -> None:
        self._queued_at.pop(job_id, None)

    def wait_left(
        self, batch: list[ScheduledJob], can_grow: Callable[[list[ScheduledJob]], bool]
    ) -> float | None:
        """None when nothing is queued; else how long a free worker should still wait for more jobs to
        join the next batch (`batch`, as planned now; 0: start it now).

        Only a batch that could still grow waits, and only until `batch_wait_s` after its first job
        arrived: a job that waited behind a running batch starts as soon as a worker is free.
        """
        if not batch:
            return None
        if self.batch_wait_s <= 0 or not can_grow(batch):
            return 0.0
        arrived = self._queued_at.get(batch[0].job_id)
        if arrived is None:  # resumed after a restart or retried: it has waited long enough
            return 0.0
        return max(0.0, arrived + self.batch_wait_s - asyncio.get_running_loop().time())

    def place(self, batch: list[ScheduledJob], joinable_key: Hashable | None) -> WorkerBatch:
        """`batch` takes a worker; `joinable_key`: the key queued jobs may join it with (None: none may)."""
        for queued in batch:
            self.dequeued(queued.job_id)
        on_worker = WorkerBatch({queued.job_id: queued.audio_seconds for queued in batch}, joinable_key)
        self._on_workers.append(on_worker)
        return on_worker

    def joinable(self) -> list[WorkerBatch]:
        return [on_worker for on_worker in self._on_workers if on_worker.joinable_key is not None]

    def join(self, on_worker: WorkerBatch, joiners: list[ScheduledJob]) -> None:
        for queued in joiners:
            self.dequeued(queued.job_id)
            on_worker.members[queued.job_id] = queued.audio_seconds

    def leave(self, job_id: int) -> bool:
        """The job left its worker (its outcome came, or it never got there); True when that freed the
        worker (every job of its batch has left)."""
        freed = False
        for on_worker in list(self._on_workers):
            if on_worker.members.pop(job_id, None) is not None and not on_worker.members:
                self._on_workers.remove(on_worker)
                freed = True
        return freed
