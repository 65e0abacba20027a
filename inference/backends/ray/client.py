"""The client side of the Ray back end: the bot's `InferenceBackend` over replicas on a Ray cluster.

`RayInferenceClient` starts `processes` replicas (`inference.backends.ray.replica.InferenceReplica`
actors), each placed by Ray on a node with a free GPU (`ray_num_gpus`) or free CPUs
(`ray_num_cpus`), and hands each replica one batch at a time, as the local back end hands one to a
worker process. A batch is one `run_batch` call on the replica's actor; while it runs, a long poll
(`events`, answered as soon as there is something or after `EVENT_POLL_S`) brings back its jobs'
`Started`, `Progress` and outcomes, and `cancel` and `join` calls reach the very replica that runs
them. Each outcome's audio comes back as bytes, written here into the bot's output folder. A dead
actor is reported by Ray on every pending call (`RayActorError`): that is how a lost node or an
out-of-memory kill is noticed, and the replica replaced.

A Ray runtime the client starts itself (address "", and no cluster to join) is the bot's alone, on
this one machine: every process of it listens on 127.0.0.1 only.

Importing this module imports ray (the bot does so only when the back end is "ray") but never torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import ray
from ray.exceptions import RayError

from inference.backends import worker as worker_module
from inference.backends.base import BackendOptions, InferenceBackend, at_least_one
from inference.backends.job_tracking import Batch, TrackedJob
from inference.backends.ray.replica import (
    FinishedFile,
    InferenceReplica,
    InputFile,
    ReplicaEvent,
    ReplicaOutcome,
)
from inference.errors import GenerationFailed, WorkerStartError
from inference.protocol import BatchJob, ErrorKind, GenerationError, GenerationResult, StartupFailed
from inference.settings import EngineSettings

__all__ = ["RayInferenceClient"]

logger = logging.getLogger(__name__)

# Importing torch and building the engine on a fresh Ray worker takes seconds; a replica that asks
# for resources the cluster does not have waits forever, so this also bounds that wait.
DEFAULT_START_TIMEOUT_S = 300.0
# The progress poll returns at the latest after this when nothing happened.
EVENT_POLL_S = 0.5
# Calls a replica serves at once: the batch, the client's progress poll (and the previous batch's,
# still waiting out its timeout), cancels.
REPLICA_CONCURRENCY = 6


@dataclass(eq=False)
class _Replica:
    name: str
    actor: Any  # a Ray ActorHandle of InferenceReplica
    is_ready: bool = False
    exited: bool = False
    batch: Batch[_Replica] | None = None
    runner: asyncio.Task[None] | None = None


class RayInferenceClient(InferenceBackend[_Replica]):
    """Runs generation jobs (alone or in batches) on Ray actors; the same interface as `InferenceClient`.

    `address`: "" starts a local Ray runtime (closed again by `close()`; it joins instead the cluster
    that RAY_ADDRESS names or `ray start` left running here, as `ray.init()` does), "auto" joins the
    cluster this machine belongs to, anything else is passed to `ray.init(address=...)`. When Ray is
    already initialised in this process, that runtime is used and left running. `num_gpus`: GPUs per
    replica, None = 1 when the cluster has GPUs, else 0. `num_cpus`: CPUs each replica reserves.
    """

    worker_noun = "replica"

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
        super().__init__(settings)
        self._replica_count = at_least_one(replicas, "replicas")
        self._address = address
        self._num_gpus = num_gpus
        self._num_cpus = num_cpus
        self._start_timeout_s = start_timeout_s
        self._init_options = init_options or {}
        self._owns_ray = False
        self._names = itertools.count(1)
        # Jobs sent to join a replica's batch that has not yet said whether it took them.
        self._unconfirmed: set[str] = set()

    @classmethod
    def from_options(cls, settings: EngineSettings, options: BackendOptions) -> Self:
        return cls(
            settings,
            replicas=options.processes,
            address=options.ray_address,
            num_gpus=options.ray_num_gpus,
            num_cpus=options.ray_num_cpus,
        )

    # -- what the scheduler and the admins see --------------------------------------------------
    @property
    def worker_count(self) -> int:
        """Replicas this client keeps running ("auto": one per GPU of the cluster, known once started)."""
        return 1 if self._replica_count == "auto" else self._replica_count

    @property
    def replica_actors(self) -> list[Any]:
        """Ray actor handles of the live replicas (for admins and tests)."""
        return [r.actor for r in self._workers if not r.exited]

    # -- life cycle -----------------------------------------------------------------------------
    async def _start_workers(self) -> None:
        """Connect to (or start) Ray, start the replicas and wait until each has built its engine."""
        await asyncio.to_thread(self._connect)
        count = self._replica_count
        if count == "auto":
            # One replica per GPU of the cluster, as the local back end runs one worker per GPU.
            count = max(1, int(ray.cluster_resources().get("GPU", 0)))
        assert isinstance(count, int)
        self._replica_count = count
        replicas = [self._new_replica() for _ in range(count)]
        await asyncio.gather(*(self._wait_ready(replica) for replica in replicas))

    def _connect(self) -> None:
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "configure_logging": False}
            options.update(self._init_options)
            if not self._address and _starts_a_runtime():
                with _loopback_node():
                    ray.init(**options)
            else:
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

    async def _stop_workers(self) -> None:
        """End every replica (their running batches are cancelled) and leave Ray as it was found."""
        for replica in list(self._workers):
            if replica.runner is not None:
                replica.runner.cancel()
            self._worker_gone(replica, "the client closed")
        if self._owns_ray:
            await asyncio.to_thread(ray.shutdown)

    # -- batches, joins, cancels and kills ------------------------------------------------------
    def _hand_over(self, worker: _Replica, batch: Batch[_Replica]) -> bool:
        worker.runner = asyncio.create_task(self._run_batch(worker, batch), name=f"{worker.name}-batch")
        return True

    def _send_joining(self, worker: _Replica, joined: list[TrackedJob[_Replica]], output_dir: Path) -> None:
        self._unconfirmed.update(job.job_id for job in joined)
        task = asyncio.create_task(self._send_join(worker, joined, output_dir), name=f"{worker.name}-join")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_join(
        self, replica: _Replica, joined: list[TrackedJob[_Replica]], output_dir: Path
    ) -> None:
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

    def _pass_cancel(self, worker: _Replica, job_id: str) -> None:
        # Fire and forget: the replica polls its cancelled set between decoder steps.
        worker.actor.cancel.remote(job_id)

    def _kill(self, worker: _Replica, job: TrackedJob[_Replica]) -> None:
        logger.error(
            "killing %s, which runs job %s (%d job(s) in its batch)",
            worker.name,
            job.job_id,
            len(job.batch.jobs),
        )
        ray.kill(worker.actor, no_restart=True)  # its run_batch call fails: `_run_batch` sees it gone

    async def _run_batch(self, replica: _Replica, batch: Batch[_Replica]) -> None:
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
            self._worker_gone(replica, str(exc))
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

    async def _forward_events(
        self, replica: _Replica, batch: Batch[_Replica], done_running: asyncio.Event
    ) -> None:
        """Poll the replica for the events of `batch` (the jobs that joined it included) while it runs;
        its death ends the poll."""
        with contextlib.suppress(RayError):
            while not done_running.is_set():
                job_ids = frozenset(job.job_id for job in batch.jobs)
                for event in await _awaited(replica.actor.events.remote(job_ids, EVENT_POLL_S)):
                    await self._forward(batch, event)

    async def _forward(self, batch: Batch[_Replica], event: ReplicaEvent) -> None:
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
        self._workers.append(replica)
        return replica

    def _start_replacement(self, gone: _Replica) -> _Replica:
        return self._new_replica()

    async def _wait_ready(self, worker: _Replica) -> None:
        try:
            answer = await asyncio.wait_for(_awaited(worker.actor.start.remote()), self._start_timeout_s)
        except TimeoutError:
            raise WorkerStartError(
                f"{worker.name} was not ready after {self._start_timeout_s:.0f} s (does the cluster have "
                f"a node with {self._num_gpus:g} free GPU(s) and {self._num_cpus:g} free CPU(s)?)"
            ) from None
        except RayError as exc:
            raise WorkerStartError(f"{worker.name} failed to start: {exc}") from None
        if isinstance(answer, StartupFailed):
            logger.error("%s failed to start:\n%s", worker.name, answer.details)
            raise WorkerStartError(f"{worker.name} failed to start: {answer.message}")
        worker.is_ready = True
        logger.info("%s ready on %s (%s)", worker.name, answer.device, answer.dtype)
        self._dispatch()

    def _abort_start(self, worker: _Replica) -> None:
        worker.exited = True
        self._release(worker)

    def _release(self, worker: _Replica) -> None:
        with contextlib.suppress(Exception):
            ray.kill(worker.actor, no_restart=True)


def _starts_a_runtime() -> bool:
    """Whether `ray.init()` without an address starts a runtime here, rather than joining the cluster
    that RAY_ADDRESS names or `ray start` left running on this machine (Ray's own rule)."""
    from ray._private import services

    # Typed as taking a str, but None is what `ray.init()` passes for no address.
    return services.canonicalize_bootstrap_address(None) is None  # type: ignore[arg-type]


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """While it is open, a Ray runtime started here takes 127.0.0.1 as its node's address, so that
    every process of it (GCS, raylet, workers, agents) listens on the loopback interface alone.

    This is Ray's own switch for a runtime that is no cluster (its default on macOS and Windows).
    `ray.init` has no public option for it: a loopback `_node_ip_address` is replaced by the
    machine's routable address unless the switch is off. It is read only while the node starts.
    """
    from ray._private import ray_constants

    cluster_enabled = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_enabled


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
