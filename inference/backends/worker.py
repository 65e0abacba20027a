"""The inference worker process: one engine, one batch at a time, driven by `inference.protocol`.

`main(conn, settings)` is the target of a worker process forked by `inference.backends.local`. It builds
the engine, sends `Ready`, then runs the submitted batches in order, each as one
`MusicGenEngine.generate_batch` call. A reader thread keeps receiving commands while a batch runs,
so a `Cancel` reaches the engine between two decoder steps and drops that one job from its batch,
and a `SubmitBatch` with `join` set enters the running batch between two steps (continuous batching)
when its jobs can share it.

The worker turns the engine's audio into protocol messages: it normalises and writes each job's
file and answers every job of a batch with exactly one `GenerationResult` or `GenerationError`, as
soon as that job ends.

This module must stay importable without torch: the client references `main` by name, and the bot
process that imports the client never loads torch. The engine is imported inside `main`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Hashable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.errors import GenerationCancelled
from inference.media.ffmpeg import use_ffmpeg
from inference.protocol import (
    BatchJob,
    Cancel,
    ErrorKind,
    GenerationError,
    GenerationResult,
    JobOutcome,
    KernelsChosen,
    Progress,
    Ready,
    Shutdown,
    Started,
    StartupFailed,
    SubmitBatch,
    WorkerEvent,
)
from inference.request import RequestError, batch_key
from inference.settings import EngineSettings

if TYPE_CHECKING:
    from inference.engine.musicgen_engine import GeneratedAudio, MusicGenEngine

logger = logging.getLogger(__name__)

# Progress is sent at most this often per job (plus the first and the last step): a 30 s generation
# has 1500 decoder steps, far more messages than anyone watching needs.
PROGRESS_MIN_INTERVAL_S = 0.1
# Internal error messages cross to the bot, which may show them to an admin; keep them short.
MAX_ERROR_MESSAGE_CHARS = 300


def main(conn: Connection, settings: EngineSettings) -> None:
    """Entry point of a worker process: build the engine, report Ready, serve batches until Shutdown."""
    # Ctrl-C in a terminal reaches the whole process group; the client decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="worker %(process)d %(levelname)s %(name)s: %(message)s"
        )
    try:
        engine, ready = build_engine(settings)
    except BaseException as exc:
        logger.exception("worker failed to start")
        try:
            conn.send(StartupFailed(message=short_message(exc), details=traceback.format_exc()))
        finally:
            conn.close()
        raise SystemExit(1) from None
    worker = _WorkerLoop(conn, engine)
    engine.on_kernels_chosen = lambda version, kernels: worker.send(KernelsChosen(version, kernels))
    worker.send(ready)
    worker.run()


def build_engine(settings: EngineSettings) -> tuple[MusicGenEngine, Ready]:
    """Import torch, check the device, build the engine (models load later, per job)."""
    use_ffmpeg(settings.engine.ffmpeg)
    import torch
    from transformers.utils import logging as transformers_logging

    from inference.checkpoints.loading import resolve_device, resolve_dtype
    from inference.engine import musicgen_engine as engine_module

    # A worker's output goes to the bot's log: weight-loading progress bars are only noise there.
    transformers_logging.disable_progress_bar()

    if settings.engine.cpu_threads > 0:
        torch.set_num_threads(settings.engine.cpu_threads)
    lower_priority(settings.engine.worker_nice)
    # A device that is not there is a configuration error: fail here, before any job is accepted.
    device = resolve_device(settings.engine)
    if device.type == "cuda" and device.index is not None:
        # Allocations that name no device (CUDA graphs, compile, library workspaces) land on this
        # worker's card, not on cuda:0 beside another worker's models.
        torch.cuda.set_device(device)
    dtype = resolve_dtype(settings.engine, device)
    engine = engine_module.MusicGenEngine(settings)
    ready = Ready(device=str(device), dtype=str(dtype).removeprefix("torch."))
    return engine, ready


def lower_priority(nice: int) -> None:
    """Lower this process's scheduling priority by `nice` (`[engine] worker_nice`), so that the bot's
    event loop, at the normal priority, is never kept waiting by a busy model."""
    if nice > 0 and hasattr(os, "nice"):
        os.nice(nice)


def short_message(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    if len(text) > MAX_ERROR_MESSAGE_CHARS:
        text = text[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"
    return text


def job_outcome(
    job: BatchJob, generated: GeneratedAudio | BaseException, output_dir: str | Path
) -> JobOutcome:
    """The message that ends a job: its written file, or why there is none.

    `generated` is what the engine returned for the job (audio, or the exception it failed with).
    Writing happens here, so a full disk fails this job alone.
    """
    from inference.engine.audio import write_generated  # imports torch: not at the top of this module

    if isinstance(generated, RequestError):
        return GenerationError(job.job_id, str(generated), ErrorKind.REQUEST)
    if isinstance(generated, GenerationCancelled):
        return GenerationError(job.job_id, "Cancelled.", ErrorKind.CANCELLED)
    if isinstance(generated, BaseException):
        logger.error("job %s failed", job.job_id, exc_info=generated)
        return GenerationError(job.job_id, short_message(generated), ErrorKind.INTERNAL)
    write_started = time.perf_counter()
    try:
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = write_generated(generated, job.request, folder / f"{job.job_id}.{job.request.output_format}")
    except Exception as exc:
        logger.exception("job %s: writing the audio failed", job.job_id)
        return GenerationError(job.job_id, short_message(exc), ErrorKind.INTERNAL)
    timings = dict(generated.timings)
    timings["write"] = time.perf_counter() - write_started
    timings["total"] = timings.get("total", 0.0) + timings["write"]
    return GenerationResult(
        job_id=job.job_id,
        output_path=str(path),
        output_format=job.request.output_format,
        seed=generated.seed,
        sample_rate=generated.sample_rate,
        channels=generated.channels,
        duration_s=generated.duration_s,
        timings=timings,
    )


class _WorkerLoop:
    """Runs submitted batches one at a time; a reader thread handles Cancel and Shutdown meanwhile."""

    def __init__(self, conn: Connection, engine: MusicGenEngine) -> None:
        self._conn = conn
        self._engine = engine
        self._send_lock = threading.Lock()
        self._state = threading.Condition()
        self._pending: collections.deque[SubmitBatch] = collections.deque()
        self._running_job_ids: set[str] = set()
        # The batch key of the running batch; None when nothing may join it.
        self._running_key: Hashable | None = None
        self._cancel_requested: set[str] = set()
        self._shutting_down = False
        self._client_gone = False

    # -- sending --------------------------------------------------------------------------------
    def send(self, event: WorkerEvent) -> None:
        """Send an event to the client; a client that went away only ends the worker quietly."""
        if self._client_gone:
            return
        try:
            with self._send_lock:
                self._conn.send(event)
        except (BrokenPipeError, EOFError, OSError):
            self._client_gone = True
            with self._state:
                self._shutting_down = True
                self._state.notify_all()

    # -- the command reader (a thread) ----------------------------------------------------------
    def _read_commands(self) -> None:
        while True:
            try:
                command: Any = self._conn.recv()
            except (EOFError, OSError):
                # The client closed its end or died: nobody is left to receive results.
                self._client_gone = True
                command = Shutdown()
            if isinstance(command, SubmitBatch):
                with self._state:
                    self._pending.append(command)
                    self._state.notify_all()
            elif isinstance(command, Cancel):
                self._cancel(command.job_id)
            elif isinstance(command, Shutdown):
                self._shutdown()
                return
            else:
                logger.warning("ignoring unknown command %r", command)

    def _cancel(self, job_id: str) -> None:
        with self._state:
            if job_id in self._running_job_ids:
                # The engine polls this job's is_cancelled() between decoder steps and drops its row.
                self._cancel_requested.add(job_id)
                return
            if not self._drop_waiting_job(job_id):
                return  # already finished (its result is on the way) or never seen
        self.send(GenerationError(job_id, "Cancelled before it started.", ErrorKind.CANCELLED))

    def _drop_waiting_job(self, job_id: str) -> bool:
        """Take a job out of the batch that waits with it (the caller holds the state lock)."""
        for index, batch in enumerate(self._pending):
            if job_id in batch.job_ids:
                rest = tuple(job for job in batch.jobs if job.job_id != job_id)
                if rest:
                    self._pending[index] = dataclasses.replace(batch, jobs=rest)
                else:
                    del self._pending[index]
                return True
        return False

    def _shutdown(self) -> None:
        with self._state:
            self._shutting_down = True
            dropped = [job.job_id for batch in self._pending for job in batch.jobs]
            self._pending.clear()
            self._cancel_requested.update(self._running_job_ids)
            self._state.notify_all()
        for job_id in dropped:
            self.send(GenerationError(job_id, "The worker is shutting down.", ErrorKind.CANCELLED))

    # -- the batch loop (the main thread) -------------------------------------------------------
    def run(self) -> None:
        reader = threading.Thread(target=self._read_commands, name="worker-commands", daemon=True)
        reader.start()
        while True:
            with self._state:
                while not self._pending and not self._shutting_down:
                    self._state.wait()
                if self._shutting_down:
                    break
                batch = self._pending.popleft()
                self._running_job_ids = set(batch.job_ids)
                self._running_key = shared_batch_key(batch)
            try:
                self._run_batch(batch)
            finally:
                with self._state:
                    self._cancel_requested.difference_update(self._running_job_ids)
                    self._running_job_ids = set()
                    self._running_key = None
        with contextlib.suppress(OSError):
            self._conn.close()

    def _is_cancelled(self, job_id: str) -> bool:
        return job_id in self._cancel_requested

    def _run_batch(self, batch: SubmitBatch) -> None:
        run_batch(self._engine, batch, self.send, self._is_cancelled, self._take_joining)

    def _take_joining(self) -> list[SubmitBatch]:
        """Waiting batches sent to join the running one that can share it; they are running from now on."""
        with self._state:
            if self._shutting_down or self._running_key is None:
                return []
            taken = [b for b in self._pending if b.join and shared_batch_key(b) == self._running_key]
            for batch in taken:
                self._pending.remove(batch)
                self._running_job_ids.update(batch.job_ids)
        return taken


def shared_batch_key(batch: SubmitBatch) -> Hashable | None:
    """The batch key all of the batch's jobs share; None when they differ or one runs alone."""
    keys = {batch_key(job.request) for job in batch.jobs}
    return keys.pop() if len(keys) == 1 else None


