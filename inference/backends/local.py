"""The bot's handle on the inference worker processes: submit jobs, alone or as a batch, and await them.

`InferenceClient` starts one worker process ("spawn") per device (see `inference.backends.placement`:
`processes = "auto"` is one per visible GPU, `devices` an explicit list) and hands each one batch at
a time (a single job is a batch of one), preferring a free worker that already holds the batch's model. Every job of a batch is followed on its own: its progress is
delivered on the event loop, it can be cancelled without disturbing the others, and it ends with its
own result or exception. If a worker dies (kill -9, out of memory), every unfinished job of its batch
fails with `WorkerCrashed` within moments and a replacement worker is started for the next batches;
`kill_worker_of(job_id)` brings that about on purpose for a worker presumed hung.

Importing this module never imports torch or the engine: the bot process uses it and stays light.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Literal

from inference.backends import placement
from inference.backends import worker as worker_module
from inference.backends.job_tracking import Batch, Job, JobSubmission, JobTracker, ProgressCallback
from inference.errors import GenerationCancelled, GenerationFailed, WorkerCrashed, WorkerStartError
from inference.protocol import (
    BatchJob,
    Cancel,
    GenerationError,
    GenerationResult,
    Progress,
    Ready,
    Shutdown,
    Started,
    StartupFailed,
    SubmitBatch,
)
from inference.request import GenerationRequest
from inference.settings import EngineSettings

__all__ = [
    "GenerationCancelled",
    "GenerationFailed",
    "InferenceClient",
    "JobSubmission",
    "ProgressCallback",
    "WorkerCrashed",
    "WorkerStartError",
    "WorkerStatus",
]

logger = logging.getLogger(__name__)

# Importing torch and building the engine takes seconds; loading happens later, per job.
DEFAULT_START_TIMEOUT_S = 180.0
# A worker asked to shut down gets this long to finish before it is terminated, then killed.
DEFAULT_CLOSE_TIMEOUT_S = 10.0
# A worker whose pipe closed gets this long to exit before it is killed.
EXIT_GRACE_S = 10.0
# Replacement workers that keep failing to start are retried with a growing pause, up to this.
MAX_RESTART_BACKOFF_S = 60.0
# Model versions remembered per worker (most recent first): about what a model cache holds.
REMEMBERED_MODELS = 4


@dataclass(frozen=True)
class WorkerStatus:
    """A live worker as the client sees it (for logs, admins and tests)."""

    name: str
    pid: int | None
    # The device it was started on, and the one it reported in `Ready` ("" until then).
    device: str
    ready_device: str
    # Model versions it ran recently, the most recent first.
    models: tuple[str, ...]
    batches_run: int
    jobs_run: int


# Jobs and batches as this client tracks them: a batch runs on one worker process.
_Job = Job["_WorkerProcess"]
_Batch = Batch["_WorkerProcess"]


def _batch_message(batch: _Batch) -> SubmitBatch:
    return SubmitBatch(tuple(BatchJob(job.job_id, job.request) for job in batch.jobs), str(batch.output_dir))


@dataclass(eq=False)
class _WorkerProcess:
    name: str
    process: BaseProcess
    conn: Connection
    ready: asyncio.Future[Ready]
    device: str
    batch: _Batch | None = None
    models: list[str] = field(default_factory=list)
    batches_run: int = 0
    jobs_run: int = 0
    exited: bool = False
    reader: threading.Thread | None = None
    # Set by the reader thread once it has reaped the process. Only that thread waits on the
    # process: two threads calling waitpid on one child race, and the loser sees it as alive.
    reaped: threading.Event = field(default_factory=threading.Event)
    # Killed by `kill_worker_of` (its death is on the way): another job of its batch needs no new kill.
    killed: bool = False

    def send_signal(self, signum: int) -> None:
        """Send a signal unless the process is already reaped (its pid may then belong to another)."""
        if self.reaped.is_set() or self.process.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signum)

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode if self.reaped.is_set() else None

    @property
    def is_ready(self) -> bool:
        return self.ready.done() and not self.ready.cancelled() and self.ready.exception() is None


@dataclass(frozen=True)
class _WorkerExited:
    """Posted by a reader thread when its worker's pipe closed or its process ended."""


