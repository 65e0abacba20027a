"""The local back end: inference worker processes on this machine, one batch at a time each.

`InferenceClient` starts one worker process per device (see `inference.backends.placement`:
`processes = "auto"` is one per visible GPU, `devices` an explicit list) and hands each one batch at
a time (a single job is a batch of one), preferring a free worker that already holds the batch's
model. What every back end shares (jobs followed one by one, a dead worker's jobs failed and the
worker replaced) is `inference.backends.base.InferenceBackend`; here a worker dying (kill -9, out of
memory) is noticed within moments by a reader thread per worker, which also passes on its messages;
`kill_worker_of(job_id)` brings that about on purpose for a worker presumed hung.

Workers are forked from multiprocessing's fork server, which has imported torch and the engine once
(`inference.backends.worker_preload`), so a worker (and a replacement after a crash) starts in a fraction of a second
instead of the ~5 s of CPU that importing them costs a "spawn" process. Forking the fork server is
safe where forking the bot would not be: it has run no torch operation, started no thread and
touched no GPU. Like a spawned process, a worker gets the environment the bot had when the fork
server started (at the first worker), never the bot's event loop, sockets or memory.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Literal, Self

from inference import protocol
from inference.backends import placement
from inference.backends import worker as worker_module
from inference.backends.base import BackendOptions, InferenceBackend, WorkerStatus, at_least_one
from inference.backends.job_tracking import Batch, JobSubmission, ProgressCallback, TrackedJob
from inference.errors import GenerationCancelled, GenerationFailed, WorkerCrashed, WorkerStartError
from inference.settings import EngineSettings

# What the fork server imports before it forks the first worker (torch, transformers' MusicGen
# classes, the engine): a module of imports only.
WORKER_PRELOAD = ("inference.backends.worker_preload",)

__all__ = [
    "GenerationCancelled",
    "GenerationFailed",
    "InferenceClient",
    "JobSubmission",
    "ProgressCallback",
    "WorkerCrashed",
    "WorkerStartError",
    "WorkerStatus",
    "worker_process_context",
]

logger = logging.getLogger(__name__)

# Importing torch and building the engine takes seconds; loading happens later, per job.
DEFAULT_START_TIMEOUT_S = 180.0
# A worker asked to shut down gets this long to finish before it is terminated, then killed.
DEFAULT_CLOSE_TIMEOUT_S = 10.0
# A worker whose pipe closed gets this long to exit before it is killed.
EXIT_GRACE_S = 10.0
# Model versions remembered per worker (most recent first): about what a model cache holds.
REMEMBERED_MODELS = 4


@dataclass(frozen=True)
class _WorkerExited:
    """Posted by a reader thread when its worker's pipe closed or its process ended."""


