"""The job and batch bookkeeping both inference back ends share, whatever runs the batches.

Every back end (`inference.backends.base.InferenceBackend`) queues submitted jobs as batches, hands
each batch to one free worker, and follows every job on its own to its outcome:
its progress reaches the caller on the event loop (the newest only, when the caller is slower than
the worker), it can be cancelled without disturbing the others, and it ends with its own result or
exception. `JobTracker` is that part; each back end supplies how a cancel reaches a running job.
(A `TrackedJob` is a job as the back end follows it; the bot's own `bot.storage.jobs.Job` is its row.)

Importing this module never imports torch, ray or the engine.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from inference.errors import GenerationCancelled, GenerationFailed
from inference.protocol import ErrorKind, GenerationError, GenerationResult, Progress, Started
from inference.request import GenerationRequest, RequestError

__all__ = ["Batch", "JobSubmission", "JobTracker", "ProgressCallback", "TrackedJob", "error_for"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], Awaitable[None] | None]

# What runs a batch: a worker process or a Ray replica, as the back end represents it.
WorkerT = TypeVar("WorkerT")


@dataclass(frozen=True)
class JobSubmission:
    """One job handed to `InferenceBackend.submit_batch`.

    `on_progress(steps_done, steps_total)` runs on the event loop; it may be a coroutine function.
    `on_started()` runs on the event loop when a worker takes the job (its batch), e.g. to time it
    from then rather than from the submission (it may wait for a worker first).
    """

    job_id: str
    request: GenerationRequest
    on_progress: ProgressCallback | None = None
    on_started: Callable[[], None] | None = None


@dataclass(eq=False)
class TrackedJob(Generic[WorkerT]):
    job_id: str
    request: GenerationRequest
    on_progress: ProgressCallback | None
    batch: Batch[WorkerT]
    on_started: Callable[[], None] | None = None
    # Events for this job (`Started`, `Progress`, its outcome or an exception), consumed by `follow`.
    events: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)


@dataclass(eq=False)
class Batch(Generic[WorkerT]):
    """Jobs that run together on one worker; a job cancelled while it waits leaves the batch."""

    jobs: list[TrackedJob[WorkerT]]
    output_dir: Path
    worker: WorkerT | None = None
    # Jobs on the worker that have not had their outcome yet; the worker is free when empty.
    unfinished: set[str] = field(default_factory=set)

    def unfinished_jobs(self) -> list[TrackedJob[WorkerT]]:
        return [job for job in self.jobs if job.job_id in self.unfinished]


class JobTracker(Generic[WorkerT]):
    """The submitted jobs of one client: the batches waiting for a worker and every job not yet followed
    to its end. `send_cancel(job)` passes a cancel on to the worker running the job (False when no
    worker runs it any more)."""

    def __init__(self, send_cancel: Callable[[TrackedJob[WorkerT]], bool]) -> None:
        self.waiting: collections.deque[Batch[WorkerT]] = collections.deque()
        self.jobs: dict[str, TrackedJob[WorkerT]] = {}
        self._send_cancel = send_cancel

    def add_batch(
        self, submissions: Sequence[JobSubmission], output_dir: str | Path
    ) -> list[TrackedJob[WorkerT]]:
        """Queue the submissions as one waiting batch; its jobs, in order."""
        batch: Batch[WorkerT] = Batch(jobs=[], output_dir=Path(output_dir))
        jobs = self.add_to_batch(batch, submissions)
        self.waiting.append(batch)
        return jobs

    def add_to_batch(
        self, batch: Batch[WorkerT], submissions: Sequence[JobSubmission]
    ) -> list[TrackedJob[WorkerT]]:
        """Follow the submissions as jobs of `batch` (a new one, or one that runs and they join); the new
        jobs, in order."""
        if not submissions:
            raise ValueError("a batch needs at least one job")
        job_ids = [submission.job_id for submission in submissions]
        for job_id in job_ids:
            if job_id in self.jobs or job_ids.count(job_id) > 1:
                raise ValueError(f"job {job_id!r} is already submitted")
        added = [
            TrackedJob(
                submission.job_id, submission.request, submission.on_progress, batch, submission.on_started
            )
            for submission in submissions
        ]
        batch.jobs.extend(added)
        self.jobs.update((job.job_id, job) for job in added)
        return added

    def requeue_as_batch(self, jobs: Sequence[TrackedJob[WorkerT]], output_dir: str | Path) -> None:
        """Followed jobs that a worker did not take after all leave the batch they were sent to join
        and wait again, as a batch of their own."""
        batch: Batch[WorkerT] = Batch(jobs=list(jobs), output_dir=Path(output_dir))
        for job in jobs:
            job.batch.jobs.remove(job)
            job.batch.unfinished.discard(job.job_id)
            job.batch = batch
        self.waiting.append(batch)

    def join_running_batch(
        self,
        running_job_ids: Sequence[str],
        submissions: Sequence[JobSubmission],
        is_alive: Callable[[WorkerT], bool],
    ) -> list[TrackedJob[WorkerT]] | None:
        """Follow the submissions as jobs of the batch that runs the first of `running_job_ids` still
        running on a live worker, unfinished from now on (should that worker die before it takes them,
        they fail with its batch); None when no such batch runs any more."""
        for job_id in running_job_ids:
            job = self.jobs.get(job_id)
            if job is None or job_id not in job.batch.unfinished:
                continue
            batch, worker = job.batch, job.batch.worker
            if worker is not None and is_alive(worker):
                joined = self.add_to_batch(batch, submissions)
                batch.unfinished.update(joined_job.job_id for joined_job in joined)
                return joined
        return None

    def fail_waiting(self, error: Callable[[], BaseException]) -> None:
        """End every job still waiting for a worker with a fresh `error()`."""
        while self.waiting:
            for job in self.waiting.popleft().jobs:
                job.events.put_nowait(error())

    def cancel(self, job_id: str) -> bool:
        """Cancel a waiting or running job: True when the cancel was passed on, False for a job that is
        not followed (finished or never seen)."""
        job = self.jobs.get(job_id)
        if job is None:
            return False
        if self.leave_waiting_batch(job):
            job.events.put_nowait(GenerationCancelled("Cancelled before it started."))
            return True
        return self._send_cancel(job)

    def leave_waiting_batch(self, job: TrackedJob[WorkerT]) -> bool:
        """Take a job out of its batch if that batch has not gone to a worker yet."""
        batch = job.batch
        if batch.worker is not None or job not in batch.jobs:
            return False
        batch.jobs.remove(job)
        if not batch.jobs and batch in self.waiting:
            self.waiting.remove(batch)
        return True

    def follow_all(self, jobs: Sequence[TrackedJob[WorkerT]]) -> list[asyncio.Task[GenerationResult]]:
        """One task per job that follows it to its outcome (`follow`), in order."""
        return [asyncio.create_task(self.follow(job), name=f"inference-job-{job.job_id}") for job in jobs]

    async def follow(self, job: TrackedJob[WorkerT]) -> GenerationResult:
        """Deliver the job's progress until its outcome: its result, or the exception it ended with."""
        try:
            return await _await_outcome(job)
        except asyncio.CancelledError:
            # The caller gave up on the job (its task was cancelled): stop the worker's work too.
            if not self.leave_waiting_batch(job):
                self._send_cancel(job)
            raise
        finally:
            self.jobs.pop(job.job_id, None)