class InferenceClient:
    """Runs generation jobs (alone or in batches) on worker processes and awaits their results from asyncio code."""

    def __init__(
        self,
        settings: EngineSettings,
        *,
        processes: int | Literal["auto"] = 1,
        devices: Sequence[str] = (),
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S,
    ) -> None:
        if processes != "auto" and processes < 1:
            raise ValueError('processes must be at least 1, or "auto"')
        self._settings = settings
        self._processes = processes
        self._requested_devices = tuple(devices)
        # One entry per worker, decided by start(): the device each worker is pinned to.
        self._devices: list[str] = []
        self._start_timeout_s = start_timeout_s
        self._close_timeout_s = close_timeout_s
        self._context = multiprocessing.get_context("spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[_WorkerProcess] = []
        self._tracker: JobTracker[_WorkerProcess] = JobTracker(self._send_cancel)
        self._names = itertools.count(1)
        self._restarts: set[asyncio.Task[None]] = set()
        self._started = False
        self._closing = False

    # -- properties for the scheduler -----------------------------------------------------------
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
    def worker_count(self) -> int:
        """How many workers run batches at once (known once start() has decided the devices)."""
        if not self._devices:
            raise RuntimeError("the worker count is known once start() has run")
        return len(self._devices)

    @property
    def workers(self) -> list[WorkerStatus]:
        """The live workers, in start order."""
        return [
            WorkerStatus(
                name=w.name,
                pid=w.process.pid,
                device=w.device,
                ready_device=w.ready.result().device if w.is_ready else "",
                models=tuple(w.models),
                batches_run=w.batches_run,
                jobs_run=w.jobs_run,
            )
            for w in self._workers
            if not w.exited
        ]

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for logs, admins and tests)."""
        return [w.process.pid for w in self._workers if not w.exited and w.process.pid is not None]

    # -- life cycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the worker processes and wait until each has built its engine."""
        if self._started:
            raise RuntimeError("InferenceClient.start() was already called")
        self._loop = asyncio.get_running_loop()
        self._started = True
        self._devices = await self._plan_devices()
        workers = [self._spawn_worker(device) for device in self._devices]
        try:
            await asyncio.gather(*(self._wait_ready(w) for w in workers))
        except BaseException:
            await self.close()
            raise

    async def _plan_devices(self) -> list[str]:
        engine_device = self._settings.engine.device
        gpu_count = 0
        if placement.needs_gpu_count(self._processes, self._requested_devices, engine_device):
            gpu_count = await asyncio.to_thread(placement.visible_gpu_count)
        devices = placement.worker_devices(self._processes, self._requested_devices, engine_device, gpu_count)
        logger.info("starting %d inference worker(s) on %s", len(devices), ", ".join(devices))
        return devices

    async def __aenter__(self) -> InferenceClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Cancel the queued jobs, ask every worker to stop, and make sure no process is left."""
        if self._closing:
            return
        self._closing = True
        for task in list(self._restarts):
            task.cancel()
        self._tracker.fail_waiting(lambda: GenerationCancelled("The inference client is shutting down."))
        for worker in self._workers:
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(Shutdown())
        await asyncio.gather(*(asyncio.to_thread(self._stop_process, w) for w in self._workers))
        for worker in list(self._workers):
            self._worker_gone(worker)
        self._workers.clear()

    def _stop_process(self, worker: _WorkerProcess) -> None:
        # Runs in a thread: waiting blocks. Graceful first, then SIGTERM, then SIGKILL; the reader
        # thread reaps the process in every case.
        if not worker.reaped.wait(self._close_timeout_s):
            logger.warning("%s did not stop in %.0f s; terminating it", worker.name, self._close_timeout_s)
            worker.send_signal(signal.SIGTERM)
            if not worker.reaped.wait(5.0):
                worker.send_signal(signal.SIGKILL)
                worker.reaped.wait(5.0)
        if worker.reader is not None:
            worker.reader.join(5.0)

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
        if not self._started or self._closing:
            raise RuntimeError("the inference client is not running (call start() first)")
        joined = self._tracker.join_running_batch(running_job_ids, jobs, lambda worker: not worker.exited)
        if joined is None:
            return self.submit_batch(jobs, output_dir)
        worker = joined[0].batch.worker
        assert worker is not None
        worker.jobs_run += len(joined)
        message = SubmitBatch(
            tuple(BatchJob(job.job_id, job.request) for job in joined), str(output_dir), join=True
        )
        with contextlib.suppress(OSError, ValueError):  # a dead worker's reader reports its death
            worker.conn.send(message)
        return self._tracker.follow_all(joined)

    def _add_batch(self, submissions: Sequence[JobSubmission], output_dir: str | Path) -> list[_Job]:
        if not self._started or self._closing:
            raise RuntimeError("the inference client is not running (call start() first)")
        jobs = self._tracker.add_batch(submissions, output_dir)
        self._dispatch()
        return jobs

    async def cancel(self, job_id: str) -> bool:
        """Cancel a waiting or running job: True when the cancel was passed on, False for a job the
        client does not know (finished or never seen). A job finishing at that very moment still
        returns its result. The other jobs of its batch go on."""
        return self._tracker.cancel(job_id)

    def kill_worker_of(self, job_id: str) -> bool:
        """Kill (SIGKILL) the worker process running this job, presumed hung: as after any crash, every
        unfinished job of its batch fails with WorkerCrashed and a replacement worker starts. False when
        no worker is running the job (it is still waiting for one, has finished, or is unknown)."""
        job = self._tracker.jobs.get(job_id)
        if job is None:
            return False
        batch, worker = job.batch, job.batch.worker
        if worker is None or worker.exited or job_id not in batch.unfinished:
            return False
        if worker.killed:
            return True
        others = (
            f" and {len(batch.unfinished) - 1} other job(s) of its batch" if len(batch.unfinished) > 1 else ""
        )
        logger.error(
            "killing %s (pid %s), which runs job %s%s", worker.name, worker.process.pid, job_id, others
        )
        worker.killed = True
        worker.send_signal(signal.SIGKILL)
        return True

    def _send_cancel(self, job: _Job) -> bool:
        worker = job.batch.worker
        if worker is None or worker.exited or job.job_id not in job.batch.unfinished:
            return False
        with contextlib.suppress(OSError, ValueError):
            worker.conn.send(Cancel(job.job_id))
        return True

    def _dispatch(self) -> None:
        """Hand waiting batches to free workers (oldest batch first), each to a free worker that
        holds its model where there is one."""
        free = [w for w in self._workers if w.batch is None and not w.exited and w.is_ready]
        waiting = self._tracker.waiting
        while waiting and free:
            batch = waiting[0]
            model_version = batch.jobs[0].request.model_version
            choice = placement.choose_worker(
                [placement.FreeWorker(w.name, tuple(w.models)) for w in free], model_version
            )
            worker = next(w for w in free if w.name == choice.name)
            free.remove(worker)
            try:
                worker.conn.send(_batch_message(batch))
            except (OSError, ValueError):
                # The worker died between its last message and now; its reader will report it.
                continue
            waiting.popleft()
            worker.batch = batch
            batch.worker = worker
            batch.unfinished = {job.job_id for job in batch.jobs}
            worker.batches_run += 1
            worker.jobs_run += len(batch.jobs)
            if model_version in worker.models:
                worker.models.remove(model_version)
            worker.models.insert(0, model_version)
            del worker.models[REMEMBERED_MODELS:]

    # -- worker processes -----------------------------------------------------------------------
    def _spawn_worker(self, device: str) -> _WorkerProcess:
        assert self._loop is not None
        name = f"inference-worker-{next(self._names)}"
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        # Each worker is pinned to its device; its model cache budget is that device's.
        settings = self._settings.model_copy(
            update={"engine": self._settings.engine.model_copy(update={"device": device})}
        )
        process = self._context.Process(
            target=worker_module.main, args=(child_conn, settings), name=name, daemon=True
        )
        process.start()
        # Only the child holds its end now, so the pipe reports EOF as soon as the child dies.
        child_conn.close()
        worker = _WorkerProcess(name, process, parent_conn, self._loop.create_future(), device)
        # A replacement that times out may report its failure later, when nobody awaits it.
        worker.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._workers.append(worker)
        worker.reader = threading.Thread(
            target=self._read_events, args=(worker,), name=f"{name}-reader", daemon=True
        )
        worker.reader.start()
        logger.info("started %s (pid %s) on %s", name, process.pid, device)
        return worker

    async def _wait_ready(self, worker: _WorkerProcess) -> Ready:
        try:
            ready = await asyncio.wait_for(asyncio.shield(worker.ready), self._start_timeout_s)
        except TimeoutError:
            raise WorkerStartError(
                f"{worker.name} was not ready after {self._start_timeout_s:.0f} s (is the device busy or "
                "the machine out of memory?)"
            ) from None
        logger.info("%s ready on %s (%s)", worker.name, ready.device, ready.dtype)
        return ready

    def _read_events(self, worker: _WorkerProcess) -> None:
        """Reader thread: forward the worker's messages to the loop; notice its death at once."""
        conn, sentinel = worker.conn, worker.process.sentinel
        while True:
            try:
                ready = wait([conn, sentinel])
                if conn in ready:
                    event = conn.recv()
                elif conn.poll():
                    continue  # died after writing: deliver what it wrote before reporting the death
                else:
                    break
            except (EOFError, OSError):
                break
            self._post(worker, event)
        # The pipe can close a moment before the process ends (a worker that failed to start is
        # still tearing down): reap it before reporting, so no process outlives the report. One
        # that closed its pipe but lingers can do nothing useful any more.
        worker.process.join(EXIT_GRACE_S)
        if worker.process.exitcode is None:
            logger.warning("%s closed its pipe but did not exit; killing it", worker.name)
            worker.process.kill()
            worker.process.join()
        worker.reaped.set()
        self._post(worker, _WorkerExited())

    def _post(self, worker: _WorkerProcess, event: object) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody is listening
            self._loop.call_soon_threadsafe(self._on_event, worker, event)

    def _on_event(self, worker: _WorkerProcess, event: object) -> None:
        if isinstance(event, Ready):
            if not worker.ready.done():
                worker.ready.set_result(event)
            self._dispatch()
        elif isinstance(event, StartupFailed):
            logger.error("%s failed to start:\n%s", worker.name, event.details)
            if not worker.ready.done():
                worker.ready.set_exception(
                    WorkerStartError(f"{worker.name} failed to start: {event.message}")
                )
        elif isinstance(event, _WorkerExited):
            self._worker_gone(worker)
        elif isinstance(event, Started | Progress | GenerationResult | GenerationError):
            job = self._tracker.jobs.get(event.job_id)
            if job is not None:
                job.events.put_nowait(event)
            batch = worker.batch
            if isinstance(event, GenerationResult | GenerationError) and batch is not None:
                batch.unfinished.discard(event.job_id)
                if not batch.unfinished:
                    worker.batch = None
                    self._dispatch()
        else:
            logger.warning("%s sent an unknown event %r", worker.name, event)

    def _worker_gone(self, worker: _WorkerProcess) -> None:
        if worker.exited:
            return
        worker.exited = True
        exitcode = worker.exitcode
        with contextlib.suppress(OSError):
            worker.conn.close()
        if not worker.ready.done():
            worker.ready.set_exception(
                WorkerStartError(
                    f"{worker.name} exited with code {exitcode} before it was ready "
                    "(its traceback, if any, is in the log above)"
                )
            )
        batch, worker.batch = worker.batch, None
        lost = [] if batch is None else batch.unfinished_jobs()
        if batch is not None:
            batch.unfinished.clear()
        if self._closing:
            for job in lost:
                job.events.put_nowait(GenerationCancelled("The inference client is shutting down."))
            return
        logger.error("%s (pid %s) died with exit code %s", worker.name, worker.process.pid, exitcode)
        for job in lost:
            others = f" in a batch of {len(lost)}" if len(lost) > 1 else ""
            job.events.put_nowait(
                WorkerCrashed(
                    f"The inference worker died while running job {job.job_id}{others} (exit code {exitcode}).",
                    running_jobs=len(lost),
                )
            )
        if worker in self._workers:
            self._workers.remove(worker)
        if worker.ready.done() and worker.is_ready:
            # A worker that served jobs and then died is replaced; one that never became ready is
            # the start-up's failure to report (start() raises it) or the restart loop's to retry.
            self._schedule_restart(worker.device)

    def _schedule_restart(self, device: str, backoff_s: float = 0.0) -> None:
        if self._closing:
            return
        task = asyncio.ensure_future(self._restart(device, backoff_s))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _restart(self, device: str, backoff_s: float) -> None:
        """Start a replacement worker on the device of the one that died."""
        if backoff_s:
            await asyncio.sleep(backoff_s)
        if self._closing:
            return
        worker: _WorkerProcess | None = None
        try:
            worker = self._spawn_worker(device)
            await self._wait_ready(worker)
        except Exception as exc:
            logger.error("replacement worker failed to start: %s", exc)
            if worker is not None:
                worker.send_signal(signal.SIGKILL)
                if worker in self._workers:
                    self._workers.remove(worker)
            if not any(w.is_ready and not w.exited for w in self._workers):
                # No worker can take the waiting jobs: fail them rather than leave them hanging.
                message = f"No inference worker is running: {exc}"
                self._tracker.fail_waiting(lambda: WorkerCrashed(message))
            self._schedule_restart(device, min(MAX_RESTART_BACKOFF_S, max(1.0, backoff_s * 2)))
        else:
            self._dispatch()
