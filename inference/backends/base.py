"""What the bot needs from an inference back end, and the code every back end shares.

`InferenceBackend` is the bot's handle on the workers, whatever runs them: it queues submitted jobs
as batches, hands each batch to one free worker, follows every job on its own to its outcome
(`inference.backends.job_tracking`), fails the unfinished jobs of a worker that dies and starts a
replacement, retried with a growing pause while it fails to start. A back end adds how its workers
start and end and how a batch, a joining job, a cancel or a kill reaches one:
`inference.backends.local.InferenceClient` (worker processes on this machine) and
`inference.backends.ray.RayInferenceClient` (replicas on a Ray cluster).
`inference.backends.factory.create_backend` builds the one the bot's config names.

Importing this module imports neither back end, nor torch, nor ray.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Protocol, Self, TypeVar

from inference.backends.job_tracking import Batch, JobSubmission, JobTracker, ProgressCallback, TrackedJob
from inference.errors import GenerationCancelled, WorkerCrashed

if TYPE_CHECKING:
    from inference.protocol import GenerationResult
    from inference.request import GenerationRequest
    from inference.settings import EngineSettings

__all__ = [
    "MAX_RESTART_BACKOFF_S",
    "BackendName",
    "BackendOptions",
    "BackendWorker",
    "InferenceBackend",
    "JobSubmission",
    "ProgressCallback",
    "WorkerStatus",
    "at_least_one",
]

logger = logging.getLogger(__name__)

# Replacement workers that keep failing to start are retried with a growing pause, up to this.
MAX_RESTART_BACKOFF_S = 60.0
# What the jobs a closing back end still holds end with.
SHUTTING_DOWN = "The inference client is shutting down."

BackendName = Literal["local", "ray"]


@dataclass(frozen=True)
class BackendOptions:
    """Where the workers run and how many, as the bot's `[worker]` config section says."""

    backend: BackendName = "local"
    # Workers (local processes, Ray replicas): a number, or "auto" for one per GPU.
    processes: int | Literal["auto"] = 1
    # Local only: one worker per listed device; empty: from `processes` and `[engine] device`.
    devices: Sequence[str] = ()
    # Ray only: "" starts a Ray runtime on this machine, "auto" joins this machine's cluster, or an address.
    ray_address: str = ""
    # Ray only: GPUs each replica reserves (None: 1 when the cluster has GPUs, else 0), and CPUs.
    ray_num_gpus: float | None = None
    ray_num_cpus: float = 1.0


@dataclass(frozen=True)
class WorkerStatus:
    """A live worker as its back end sees it (for logs, admins and tests)."""

    name: str
    pid: int | None
    # The device it was started on, and the one it reported in `Ready` ("" until then).
    device: str
    ready_device: str
    # Model versions it ran recently, the most recent first.
    models: tuple[str, ...]
    batches_run: int
    jobs_run: int
    # The decoder kernels of each model version it ran, as it reported them (`KernelsChosen`).
    kernels: Mapping[str, str] = field(default_factory=dict)


class BackendWorker(Protocol):
    """What the shared code reads and writes of a worker (a worker process, a Ray replica)."""

    name: str
    # The batch it runs; None while it is free.
    batch: Batch[Any] | None
    # Set once it has ended (died, killed, or the back end closed).
    exited: bool

    @property
    def is_ready(self) -> bool:
        """It has built its engine and can take batches."""
        ...


WorkerT = TypeVar("WorkerT", bound=BackendWorker)