async def _await_outcome(job: TrackedJob[Any]) -> GenerationResult:
    held_back: Any = None
    while True:
        event = held_back if held_back is not None else await job.events.get()
        held_back = None
        if isinstance(event, Progress):
            # A slow callback should see the newest progress, not a backlog of stale ones.
            while not job.events.empty():
                newer = job.events.get_nowait()
                if not isinstance(newer, Progress):
                    held_back = newer
                    break
                event = newer
            await _report_progress(job, event)
        elif isinstance(event, Started):
            _report_start(job)
        elif isinstance(event, GenerationResult):
            return event
        elif isinstance(event, GenerationError):
            raise error_for(event)
        elif isinstance(event, BaseException):
            raise event
        else:  # pragma: no cover - a protocol mismatch between client and worker
            raise RuntimeError(f"unexpected worker event {event!r}")


def _report_start(job: TrackedJob[Any]) -> None:
    if job.on_started is None:
        return
    try:
        job.on_started()
    except Exception:  # like a broken progress display, it must not fail the generation
        logger.exception("start callback for job %s failed", job.job_id)


async def _report_progress(job: TrackedJob[Any], progress: Progress) -> None:
    if job.on_progress is None:
        return
    try:
        outcome = job.on_progress(progress.steps_done, progress.steps_total)
        if inspect.isawaitable(outcome):
            await outcome
    except Exception:  # a broken progress display must not fail the generation
        logger.exception("progress callback for job %s failed", job.job_id)


def error_for(event: GenerationError) -> Exception:
    """The exception a job's caller sees for the worker's error message."""
    if event.kind is ErrorKind.REQUEST:
        return RequestError(event.message)
    if event.kind is ErrorKind.CANCELLED:
        return GenerationCancelled(event.message)
    return GenerationFailed(event.message)
