"""The Ray back end: inference replicas as Ray actors on a cluster, with the local client's interface.

`[worker] backend = "ray"` makes the bot use `RayInferenceClient` instead of `InferenceClient`. Each
replica is one `InferenceReplica` actor holding one engine (its models stay cached between jobs),
placed by Ray on a node with a free GPU (`ray_num_gpus`) or free CPUs (`ray_num_cpus`). The client
hands each replica one batch at a time, exactly as the local client hands one to a worker process,
and the replica runs it with the local worker's own batch code (`inference.backends.worker.run_batch`).

Why actors and not Ray Serve: Serve routes independent HTTP-style requests to any replica and
batches them itself (`@serve.batch`), but our batches are made by the bot's fair scheduler, every
job of a batch must be followed on its own (progress, cancel one job without disturbing the others),
and a cancel must reach the very replica that runs the job while that replica is busy. A threaded
actor (`max_concurrency` > 1) gives exactly that: `run_batch` runs in one of its threads while
`events` (the client's progress poll) and `cancel` are served by others, and the handle names the
replica. A dead actor is reported by Ray on every pending call (`RayActorError`), which is how a
lost node or an out-of-memory kill is noticed.

What crosses the cluster: the validated requests go to the replica, with the bytes of any uploaded
clip (written into the replica's temporary folder); `Started`/`Progress` come back
through a long poll (`events`, answered as soon as there is something or after `EVENT_POLL_S`); each
job's outcome comes back as the result plus the audio file's bytes, which this client writes into
the bot's output folder (no shared filesystem). The replica writes into a temporary folder it deletes.

Importing this module imports ray (the bot does so only when the back end is "ray") but never torch:
the engine is imported inside the replica process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import shutil
import tempfile
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import ray
from ray.exceptions import RayError

from inference.backends import worker as worker_module
from inference.backends.job_tracking import Batch, Job, JobSubmission, JobTracker, ProgressCallback
from inference.errors import GenerationCancelled, GenerationFailed, WorkerCrashed, WorkerStartError
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
from inference.request import GenerationRequest
from inference.settings import EngineSettings

if TYPE_CHECKING:
    from inference.engine.musicgen_engine import MusicGenEngine

__all__ = ["FinishedFile", "InferenceReplica", "InputFile", "RayInferenceClient"]

logger = logging.getLogger(__name__)

# Importing torch and building the engine on a fresh Ray worker takes seconds; a replica that asks
# for resources the cluster does not have waits forever, so this also bounds that wait.
DEFAULT_START_TIMEOUT_S = 300.0
# The progress poll returns at the latest after this when nothing happened.
EVENT_POLL_S = 0.5
# Calls a replica serves at once: the batch, the client's progress poll (and the previous batch's,
# still waiting out its timeout), cancels.
REPLICA_CONCURRENCY = 6
# A replica's temporary folders (inputs and outputs of one batch) are named after it and its pid.
SCRATCH_PREFIX = "musicgen-replica-"
# Replacement replicas that keep failing to start are retried with a growing pause, up to this.
MAX_RESTART_BACKOFF_S = 60.0


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


# Jobs and batches as this client tracks them: a batch runs on one replica (its `worker`).
_Job = Job["_Replica"]
_Batch = Batch["_Replica"]


@dataclass(eq=False)
class _Replica:
    name: str
    actor: Any  # a Ray ActorHandle of InferenceReplica
    ready: bool = False
    exited: bool = False
    batch: _Batch | None = None
    runner: asyncio.Task[None] | None = None


class RayInferenceClient:
    """Runs generation jobs (alone or in batches) on Ray actors; the same interface as `InferenceClient`.

    `address`: "" starts a local Ray runtime (closed again by `close()`), "auto" joins the cluster
    this machine belongs to, anything else is passed to `ray.init(address=...)`. When Ray is already
    initialised in this process, that runtime is used and left running. `num_gpus`: GPUs per
    replica, None = 1 when the cluster has GPUs, else 0. `num_cpus`: CPUs each replica reserves.
    """

    def __init__(
        self,
        settings: EngineSettings,
        *,
        replicas: int | Literal["auto"] = 1,
        address: str = "",
        num_gpus: float | None = None,
        num_cpus: float = 1.0,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        if replicas != "auto" and replicas < 1:
            raise ValueError('replicas must be at least 1, or "auto"')
        self._settings = settings
        self._replica_count = replicas
        self._address = address
        self._num_gpus = num_gpus
        self._num_cpus = num_cpus
        self._start_timeout_s = start_timeout_s
        self._init_options = init_options or {}
        self._owns_ray = False
        self._replicas: list[_Replica] = []
        self._tracker: JobTracker[_Replica] = JobTracker(self._send_cancel)
        self._names = itertools.count(1)
        self._background: set[asyncio.Task[None]] = set()
        # Jobs sent to join a replica's batch that has not yet said whether it took them.
        self._unconfirmed: set[str] = set()
        self._started = False
        self._closing = False

    # -- properties for the scheduler -----------------------------------------------------------
    @property
    def worker_count(self) -> int:
        """Replicas this client keeps running ("auto": one per GPU of the cluster, known once started)."""
        return 1 if self._replica_count == "auto" else self._replica_count

    @property
    def idle_workers(self) -> int:
        """Replicas that are ready and have no batch: how many batches would start right now."""
        idle = sum(1 for r in self._replicas if r.ready and r.batch is None and not r.exited)
        return max(0, idle - len(self._tracker.waiting))

    @property
    def busy_workers(self) -> int:
        """Replicas running a batch."""
        return sum(1 for r in self._replicas if r.batch is not None and not r.exited)

    @property
    def replica_actors(self) -> list[Any]:
        """Ray actor handles of the live replicas (for admins and tests)."""
        return [r.actor for r in self._replicas if not r.exited]

    # -- life cycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect to (or start) Ray, start the replicas and wait until each has built its engine."""
        if self._started:
            raise RuntimeError("RayInferenceClient.start() was already called")
        self._started = True
        try:
            await asyncio.to_thread(self._connect)
            count = self._replica_count
            if count == "auto":
                # One replica per GPU of the cluster, as the local back end runs one worker per GPU.
                count = max(1, int(ray.cluster_resources().get("GPU", 0)))
            assert isinstance(count, int)
            self._replica_count = count
            replicas = [self._new_replica() for _ in range(count)]
            await asyncio.gather(*(self._wait_ready(replica) for replica in replicas))
        except BaseException:
            await self.close()
            raise

    def _connect(self) -> None:
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "configure_logging": False}
            options.update(self._init_options)
            ray.init(address=self._address or None, **options)
            self._owns_ray = True
        if self._num_gpus is None:
            self._num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        logger.info(
            "Ray cluster: %s; %d replica(s) of %g GPU, %g CPU",
            ray.cluster_resources(),
            self._replica_count,
            self._num_gpus,
            self._num_cpus,
        )

    async def __aenter__(self) -> RayInferenceClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Cancel the queued and running jobs, end every replica, and leave Ray as it was found."""
        if self._closing:
            return
        self._closing = True
        for task in list(self._background):
            task.cancel()
        self._tracker.fail_waiting(lambda: GenerationCancelled("The inference client is shutting down."))
        for replica in list(self._replicas):
            if replica.runner is not None:
                replica.runner.cancel()
            self._replica_gone(replica, None)
        if self._owns_ray:
            await asyncio.to_thread(ray.shutdown)

    # -- jobs -----------------------------------------------------------------------------------
    async def submit(
        self,
        job_id: str,
        request: GenerationRequest,
        output_dir: str | Path,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> GenerationResult:
        """Run one job (a batch of one) and return its result; as `InferenceClient.submit`."""
        (job,) = self._add_batch([JobSubmission(job_id, request, on_progress)], output_dir)
        return await self._tracker.follow(job)

    def submit_batch(
        self, jobs: Sequence[JobSubmission], output_dir: str | Path
    ) -> list[asyncio.Task[GenerationResult]]:
        """Queue jobs to run together on one replica; one task per job; as `InferenceClient.submit_batch`."""
        followed = self._add_batch(jobs, output_dir)
        return self._tracker.follow_all(followed)

    def join_batch(
        self, running_job_ids: Sequence[str], jobs: Sequence[JobSubmission], output_dir: str | Path
    ) -> list[asyncio.Task[GenerationResult]]:
        """Add jobs to the batch a replica runs with the first of `running_job_ids` (continuous
        batching); as `InferenceClient.join_batch`. Should the replica have finished that batch before
        they arrive, they wait as a batch of their own."""
        if not self._started or self._closing:
            raise RuntimeError("the inference client is not running (call start() first)")
        joined = self._tracker.join_running_batch(running_job_ids, jobs, lambda replica: not replica.exited)
        if joined is None:
            return self.submit_batch(jobs, output_dir)
        replica = joined[0].batch.worker
        assert replica is not None
        self._unconfirmed.update(job.job_id for job in joined)
        task = asyncio.create_task(self._send_join(replica, joined, output_dir), name=f"{replica.name}-join")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return self._tracker.follow_all(joined)

    async def _send_join(self, replica: _Replica, joined: list[_Job], output_dir: str | Path) -> None:
        jobs = tuple(BatchJob(job.job_id, job.request) for job in joined)
        try:
            input_files = await asyncio.to_thread(_read_inputs, jobs)
            accepted = await _awaited(replica.actor.join.remote(jobs, input_files))
        except RayError:
            accepted = True  # the replica is gone: its death fails them as crashed, with its batch
        finally:
            self._unconfirmed.difference_update(job.job_id for job in joined)
        if not accepted:
            # Its batch ended first: the jobs wait for a replica as a batch of their own.
            self._tracker.requeue_as_batch(joined, output_dir)
            self._dispatch()

    def _add_batch(self, submissions: Sequence[JobSubmission], output_dir: str | Path) -> list[_Job]:
        if not self._started or self._closing:
            raise RuntimeError("the inference client is not running (call start() first)")
        jobs = self._tracker.add_batch(submissions, output_dir)
        self._dispatch()
        return jobs

    async def cancel(self, job_id: str) -> bool:
        """Cancel a waiting or running job: True when the cancel was passed on, False for a job the
        client does not know. The other jobs of its batch go on."""
        return self._tracker.cancel(job_id)

    def kill_worker_of(self, job_id: str) -> bool:
        """Kill the replica running this job, presumed hung: as when a replica dies, every unfinished job
        of its batch fails with WorkerCrashed and a replacement starts. False when no replica runs it."""
        job = self._tracker.jobs.get(job_id)
        replica = None if job is None else job.batch.worker
        if job is None or replica is None or replica.exited or job_id not in job.batch.unfinished:
            return False
        logger.error(
            "killing %s, which runs job %s (%d job(s) in its batch)",
            replica.name,
            job_id,
            len(job.batch.jobs),
        )
        ray.kill(replica.actor, no_restart=True)  # its run_batch call fails: `_run_batch` sees it gone
        return True

    def _send_cancel(self, job: _Job) -> bool:
        replica = job.batch.worker
        if replica is None or replica.exited or job.job_id not in job.batch.unfinished:
            return False
        # Fire and forget: the replica polls its cancelled set between decoder steps.
        replica.actor.cancel.remote(job.job_id)
        return True

    def _dispatch(self) -> None:
        """Hand waiting batches to idle replicas (oldest batch first)."""
        waiting = self._tracker.waiting
        for replica in self._replicas:
            if not waiting:
                return
            if replica.batch is not None or replica.exited or not replica.ready:
                continue
            batch = waiting.popleft()
            replica.batch = batch
            batch.worker = replica
            batch.unfinished = {job.job_id for job in batch.jobs}
            replica.runner = asyncio.create_task(
                self._run_batch(replica, batch), name=f"{replica.name}-batch"
            )

    async def _run_batch(self, replica: _Replica, batch: _Batch) -> None:
        jobs = tuple(BatchJob(job.job_id, job.request) for job in batch.jobs)
        input_files = await asyncio.to_thread(_read_inputs, jobs)
        done_running = asyncio.Event()
        poller = asyncio.create_task(
            self._forward_events(replica, batch, done_running), name=f"{replica.name}-events"
        )
        try:
            unpolled: list[ReplicaEvent] = await _awaited(replica.actor.run_batch.remote(jobs, input_files))
        except Exception as exc:
            # RayActorError: the replica died (killed, its node lost, out of memory). Anything else
            # (a RayTaskError from a bug in run_batch) leaves it in an unknown state: replace it too.
            poller.cancel()
            self._replica_gone(replica, exc)
            return
        replica.batch = None
        replica.runner = None
        self._dispatch()
        done_running.set()
        with contextlib.suppress(RayError):
            await poller  # its last poll may hold outcomes
        for event in unpolled:
            await self._forward(batch, event)
        for job_id in batch.unfinished - self._unconfirmed:  # pragma: no cover - every job is answered
            if (job := self._tracker.jobs.get(job_id)) is not None:
                job.events.put_nowait(GenerationFailed(f"The replica returned no outcome for job {job_id}."))
        batch.unfinished &= self._unconfirmed

    async def _forward_events(self, replica: _Replica, batch: _Batch, done_running: asyncio.Event) -> None:
        """Poll the replica for the events of `batch` (the jobs that joined it included) while it runs;
        its death ends the poll."""
        with contextlib.suppress(RayError):
            while not done_running.is_set():
                job_ids = frozenset(job.job_id for job in batch.jobs)
                for event in await _awaited(replica.actor.events.remote(job_ids, EVENT_POLL_S)):
                    await self._forward(batch, event)

    async def _forward(self, batch: _Batch, event: ReplicaEvent) -> None:
        """Pass a replica's event to its job; an outcome's file is saved on this host first."""
        if isinstance(event, FinishedFile | GenerationError):
            saved = await _saved(event, batch.output_dir)
            batch.unfinished.discard(saved.job_id)
            job = self._tracker.jobs.get(saved.job_id)
            if job is not None:
                job.events.put_nowait(saved)
            return
        job = self._tracker.jobs.get(event.job_id)
        if job is not None and job.batch is batch:
            job.events.put_nowait(event)

    # -- replicas -------------------------------------------------------------------------------
    def _new_replica(self) -> _Replica:
        name = f"inference-replica-{next(self._names)}"
        actor_class = ray.remote(InferenceReplica).options(
            num_gpus=self._num_gpus,
            num_cpus=self._num_cpus,
            max_concurrency=REPLICA_CONCURRENCY,
            # A replica that dies is replaced by this client (its jobs are retried by the bot).
            max_restarts=0,
        )
        replica = _Replica(name, actor_class.remote(self._settings))
        self._replicas.append(replica)
        return replica

    async def _wait_ready(self, replica: _Replica) -> None:
        try:
            answer = await asyncio.wait_for(_awaited(replica.actor.start.remote()), self._start_timeout_s)
        except TimeoutError:
            raise WorkerStartError(
                f"{replica.name} was not ready after {self._start_timeout_s:.0f} s (does the cluster have "
                f"a node with {self._num_gpus:g} free GPU(s) and {self._num_cpus:g} free CPU(s)?)"
            ) from None
        except RayError as exc:
            raise WorkerStartError(f"{replica.name} failed to start: {exc}") from None
        if isinstance(answer, StartupFailed):
            logger.error("%s failed to start:\n%s", replica.name, answer.details)
            raise WorkerStartError(f"{replica.name} failed to start: {answer.message}")
        replica.ready = True
        logger.info("%s ready on %s (%s)", replica.name, answer.device, answer.dtype)
        self._dispatch()

    def _replica_gone(self, replica: _Replica, cause: BaseException | None) -> None:
        """A replica ended (`cause` None: the client is closing): fail its jobs, replace it if needed."""
        if replica.exited:
            return
        replica.exited = True
        if replica in self._replicas:
            self._replicas.remove(replica)
        with contextlib.suppress(Exception):
            ray.kill(replica.actor, no_restart=True)
        batch, replica.batch = replica.batch, None
        lost = [] if batch is None else batch.unfinished_jobs()
        if batch is not None:
            batch.unfinished.clear()
        if self._closing or cause is None:
            for job in lost:
                job.events.put_nowait(GenerationCancelled("The inference client is shutting down."))
            return
        logger.error("%s died: %s", replica.name, cause)
        for job in lost:
            others = f" in a batch of {len(lost)}" if len(lost) > 1 else ""
            job.events.put_nowait(
                WorkerCrashed(
                    f"The inference replica died while running job {job.job_id}{others}.",
                    running_jobs=len(lost),
                )
            )
        self._schedule_restart(0.0)

    def _schedule_restart(self, backoff_s: float) -> None:
        if self._closing:
            return
        task = asyncio.create_task(self._restart(backoff_s), name="inference-replica-restart")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _restart(self, backoff_s: float) -> None:
        if backoff_s:
            await asyncio.sleep(backoff_s)
        if self._closing:
            return
        replica = self._new_replica()
        try:
            await self._wait_ready(replica)
        except Exception as exc:
            logger.error("replacement replica failed to start: %s", exc)
            self._replicas.remove(replica)
            replica.exited = True
            with contextlib.suppress(Exception):
                ray.kill(replica.actor, no_restart=True)
            if not any(r.ready and not r.exited for r in self._replicas):
                # No replica can take the waiting jobs: fail them rather than leave them hanging.
                message = f"No inference replica is running: {exc}"
                self._tracker.fail_waiting(lambda: WorkerCrashed(message))
            self._schedule_restart(min(MAX_RESTART_BACKOFF_S, max(1.0, backoff_s * 2)))


async def _awaited(ref: Any) -> Any:
    """The value of a Ray ObjectRef, awaited on the event loop (Ray's errors raised as they are)."""
    return await asyncio.wrap_future(ref.future())


def _read_inputs(jobs: Sequence[BatchJob]) -> dict[str, InputFile]:
    """The uploaded clips of the jobs that have one, read on the bot's host to travel with the batch.

    A clip that cannot be read is left to the replica, which fails that job as the local worker would.
    """
    inputs: dict[str, InputFile] = {}
    for job in jobs:
        if job.request.input_audio is None:
            continue
        path = Path(job.request.input_audio)
        try:
            inputs[job.job_id] = InputFile(path.suffix, path.read_bytes())
        except OSError:
            logger.warning("job %s: cannot read its input clip %s", job.job_id, path)
    return inputs


async def _saved(outcome: ReplicaOutcome, output_dir: Path) -> GenerationResult | GenerationError:
    """Write a finished job's bytes into the bot's output folder; the result then names that file."""
    if isinstance(outcome, GenerationError):
        return outcome
    result = outcome.result
    path = output_dir / Path(result.output_path).name
    try:
        await asyncio.to_thread(_write_file, path, outcome.data)
    except OSError as exc:
        logger.exception("job %s: saving the audio on the bot's host failed", result.job_id)
        return GenerationError(result.job_id, worker_module.short_message(exc), ErrorKind.INTERNAL)
    return dataclasses.replace(result, output_path=str(path))


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