class InferenceBackend(ABC, Generic[WorkerT]):
    """Runs generation jobs (alone or in batches) on workers and awaits their results from asyncio code."""

    # What the back end calls one of its workers, in logs and in the errors its jobs end with.
    worker_noun: ClassVar[str] = "worker"

    def __init__(self, settings: EngineSettings) -> None:
        self._settings = settings
        self._workers: list[WorkerT] = []
        self._tracker: JobTracker[WorkerT] = JobTracker(self._send_cancel)
        # Replacements being started, joins on their way: cancelled by close().
        self._background: set[asyncio.Task[None]] = set()
        self._started = False
        self._closing = False

    @classmethod
    @abstractmethod
    def from_options(cls, settings: EngineSettings, options: BackendOptions) -> Self:
        """The back end the config's `[worker]` options describe (not started)."""

    # -- what the scheduler and the admins see --------------------------------------------------
    @property
    @abstractmethod
    def worker_count(self) -> int:
        """How many workers run batches at once."""

    @property
    def idle_workers(self) -> int:
        """Workers that are ready and have no batch: how many batches would start right now."""
        idle = sum(1 for w in self._workers if w.is_ready and w.batch is None and not w.exited)
        return max(0, idle - len(self._tracker.waiting))

    @property
    def busy_workers(self) -> int:
        """Workers running a batch."""
        return sum(1 for w in self._workers if w.batch is not None and not w.exited)

    @property
    def workers(self) -> list[WorkerStatus]:
        """The live workers with their devices and models, in start order; empty where the back end
        does not follow them one by one (Ray places its replicas itself)."""
        return []

    # -- life cycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the workers and wait until each has built its engine; if one cannot, close again."""
        if self._started:
            raise RuntimeError(f"{type(self).__name__}.start() was already called")
        self._started = True
        try:
            await self._start_workers()
        except BaseException:
            await self.close()
            raise

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Cancel the queued jobs, end every worker (its jobs end cancelled), leave nothing running."""
        if self._closing:
            return
        self._closing = True
        for task in list(self._background):
            task.cancel()
        self._tracker.fail_waiting(lambda: GenerationCancelled(SHUTTING_DOWN))
        await self._stop_workers()

    # -- jobs -----------------------------------------------------------------------------------
    async def submit(
        self,
        job_id: str,
        request: GenerationRequest,
        output_dir: str | Path,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> GenerationResult:
        """Run one job (a batch of one) and return its result.

        Raises RequestError (the person can fix the request), GenerationCancelled, WorkerCrashed
        (the worker died; a new one is started for the next job) or GenerationFailed (an internal
        error in the engine; the worker goes on). Cancelling the awaiting task cancels the job.
        `on_progress(steps_done, steps_total)` runs on the event loop; it may be a coroutine function.
        """
        (job,) = self._add_batch([JobSubmission(job_id, request, on_progress)], output_dir)
        return await self._tracker.follow(job)

    def submit_batch(
        self, jobs: Sequence[JobSubmission], output_dir: str | Path
    ) -> list[asyncio.Task[GenerationResult]]:
        """Queue jobs to run together as one batch on one worker; one task per job, in the same order.

        Each task ends as `submit()` does for its job alone: its result, or RequestError,
        GenerationCancelled, WorkerCrashed (every unfinished job of the batch) or GenerationFailed.
        A job fails, or is cancelled (`cancel(job_id)`, or cancelling its task), without disturbing
        the others. The caller is expected to group jobs the engine can batch (`request.batch_key`);
        the engine runs any others apart.
        """
        followed = self._add_batch(jobs, output_dir)
        return self._tracker.follow_all(followed)

    def join_batch(
        self, running_job_ids: Sequence[str], jobs: Sequence[JobSubmission], output_dir: str | Path
    ) -> list[asyncio.Task[GenerationResult]]:
        """Add jobs to the batch that runs the first of `running_job_ids` still running (continuous
        batching): its worker takes them in between two decoder steps. When none of them runs any more
        (the batch just ended), the jobs wait as a batch of their own. One task per job, as `submit_batch`.

        The caller is expected to join only jobs that can share that batch (the same `batch_key`); the
        worker runs any others after it.
        """
        self._check_running()
        joined = self._tracker.join_running_batch(running_job_ids, jobs, lambda worker: not worker.exited)
        if joined is None:
            return self.submit_batch(jobs, output_dir)
        worker = joined[0].batch.worker
        assert worker is not None
        self._send_joining(worker, joined, Path(output_dir))
        return self._tracker.follow_all(joined)

    def _add_batch(
        self, submissions: Sequence[JobSubmission], output_dir: str | Path
    ) -> list[TrackedJob[WorkerT]]:
        self._check_running()
        jobs = self._tracker.add_batch(submissions, output_dir)
        self._dispatch()
        return jobs

    def _check_running(self) -> None:
        if not self._started or self._closing:
            raise RuntimeError("the inference client is not running (call start() first)")

    async def cancel(self, job_id: str) -> bool:
        """Cancel a waiting or running job: True when the cancel was passed on, False for a job the
        back end does not know (finished or never seen). A job finishing at that very moment still
        returns its result. The other jobs of its batch go on."""
        return self._tracker.cancel(job_id)

    def kill_worker_of(self, job_id: str) -> bool:
        """Kill the worker running this job, presumed hung: as after any crash, every unfinished job of
        its batch fails with WorkerCrashed and a replacement worker starts. False when no worker is
        running the job (it is still waiting for one, has finished, or is unknown)."""
        job = self._tracker.jobs.get(job_id)
        worker = None if job is None else _worker_running(job)
        if job is None or worker is None:
            return False
        self._kill(worker, job)
        return True

    def _send_cancel(self, job: TrackedJob[WorkerT]) -> bool:
        worker = _worker_running(job)
        if worker is None:
            return False
        self._pass_cancel(worker, job.job_id)
        return True

    def _dispatch(self) -> None:
        """Hand waiting batches to free workers (oldest batch first), each to the free worker
        `_choose_worker` picks."""
        free = [w for w in self._workers if w.batch is None and not w.exited and w.is_ready]
        waiting = self._tracker.waiting
        while waiting and free:
            batch = waiting[0]
            worker = self._choose_worker(free, batch)
            free.remove(worker)
            if not self._hand_over(worker, batch):
                continue  # it died since its last message; its death is reported on its own
            waiting.popleft()
            worker.batch = batch
            batch.worker = worker
            batch.unfinished = {job.job_id for job in batch.jobs}

    def _choose_worker(self, free: list[WorkerT], batch: Batch[WorkerT]) -> WorkerT:
        """The free worker (at least one) that takes `batch`: the first, unless the back end knows better."""
        return free[0]

    # -- workers that end -----------------------------------------------------------------------
    def _worker_gone(self, worker: WorkerT, cause: str, crash_detail: str = "") -> None:
        """A worker ended: its unfinished jobs fail with WorkerCrashed (or end cancelled while the back
        end closes), and one that was ready is replaced. `cause` is logged; `crash_detail` ends the
        jobs' error messages (" (exit code -9)")."""
        if worker.exited:
            return
        worker.exited = True
        if worker in self._workers:
            self._workers.remove(worker)
        self._release(worker)
        batch, worker.batch = worker.batch, None
        lost = [] if batch is None else batch.unfinished_jobs()
        if batch is not None:
            batch.unfinished.clear()
        if self._closing:
            for job in lost:
                job.events.put_nowait(GenerationCancelled(SHUTTING_DOWN))
            return
        logger.error("%s died: %s", worker.name, cause)
        for job in lost:
            others = f" in a batch of {len(lost)}" if len(lost) > 1 else ""
            job.events.put_nowait(
                WorkerCrashed(
                    f"The inference {self.worker_noun} died while running job {job.job_id}{others}"
                    f"{crash_detail}.",
                    running_jobs=len(lost),
                )
            )
        if worker.is_ready:
            # A worker that served jobs and then died is replaced; one that never became ready is
            # the start-up's failure to report (start() raises it) or the restart loop's to retry.
            self._schedule_restart(worker)

    def _schedule_restart(self, gone: WorkerT, backoff_s: float = 0.0) -> None:
        if self._closing:
            return
        task = asyncio.create_task(self._restart(gone, backoff_s), name=f"{gone.name}-replacement")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _restart(self, gone: WorkerT, backoff_s: float) -> None:
        """Start a replacement for a worker that died; while replacements fail to start, try again
        after a pause that doubles up to MAX_RESTART_BACKOFF_S."""
        if backoff_s:
            await asyncio.sleep(backoff_s)
        if self._closing:
            return
        worker: WorkerT | None = None
        try:
            worker = self._start_replacement(gone)
            await self._wait_ready(worker)
        except Exception as exc:
            logger.error("replacement %s failed to start: %s", self.worker_noun, exc)
            if worker is not None:
                if worker in self._workers:
                    self._workers.remove(worker)
                self._abort_start(worker)
            if not any(w.is_ready and not w.exited for w in self._workers):
                # No worker can take the waiting jobs: fail them rather than leave them hanging.
                message = f"No inference {self.worker_noun} is running: {exc}"
                self._tracker.fail_waiting(lambda: WorkerCrashed(message))
            self._schedule_restart(gone, min(MAX_RESTART_BACKOFF_S, max(1.0, backoff_s * 2)))
        else:
            self._dispatch()

    # -- what each back end does its own way ----------------------------------------------------
    @abstractmethod
    async def _start_workers(self) -> None:
        """Start the first workers and wait until each is ready (raise if one cannot start)."""

    @abstractmethod
    async def _stop_workers(self) -> None:
        """End every worker while closing (`_worker_gone` ends their jobs) and release the rest."""

    @abstractmethod
    def _start_replacement(self, gone: WorkerT) -> WorkerT:
        """Start a worker in the place of `gone` (added to `_workers`); `_wait_ready` awaits it."""

    @abstractmethod
    async def _wait_ready(self, worker: WorkerT) -> None:
        """Wait until the worker has built its engine; WorkerStartError when it cannot."""

    @abstractmethod
    def _abort_start(self, worker: WorkerT) -> None:
        """End a replacement that failed to become ready (it is already out of `_workers`)."""

    @abstractmethod
    def _hand_over(self, worker: WorkerT, batch: Batch[WorkerT]) -> bool:
        """Send a waiting batch to a free worker; False when it can no longer take it (it died)."""

    @abstractmethod
    def _send_joining(self, worker: WorkerT, joined: list[TrackedJob[WorkerT]], output_dir: Path) -> None:
        """Send jobs that joined the batch this worker runs (already followed as part of it)."""

    @abstractmethod
    def _pass_cancel(self, worker: WorkerT, job_id: str) -> None:
        """Tell the worker to drop this job of its batch."""

    @abstractmethod
    def _kill(self, worker: WorkerT, job: TrackedJob[WorkerT]) -> None:
        """Kill the worker running `job`, presumed hung; its death is then reported as any other."""

    @abstractmethod
    def _release(self, worker: WorkerT) -> None:
        """Let go of what the back end holds for a worker that ended (a pipe, an actor handle)."""


def at_least_one(count: int | Literal["auto"], name: str) -> int | Literal["auto"]:
    """A number of workers as given: "auto", or at least one (else a ValueError naming `name`)."""
    if count != "auto" and count < 1:
        raise ValueError(f'{name} must be at least 1, or "auto"')
    return count


def _worker_running(job: TrackedJob[WorkerT]) -> WorkerT | None:
    """The live worker running this job; None when no worker runs it (any more)."""
    worker = job.batch.worker
    if worker is None or worker.exited or job.job_id not in job.batch.unfinished:
        return None
    return worker