def progress_reporter(job_id: str, send: Callable[[WorkerEvent], None]) -> Callable[[int, int], None]:
    """The engine's progress callback for one job: `Progress` events, at most one per interval."""
    last_sent_at = 0.0

    def on_progress(steps_done: int, steps_total: int) -> None:
        nonlocal last_sent_at
        now = time.monotonic()
        if steps_done <= 1 or steps_done >= steps_total or now - last_sent_at >= PROGRESS_MIN_INTERVAL_S:
            last_sent_at = now
            send(Progress(job_id, steps_done, steps_total))

    return on_progress


def run_batch(
    engine: MusicGenEngine,
    batch: SubmitBatch,
    send: Callable[[WorkerEvent], None],
    is_cancelled: Callable[[str], bool],
    joining: Callable[[], list[SubmitBatch]] | None = None,
) -> None:
    """Run one batch as one engine call: `Started` and `Progress` for each job, then exactly one
    outcome each, sent as soon as that job ends. `joining()`, asked between decoder steps, hands over
    batches whose jobs join this one (continuous batching); they are answered the same way.

    Shared by the worker process (`send` writes to its pipe) and the Ray replica (`send` queues the
    event for the client's next poll); `is_cancelled(job_id)` is polled between decoder steps.
    """
    from inference.engine.musicgen_engine import EngineJob

    # Every job handed to the engine, by the identity of its EngineJob: the job and its output folder.
    jobs: dict[int, tuple[BatchJob, str, EngineJob]] = {}
    answered: set[str] = set()

    def engine_jobs(submitted: SubmitBatch) -> list[EngineJob]:
        made = []
        for job in submitted.jobs:
            send(Started(job.job_id))
            engine_job = EngineJob(
                request=job.request,
                on_progress=progress_reporter(job.job_id, send),
                is_cancelled=functools.partial(is_cancelled, job.job_id),
            )
            jobs[id(engine_job)] = (job, submitted.output_dir, engine_job)
            made.append(engine_job)
        return made

    def on_outcome(engine_job: EngineJob, generated: GeneratedAudio | Exception) -> None:
        job, output_dir, _ = jobs[id(engine_job)]
        if job.job_id not in answered:
            answered.add(job.job_id)
            send(job_outcome(job, generated, output_dir))

    def joining_jobs() -> list[EngineJob]:
        assert joining is not None
        return [engine_job for submitted in joining() for engine_job in engine_jobs(submitted)]

    first = engine_jobs(batch)
    try:
        engine.generate_batch(first, joining=joining_jobs if joining else None, on_outcome=on_outcome)
    except Exception as exc:
        # The engine answers per job; an exception out of the batch call itself fails what is left.
        logger.exception("batch %s failed", ", ".join(batch.job_ids))
        for job, output_dir, _ in list(jobs.values()):
            if job.job_id not in answered:
                answered.add(job.job_id)
                send(job_outcome(job, exc, output_dir))
