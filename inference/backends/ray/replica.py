"""The replica side of the Ray back end: one engine in one Ray actor, and what travels to and from it.

`InferenceReplica` is made a Ray actor by the client (`inference.backends.ray.client`); it runs one
batch at a time with the local worker's own batch code (`inference.backends.worker.run_batch`) and,
on the other threads of the actor, answers the client's event polls, cancels and joins meanwhile.
The uploaded clips come in as bytes (`InputFile`), written into a temporary folder of the replica's
that it deletes after the batch; each finished job goes back as its result plus the audio file's bytes
(`FinishedFile`): the bot's host and the replica's node share no filesystem.

Importing this module imports neither ray nor torch: the engine is imported by `start()`, inside the
replica's process.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from inference.backends import worker as worker_module
from inference.protocol import (
    BatchJob,
    ErrorKind,
    GenerationError,
    GenerationResult,
    Progress,
    Ready,
    Started,
    StartupFailed,
    SubmitBatch,
    WorkerEvent,
)
from inference.settings import EngineSettings

if TYPE_CHECKING:
    from inference.engine.musicgen_engine import MusicGenEngine

__all__ = ["FinishedFile", "InferenceReplica", "InputFile", "ReplicaEvent", "ReplicaOutcome"]

logger = logging.getLogger(__name__)

# A replica's temporary folders (inputs and outputs of one batch) are named after it and its pid.
SCRATCH_PREFIX = "musicgen-replica-"


@dataclass(frozen=True)
class FinishedFile:
    """A finished job as a replica returns it: its result and the audio file's bytes."""

    result: GenerationResult
    data: bytes

    @property
    def job_id(self) -> str:
        return self.result.job_id


ReplicaOutcome = FinishedFile | GenerationError
# What a replica's event poll returns: a job's start, its progress, or its outcome.
ReplicaEvent = Started | Progress | ReplicaOutcome


@dataclass(frozen=True)
class InputFile:
    """A job's uploaded clip as it travels to the replica: its bytes and file suffix (".mp3")."""

    suffix: str
    data: bytes