@dataclass(eq=False)
class _WorkerProcess:
    """One worker process, its pipe, and the thread that reads the pipe and reaps the process."""

    name: str
    process: BaseProcess
    conn: Connection
    ready: asyncio.Future[protocol.Ready]
    device: str
    batch: Batch[_WorkerProcess] | None = None
    models: list[str] = field(default_factory=list)
    # The decoder kernels of each model version it ran, as it reported them.
    kernels: dict[str, str] = field(default_factory=dict)
    batches_run: int = 0
    jobs_run: int = 0
    exited: bool = False
    reader: threading.Thread | None = None
    # Set by the reader thread once it has reaped the process. Only that thread waits on the
    # process: two threads calling waitpid on one child race, and the loser sees it as alive.
    reaped: threading.Event = field(default_factory=threading.Event)
    # Killed by `kill_worker_of` (its death is on the way): another job of its batch needs no new kill.
    killed: bool = False

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode if self.reaped.is_set() else None

    @property
    def is_ready(self) -> bool:
        return self.ready.done() and not self.ready.cancelled() and self.ready.exception() is None

    def send(self, message: object) -> bool:
        """Send a message down the pipe; False when the pipe is closed (the reader reports the death)."""
        try:
            self.conn.send(message)
        except (OSError, ValueError):
            return False
        return True

    def send_signal(self, signum: int) -> None:
        """Send a signal unless the process is already reaped (its pid may then belong to another)."""
        if self.reaped.is_set() or self.process.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signum)

    def start_reader(self, post: Callable[[_WorkerProcess, object], None]) -> None:
        self.reader = threading.Thread(
            target=self._read_events, args=(post,), name=f"{self.name}-reader", daemon=True
        )
        self.reader.start()

    def _read_events(self, post: Callable[[_WorkerProcess, object], None]) -> None:
        """Reader thread: post the worker's messages as they come; notice its death at once."""
        conn, sentinel = self.conn, self.process.sentinel
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
            post(self, event)
        # The pipe can close a moment before the process ends (a worker that failed to start is
        # still tearing down): reap it before reporting, so no process outlives the report. One
        # that closed its pipe but lingers can do nothing useful any more.
        self.process.join(EXIT_GRACE_S)
        if self.process.exitcode is None:
            logger.warning("%s closed its pipe but did not exit; killing it", self.name)
            self.process.kill()
            self.process.join()
        self.reaped.set()
        post(self, _WorkerExited())

    def stop(self, close_timeout_s: float) -> None:
        """Wait for the process to end after Shutdown (blocks: run in a thread). Graceful first, then
        SIGTERM, then SIGKILL; the reader thread reaps the process in every case."""
        if not self.reaped.wait(close_timeout_s):
            logger.warning("%s did not stop in %.0f s; terminating it", self.name, close_timeout_s)
            self.send_signal(signal.SIGTERM)
            if not self.reaped.wait(5.0):
                self.send_signal(signal.SIGKILL)
                self.reaped.wait(5.0)
        if self.reader is not None:
            self.reader.join(5.0)

    def took(self, batch: Batch[_WorkerProcess]) -> None:
        """Count a batch it took and remember its model (the most recent first)."""
        model_version = batch.jobs[0].request.model_version
        self.batches_run += 1
        self.jobs_run += len(batch.jobs)
        if model_version in self.models:
            self.models.remove(model_version)
        self.models.insert(0, model_version)
        del self.models[REMEMBERED_MODELS:]


