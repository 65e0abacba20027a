"""The inference worker process: one engine, one job at a time, driven by `inference.protocol`.

`main(conn, settings)` is the target of a "spawn" process started by `inference.client`. It builds
the engine, sends `Ready`, then runs the submitted jobs in order. A reader thread keeps receiving
commands while a job runs, so a `Cancel` reaches the engine between two decoder steps.

This module must stay importable without torch: the client references `main` by name, and the bot
process that imports the client never loads torch. The engine is imported inside `main`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.errors import GenerationCancelled
from inference.protocol import (
    Cancel,
    GenerationError,
    GenerationResult,
    Progress,
    Ready,
    Shutdown,
    Started,
    Submit,
    WorkerEvent,
)
from inference.request import RequestError
from inference.settings import EngineSettings

if TYPE_CHECKING:
    from inference.engine import MusicGenEngine

logger = logging.getLogger(__name__)

# Progress is sent at most this often (plus the first and the last step): a 30 s generation has
# 1500 decoder steps, far more messages than anyone watching needs.
PROGRESS_MIN_INTERVAL_S = 0.1
# Internal error messages cross to the bot, which may show them to an admin; keep them short.
MAX_ERROR_MESSAGE_CHARS = 300


@dataclass(frozen=True)
class StartupFailed:
    """Sent instead of `Ready` when the worker cannot build its engine."""

    message: str
    details: str  # the child's traceback, for the log


def main(conn: Connection, settings: EngineSettings) -> None:
    """Entry point of a worker process: build the engine, report Ready, serve jobs until Shutdown."""
    # Ctrl-C in a terminal reaches the whole process group; the client decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="worker %(process)d %(levelname)s %(name)s: %(message)s"
        )
    try:
        engine, ready = _build_engine(settings)
    except BaseException as exc:
        logger.exception("worker failed to start")
        try:
            conn.send(StartupFailed(message=_short_message(exc), details=traceback.format_exc()))
        finally:
            conn.close()
        raise SystemExit(1) from None
    worker = _WorkerLoop(conn, engine)
    worker.send(ready)
    worker.run()


def _build_engine(settings: EngineSettings) -> tuple[MusicGenEngine, Ready]:
    import torch
    from transformers.utils import logging as transformers_logging

    from inference import engine as engine_module
    from inference.models import resolve_device, resolve_dtype

    # A worker's output goes to the bot's log: weight-loading progress bars are only noise there.
    transformers_logging.disable_progress_bar()

    if settings.engine.cpu_threads > 0:
        torch.set_num_threads(settings.engine.cpu_threads)
    # A device that is not there is a configuration error: fail here, before any job is accepted.
    device = resolve_device(settings.engine)
    dtype = resolve_dtype(settings.engine, device)
    engine = engine_module.MusicGenEngine(settings)
    ready = Ready(device=str(device), dtype=str(dtype).removeprefix("torch."))
    return engine, ready


def _short_message(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    if len(text) > MAX_ERROR_MESSAGE_CHARS:
        text = text[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"
    return text


class _WorkerLoop:
    """Runs submitted jobs one at a time; a reader thread handles Cancel and Shutdown meanwhile."""

    def __init__(self, conn: Connection, engine: MusicGenEngine) -> None:
        self._conn = conn
        self._engine = engine
        self._send_lock = threading.Lock()
        self._state = threading.Condition()
        self._pending: collections.deque[Submit] = collections.deque()
        self._running_job_id: str | None = None
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
            if isinstance(command, Submit):
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
            if job_id == self._running_job_id:
                # The engine polls is_cancelled() between decoder steps and raises.
                self._cancel_requested.add(job_id)
                return
            waiting = next((s for s in self._pending if s.job_id == job_id), None)
            if waiting is None:
                return  # already finished (its result is on the way) or never seen
            self._pending.remove(waiting)
        self.send(GenerationError(job_id, "Cancelled before it started.", kind="cancelled"))

    def _shutdown(self) -> None:
        with self._state:
            self._shutting_down = True
            dropped = list(self._pending)
            self._pending.clear()
            if self._running_job_id is not None:
                self._cancel_requested.add(self._running_job_id)
            self._state.notify_all()
        for submit in dropped:
            self.send(GenerationError(submit.job_id, "The worker is shutting down.", kind="cancelled"))

    # -- the job loop (the main thread) ---------------------------------------------------------
    def run(self) -> None:
        reader = threading.Thread(target=self._read_commands, name="worker-commands", daemon=True)
        reader.start()
        while True:
            with self._state:
                while not self._pending and not self._shutting_down:
                    self._state.wait()
                if self._shutting_down:
                    break
                submit = self._pending.popleft()
                self._running_job_id = submit.job_id
            try:
                self.send(self._run_job(submit))
            finally:
                with self._state:
                    self._running_job_id = None
                    self._cancel_requested.discard(submit.job_id)
        with contextlib.suppress(OSError):
            self._conn.close()

    def _is_cancelled(self, job_id: str) -> bool:
        return job_id in self._cancel_requested

    def _run_job(self, submit: Submit) -> GenerationResult | GenerationError:
        job_id = submit.job_id
        self.send(Started(job_id))
        last_sent_at = 0.0

        def on_progress(steps_done: int, steps_total: int) -> None:
            nonlocal last_sent_at
            now = time.monotonic()
            if steps_done <= 1 or steps_done >= steps_total or now - last_sent_at >= PROGRESS_MIN_INTERVAL_S:
                last_sent_at = now
                self.send(Progress(job_id, steps_done, steps_total))

        try:
            started = time.perf_counter()
            generated = self._engine.generate(
                submit.request,
                on_progress=on_progress,
                is_cancelled=lambda: self._is_cancelled(job_id),
            )
            return _write_result(job_id, submit, generated, started)
        except RequestError as exc:
            return GenerationError(job_id, str(exc), kind="request")
        except GenerationCancelled:
            return GenerationError(job_id, "Cancelled.", kind="cancelled")
        except Exception as exc:
            logger.exception("job %s failed", job_id)
            return GenerationError(job_id, _short_message(exc), kind="internal")


def _write_result(job_id: str, submit: Submit, generated: Any, started: float) -> GenerationResult:
    """Normalise and write the job's audio to `<output_dir>/<job_id>.<format>`; the result message."""
    from inference.audio import write_generated

    write_started = time.perf_counter()
    path = write_generated(
        generated, submit.request, Path(submit.output_dir) / f"{job_id}.{submit.request.output_format}"
    )
    timings = dict(generated.timings)
    timings["write"] = time.perf_counter() - write_started
    timings["total"] = time.perf_counter() - started
    return GenerationResult(
        job_id=job_id,
        output_path=str(path),
        output_format=submit.request.output_format,
        seed=generated.seed,
        sample_rate=generated.sample_rate,
        channels=generated.channels,
        duration_s=generated.duration_s,
        timings=timings,
    )