class InferenceReplica:
    """One engine in one Ray actor: runs one batch at a time, answers cancels, joins and event polls meanwhile.

    Made a Ray actor by `RayInferenceClient` (`ray.remote(InferenceReplica).options(...)`), with
    `max_concurrency` > 1 so its methods run on a small thread pool.
    """

    def __init__(self, settings: EngineSettings) -> None:
        self._settings = settings
        self._engine: MusicGenEngine | None = None
        # Guards the events, the joins and the running batch's folder.
        self._events_ready = threading.Condition()
        self._events: list[ReplicaEvent] = []
        # Jobs sent to join the running batch, taken between two of its decoder steps.
        self._joining: list[SubmitBatch] = []
        self._batch_folder: str | None = None  # the running batch's scratch folder; None when idle
        # Cancels may arrive before run_batch has started (the calls race); kept until that batch ends.
        self._cancelled: set[str] = set()

    def start(self) -> Ready | StartupFailed:
        """Build the engine (import torch, check the device); the models load per job and stay cached."""
        _remove_dead_replicas_folders()
        try:
            self._engine, ready = worker_module.build_engine(self._settings)
        except Exception as exc:
            logger.exception("replica failed to start")
            return StartupFailed(worker_module.short_message(exc), traceback.format_exc())
        return ready

    def pid(self) -> int:
        return os.getpid()

    def cancel(self, job_id: str) -> None:
        self._cancelled.add(job_id)

    def join(self, jobs: tuple[BatchJob, ...], input_files: dict[str, InputFile]) -> bool:
        """Jobs that join the running batch between two decoder steps (continuous batching); False
        when no batch runs any more (the client then runs them as a batch of their own)."""
        with self._events_ready:
            if self._batch_folder is None:
                return False
            folder = self._batch_folder
            local = tuple(_with_local_input(job, input_files, folder) for job in jobs)
            self._joining.append(SubmitBatch(local, folder, join=True))
        return True

    def events(self, job_ids: frozenset[str], timeout_s: float) -> list[ReplicaEvent]:
        """`Started`, `Progress` and outcome events of these jobs since the last call; waits up to
        `timeout_s` for one.

        Only the named jobs' events are taken: a poll of the previous batch, still waiting here after
        the client moved on, cannot swallow the events of the next one.
        """
        with self._events_ready:
            self._events_ready.wait_for(lambda: any(e.job_id in job_ids for e in self._events), timeout_s)
            return self._take_events(job_ids)

    def _take_events(self, job_ids: frozenset[str] | set[str]) -> list[ReplicaEvent]:
        taken = [event for event in self._events if event.job_id in job_ids]
        self._events = [event for event in self._events if event.job_id not in job_ids]
        return taken

    def run_batch(self, jobs: tuple[BatchJob, ...], input_files: dict[str, InputFile]) -> list[ReplicaEvent]:
        """Run the jobs as one batch, with the jobs that join it meanwhile (`join`).

        Each job's outcome (with its file's bytes) is queued for the client's event poll as soon as
        the job ends; what no poll has taken yet is returned at the end. `input_files` are the
        uploaded clips of the jobs that have one (by job id), sent as bytes: they are written here
        and the requests pointed at them.
        """
        if self._engine is None:
            raise RuntimeError("run_batch() before start()")
        ran: set[str] = set()

        def send(event: WorkerEvent) -> None:
            queued: ReplicaEvent
            if isinstance(event, GenerationResult | GenerationError):
                queued = _with_file_bytes(event)
            elif isinstance(event, Started | Progress):
                queued = event
            else:
                return
            ran.add(queued.job_id)
            with self._events_ready:
                self._events.append(queued)
                self._events_ready.notify_all()

        folder = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")
        with self._events_ready:
            self._events = []  # the previous batch's last events, which nobody polled any more
            self._batch_folder = folder
        try:
            batch = SubmitBatch(tuple(_with_local_input(job, input_files, folder) for job in jobs), folder)
            while batch.jobs:
                worker_module.run_batch(
                    self._engine, batch, send, self._cancelled.__contains__, self._take_joining
                )
                # Jobs that came to join after the last step run now, as a batch of their own.
                batch = SubmitBatch(
                    tuple(job for b in self._take_joining(last=True) for job in b.jobs), folder
                )
            with self._events_ready:
                return self._take_events(ran)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            self._cancelled.difference_update(ran | {job.job_id for job in jobs})

    def _take_joining(self, *, last: bool = False) -> list[SubmitBatch]:
        """The batches sent to join; `last`: and from now on no batch runs to join (when none is left)."""
        with self._events_ready:
            taken, self._joining = self._joining, []
            if last and not taken:
                self._batch_folder = None
        return taken


def _remove_dead_replicas_folders() -> None:
    """Remove the temporary folders of replicas on this node that were killed mid-batch."""
    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        pid = folder.name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue  # alive, another user's process


def _with_local_input(job: BatchJob, input_files: dict[str, InputFile], folder: str) -> BatchJob:
    upload = input_files.get(job.job_id)
    if upload is None:
        return job
    path = Path(folder) / f"input-{job.job_id}{upload.suffix}"
    path.write_bytes(upload.data)
    return BatchJob(job.job_id, job.request.replace(input_audio=str(path)))


def _with_file_bytes(outcome: GenerationResult | GenerationError) -> ReplicaOutcome:
    if isinstance(outcome, GenerationError):
        return outcome
    try:
        return FinishedFile(outcome, Path(outcome.output_path).read_bytes())
    except OSError as exc:
        logger.exception("job %s: reading the written audio failed", outcome.job_id)
        return GenerationError(outcome.job_id, worker_module.short_message(exc), ErrorKind.INTERNAL)