def worker_process_context() -> multiprocessing.context.ForkServerContext:
    """The multiprocessing context worker processes start from (its fork server preloaded)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WORKER_PRELOAD))
    return context


class InferenceClient(InferenceBackend[_WorkerProcess]):
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
        super().__init__(settings)
        self._processes = at_least_one(processes, "processes")
        self._requested_devices = tuple(devices)
        # One entry per worker, decided by start(): the device each worker is pinned to.
        self._devices: list[str] = []
        self._start_timeout_s = start_timeout_s
        self._close_timeout_s = close_timeout_s
        self._context = worker_process_context()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._names = itertools.count(1)

    @classmethod
    def from_options(cls, settings: EngineSettings, options: BackendOptions) -> Self:
        return cls(settings, processes=options.processes, devices=options.devices)

    # -- what the scheduler and the admins see --------------------------------------------------
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
                kernels=dict(w.kernels),
            )
            for w in self._workers
            if not w.exited
        ]

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for logs, admins and tests)."""
        return [w.process.pid for w in self._workers if not w.exited and w.process.pid is not None]

    # -- life cycle -----------------------------------------------------------------------------
    async def _start_workers(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._devices = await self._plan_devices()
        workers = [self._spawn_worker(device) for device in self._devices]
        await asyncio.gather(*(self._wait_ready(w) for w in workers))

    async def _plan_devices(self) -> list[str]:
        engine_device = self._settings.engine.device
        gpu_count = 0
        if placement.needs_gpu_count(self._processes, self._requested_devices, engine_device):
            gpu_count = await asyncio.to_thread(placement.visible_gpu_count)
        devices = placement.worker_devices(self._processes, self._requested_devices, engine_device, gpu_count)
        logger.info("starting %d inference worker(s) on %s", len(devices), ", ".join(devices))
        return devices

    async def _stop_workers(self) -> None:
        """Ask every worker to stop and make sure no process is left."""
        for worker in self._workers:
            worker.send(protocol.Shutdown())
        await asyncio.gather(*(asyncio.to_thread(w.stop, self._close_timeout_s) for w in self._workers))
        for worker in list(self._workers):
            self._worker_gone(worker, "the client closed")

    # -- batches, joins, cancels and kills ------------------------------------------------------
    def _choose_worker(self, free: list[_WorkerProcess], batch: Batch[_WorkerProcess]) -> _WorkerProcess:
        """A free worker that holds the batch's model where there is one (`placement.choose_worker`)."""
        choice = placement.choose_worker(
            [placement.FreeWorker(w.name, tuple(w.models)) for w in free], batch.jobs[0].request.model_version
        )
        return next(w for w in free if w.name == choice.name)

    def _hand_over(self, worker: _WorkerProcess, batch: Batch[_WorkerProcess]) -> bool:
        message = protocol.SubmitBatch(
            tuple(protocol.BatchJob(job.job_id, job.request) for job in batch.jobs), str(batch.output_dir)
        )
        if not worker.send(message):
            return False
        worker.took(batch)
        return True

    def _send_joining(
        self, worker: _WorkerProcess, joined: list[TrackedJob[_WorkerProcess]], output_dir: Path
    ) -> None:
        worker.jobs_run += len(joined)
        jobs = tuple(protocol.BatchJob(job.job_id, job.request) for job in joined)
        worker.send(
            protocol.SubmitBatch(jobs, str(output_dir), join=True)
        )  # a dead one's reader reports its death

    def _pass_cancel(self, worker: _WorkerProcess, job_id: str) -> None:
        worker.send(protocol.Cancel(job_id))

    def _kill(self, worker: _WorkerProcess, job: TrackedJob[_WorkerProcess]) -> None:
        """SIGKILL: the reader thread then reports the death as after any crash."""
        if worker.killed:
            return
        unfinished = len(job.batch.unfinished)
        others = f" and {unfinished - 1} other job(s) of its batch" if unfinished > 1 else ""
        logger.error(
            "killing %s (pid %s), which runs job %s%s", worker.name, worker.process.pid, job.job_id, others
        )
        worker.killed = True
        worker.send_signal(signal.SIGKILL)

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
        worker.start_reader(self._post)
        logger.info("started %s (pid %s) on %s", name, process.pid, device)
        return worker

    def _start_replacement(self, gone: _WorkerProcess) -> _WorkerProcess:
        return self._spawn_worker(gone.device)

    async def _wait_ready(self, worker: _WorkerProcess) -> None:
        try:
            ready = await asyncio.wait_for(asyncio.shield(worker.ready), self._start_timeout_s)
        except TimeoutError:
            raise WorkerStartError(
                f"{worker.name} was not ready after {self._start_timeout_s:.0f} s (is the device busy or "
                "the machine out of memory?)"
            ) from None
        logger.info("%s ready on %s (%s)", worker.name, ready.device, ready.dtype)

    def _abort_start(self, worker: _WorkerProcess) -> None:
        worker.send_signal(signal.SIGKILL)  # its reader reports the exit, which releases it

    def _post(self, worker: _WorkerProcess, event: object) -> None:
        """From a reader thread: handle the worker's event on the event loop."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody is listening
            self._loop.call_soon_threadsafe(self._on_event, worker, event)

    def _on_event(self, worker: _WorkerProcess, event: object) -> None:
        if isinstance(event, protocol.Ready):
            if not worker.ready.done():
                worker.ready.set_result(event)
            self._dispatch()
        elif isinstance(event, protocol.KernelsChosen):
            worker.kernels[event.model_version] = event.kernels
        elif isinstance(event, protocol.StartupFailed):
            logger.error("%s failed to start:\n%s", worker.name, event.details)
            if not worker.ready.done():
                worker.ready.set_exception(
                    WorkerStartError(f"{worker.name} failed to start: {event.message}")
                )
        elif isinstance(event, _WorkerExited):
            exitcode = worker.exitcode
            self._worker_gone(
                worker, f"pid {worker.process.pid}, exit code {exitcode}", f" (exit code {exitcode})"
            )
        elif isinstance(event, protocol.Started | protocol.Progress | protocol.JobOutcome):
            job = self._tracker.jobs.get(event.job_id)
            if job is not None:
                job.events.put_nowait(event)
            batch = worker.batch
            if isinstance(event, protocol.JobOutcome) and batch is not None:
                batch.unfinished.discard(event.job_id)
                if not batch.unfinished:
                    worker.batch = None
                    self._dispatch()
        else:
            logger.warning("%s sent an unknown event %r", worker.name, event)

    def _release(self, worker: _WorkerProcess) -> None:
        with contextlib.suppress(OSError):
            worker.conn.close()
        if not worker.ready.done():
            worker.ready.set_exception(
                WorkerStartError(
                    f"{worker.name} exited with code {worker.exitcode} before it was ready "
                    "(its traceback, if any, is in the log above)"
                )
            )
