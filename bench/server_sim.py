"""A thousand servers through the real scheduler and dispatcher, with simulated inference times.

    python bench/server_sim.py                      # 1,000 servers, simulated back end
    python bench/server_sim.py --servers 200 --workers 2
    python bench/server_sim.py --backend local --servers 20 --busy 2 --busy-jobs 6   # real workers, tiny model
    python bench/server_sim.py --backend ray --servers 20 --busy 2 --busy-jobs 6     # Ray replicas, tiny model

Bursty traffic: a few busy servers send bursts of jobs, many quiet servers send one or two, at random
moments of a window. Every job is a real row in a real SQLite job store and goes through the bot's
`FairScheduler` and `JobDispatcher`; only Discord (results are recorded, not posted) and, with the
default `simulated` back end, the model are left out: `SimulatedInferenceClient` has the inference
client's interface and sleeps for as long as a batch would take (rows cost 5 % each on top of the
longest job, as measured), with every sleep scaled down by `--time-scale`. A job that joins a
running batch (continuous batching, on unless `--no-continuous-batching`) starts at once and takes
as long as it would alone plus 5 % per row beside it.

It checks that every job completes, and fairness from the recorded start order (the order the
scheduler handed jobs to the workers): no server waits behind more than one job of any other server
beyond the jobs it had queued itself (a job with k of its server's jobs ahead of it sees at most k+1
jobs of any other server start while it waits). It prints the p50/p99 wait per job in simulated seconds.

The back end is a parameter (`BACKENDS`): `simulated`, `local` (the real `InferenceClient`, tiny
random-weight model) and `ray` (`inference.backends.ray.RayInferenceClient` where that back end is
installed; the same tiny model).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import random
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout: make the packages importable
    sys.path.insert(0, str(REPO_ROOT))

from bot.pipeline.delivery import PostedResult  # noqa: E402
from bot.pipeline.dispatcher import DispatcherOptions, JobDispatcher  # noqa: E402
from bot.pipeline.scheduler import BatchLimits, FairScheduler, QueueLimits, ScheduledJob  # noqa: E402
from bot.storage.database import Database  # noqa: E402
from bot.storage.jobs import Job, JobOrigin  # noqa: E402
from bot.storage.patience import PatientJobStore  # noqa: E402
from inference.backends.base import BackendName, BackendOptions, JobSubmission  # noqa: E402
from inference.errors import GenerationCancelled  # noqa: E402
from inference.protocol import GenerationResult  # noqa: E402
from inference.request import GenerationRequest  # noqa: E402

# Simulated cost of a batch: real-time factor x the longest job's seconds, +5 % per extra row.
SIMULATED_REAL_TIME_FACTOR = 0.5
SIMULATED_ROW_COST = 0.05
# Hang guard, in wall seconds.
RUN_TIMEOUT_S = 1800.0


# -- the simulated back end -------------------------------------------------------------------------
class SimulatedInferenceClient:
    """The inference client's interface (submit, submit_batch, cancel, worker counts) with sleeps
    instead of a model: `workers` batches run at once, each as long as a real one would, scaled."""

    def __init__(self, workers: int, *, time_scale: float) -> None:
        self._worker_count = workers
        self.time_scale = time_scale
        self._free = asyncio.Semaphore(workers)
        self._running: dict[str, asyncio.Task[GenerationResult]] = {}
        self._busy = 0
        # (loop time, job ids) of every batch as it started on a simulated worker.
        self.batch_starts: list[tuple[float, tuple[str, ...]]] = []

    @property
    def worker_count(self) -> int:
        return self._worker_count

    @property
    def idle_workers(self) -> int:
        return self._worker_count - self._busy

    @property
    def busy_workers(self) -> int:
        return self._busy

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        for task in self._running.values():
            task.cancel()

    async def submit(
        self, job_id: str, request: GenerationRequest, output_dir: str | Path, *, on_progress: Any = None
    ) -> GenerationResult:
        (task,) = self.submit_batch([JobSubmission(job_id, request, on_progress)], output_dir)
        return await task

    def submit_batch(
        self, jobs: Sequence[JobSubmission], output_dir: str | Path
    ) -> list[asyncio.Task[GenerationResult]]:
        batch = asyncio.ensure_future(self._run_batch(list(jobs)))
        return [self._follow(batch, job, output_dir) for job in jobs]

    def _forget(self, job_id: str, _task: object) -> None:
        self._running.pop(job_id, None)

    async def cancel(self, job_id: str) -> bool:
        task = self._running.get(job_id)
        if task is None:
            return False
        task.cancel()
        return True

    def join_batch(
        self, running_job_ids: Sequence[str], jobs: Sequence[JobSubmission], output_dir: str | Path
    ) -> list[asyncio.Task[GenerationResult]]:
        """Jobs joining a running batch (continuous batching): each starts at once, on the worker of
        that batch, and takes as long as it would alone plus 5 % for every row it shares the batch with
        (as rows cost in `batch_seconds`; the rows already there are not slowed down here)."""
        rows = len(running_job_ids) + len(jobs)
        tasks = []
        for job in jobs:
            seconds = self.batch_seconds([job]) * (1 + SIMULATED_ROW_COST * (rows - 1))
            tasks.append(
                self._follow(asyncio.ensure_future(asyncio.sleep(seconds * self.time_scale)), job, output_dir)
            )
        return tasks

    def _follow(
        self, work: asyncio.Future[None], job: JobSubmission, output_dir: str | Path
    ) -> asyncio.Task[GenerationResult]:
        """The task that answers `job` once `work` (its batch, or its own run) is done; cancellable."""
        task = asyncio.create_task(self._job_of(work, job, output_dir))
        self._running[job.job_id] = task
        task.add_done_callback(functools.partial(self._forget, job.job_id))
        return task

    def batch_seconds(self, jobs: Sequence[JobSubmission]) -> float:
        """Simulated seconds a batch takes (before scaling)."""
        longest = max(job.request.duration for job in jobs)
        return SIMULATED_REAL_TIME_FACTOR * longest * (1 + SIMULATED_ROW_COST * (len(jobs) - 1))

    async def _run_batch(self, jobs: list[JobSubmission]) -> None:
        async with self._free:
            self._busy += 1
            try:
                self.batch_starts.append((asyncio.get_running_loop().time(), tuple(j.job_id for j in jobs)))
                await asyncio.sleep(self.batch_seconds(jobs) * self.time_scale)
            finally:
                self._busy -= 1

    async def _job_of(
        self, batch: asyncio.Future[None], job: JobSubmission, output_dir: str | Path
    ) -> GenerationResult:
        try:
            await asyncio.shield(batch)
        except asyncio.CancelledError:
            raise GenerationCancelled("Cancelled.") from None
        request = job.request
        return GenerationResult(
            job_id=job.job_id,
            output_path=str(Path(output_dir) / f"{job.job_id}.{request.output_format}"),
            output_format=request.output_format,
            seed=request.seed or 0,
            sample_rate=32_000,
            channels=1,
            duration_s=float(request.duration),
        )


# -- the real back ends on the tiny model ----------------------------------------------------------
def tiny_engine_settings(folder: Path) -> Any:
    """Engine settings on a tiny random-weight `small` model built in `folder` (CPU, float32)."""
    from inference.checkpoints.random_models import COMPRESSION_DIR, TEXT_ENCODER_DIR, make_test_model
    from inference.settings import EngineOptions, EngineSettings, MelodyOptions, ModelSources

    small = make_test_model("small", folder / "small", tiny=True, seed=0)
    return EngineSettings(
        models=ModelSources(
            small=str(small),
            text_encoder=str(small / TEXT_ENCODER_DIR),
            compression=str(small / COMPRESSION_DIR),
            conversion_cache=str(folder / "converted"),
        ),
        engine=EngineOptions(device="cpu", dtype="float32", cpu_threads=1, model_cache_gb=4.0),
        melody=MelodyOptions(stem_separation=False),
    )


@asynccontextmanager
async def simulated_backend(workers: int, time_scale: float, _folder: Path) -> AsyncIterator[Any]:
    yield SimulatedInferenceClient(workers, time_scale=time_scale)


def real_backend(name: BackendName) -> Backend:
    """The bot's own back end called `name`, built by its factory, with `workers` workers on the tiny model."""

    @asynccontextmanager
    async def running(workers: int, _time_scale: float, folder: Path) -> AsyncIterator[Any]:
        from inference.backends.factory import create_backend

        try:
            backend = create_backend(
                tiny_engine_settings(folder), BackendOptions(backend=name, processes=workers)
            )
        except ImportError as error:
            raise SystemExit(
                f"the {name} back end is not available here ({error}): install it with pip install -e '.[ray]'"
            ) from None
        async with backend:
            yield backend

    return running


Backend = Callable[[int, float, Path], contextlib.AbstractAsyncContextManager[Any]]
BACKENDS: dict[str, Backend] = {
    "simulated": simulated_backend,
    "local": real_backend("local"),
    "ray": real_backend("ray"),
}


# -- traffic --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Traffic:
    servers: int = 1000
    busy_servers: int = 10
    # Jobs each busy server sends, in bursts of `burst_size` at once.
    busy_jobs: int = 40
    burst_size: int = 8
    # Every quiet server sends one job, and this share of them a second one.
    quiet_second_job_share: float = 0.2
    # Simulated seconds over which the traffic arrives.
    window_s: float = 600.0
    durations: tuple[int, ...] = (4, 8, 12)
    seed: int = 0


@dataclass(frozen=True)
class Arrival:
    at_s: float
    guild_id: int
    user_id: int
    duration: int


def bursty_arrivals(traffic: Traffic) -> list[Arrival]:
    """Busy servers (guild ids 1..busy) send bursts; the others one job, some two; sorted by time."""
    rng = random.Random(traffic.seed)
    arrivals: list[Arrival] = []
    for guild_id in range(1, traffic.servers + 1):
        if guild_id <= traffic.busy_servers:
            for burst in range(math.ceil(traffic.busy_jobs / traffic.burst_size)):
                at_s = rng.uniform(0, traffic.window_s)
                size = min(traffic.burst_size, traffic.busy_jobs - burst * traffic.burst_size)
                for n in range(size):
                    arrivals.append(
                        Arrival(
                            at_s,
                            guild_id,
                            user_id=1000 * guild_id + n % 5,
                            duration=rng.choice(traffic.durations),
                        )
                    )
        else:
            jobs = 2 if rng.random() < traffic.quiet_second_job_share else 1
            for _ in range(jobs):
                arrivals.append(
                    Arrival(
                        rng.uniform(0, traffic.window_s),
                        guild_id,
                        1000 * guild_id,
                        rng.choice(traffic.durations),
                    )
                )
    arrivals.sort(key=lambda a: a.at_s)
    return arrivals


# -- recording what the scheduler does --------------------------------------------------------------
@dataclass
class StartOrder:
    """Every enqueue and every start (a job taken by the scheduler for a worker), in order."""

    events: list[tuple[str, int, int]] = field(default_factory=list)  # (kind, job id, guild id)

    def enqueued(self, job_id: int, guild_id: int) -> None:
        self.events.append(("enqueue", job_id, guild_id))

    def started(self, job_id: int, guild_id: int) -> None:
        self.events.append(("start", job_id, guild_id))


class RecordingScheduler(FairScheduler):
    """The real scheduler, recording the order in which it hands jobs out."""

    def __init__(self, limits: QueueLimits, batching: BatchLimits, order: StartOrder) -> None:
        super().__init__(limits, batching)
        self.order = order
        self.batches = 0
        self.joins = 0  # groups of jobs that joined a running batch

    def enqueue(self, job: ScheduledJob, *, front: bool = False) -> None:
        super().enqueue(job, front=front)
        self.order.enqueued(job.job_id, job.guild_id)

    def next_batch(self) -> list[ScheduledJob]:
        batch = super().next_batch()
        self.batches += bool(batch)
        for job in batch:
            self.order.started(job.job_id, job.guild_id)
        return batch

    def next_joiners(self, batch_key: Any, running_jobs: int, longest_seconds: float) -> list[ScheduledJob]:
        joiners = super().next_joiners(batch_key, running_jobs, longest_seconds)
        self.joins += bool(joiners)
        for job in joiners:
            self.order.started(job.job_id, job.guild_id)
        return joiners


def fairness_violations(order: StartOrder) -> list[str]:
    """Jobs that saw more jobs of another server start while they waited than that server is owed:
    with k jobs of its own server ahead of it, a job may see at most k+1 of any other's start."""
    position: dict[int, int] = {}
    guild_of: dict[int, int] = {}
    queued_ahead: dict[int, int] = {}
    waiting: dict[int, set[int]] = defaultdict(set)  # guild -> its queued job ids
    for index, (kind, job_id, guild_id) in enumerate(order.events):
        guild_of[job_id] = guild_id
        if kind == "enqueue":
            queued_ahead[job_id] = len(waiting[guild_id])
            waiting[guild_id].add(job_id)
            position[job_id] = index
        else:
            waiting[guild_id].discard(job_id)
    violations: list[str] = []
    started_at = {job_id: i for i, (kind, job_id, _) in enumerate(order.events) if kind == "start"}
    for job_id, enqueued_at in position.items():
        end = started_at.get(job_id)
        if end is None:
            violations.append(f"job {job_id} never started")
            continue
        others = Counter(
            guild
            for kind, _, guild in order.events[enqueued_at + 1 : end]
            if kind == "start" and guild != guild_of[job_id]
        )
        allowed = queued_ahead[job_id] + 1
        for guild, count in others.items():
            if count > allowed:
                violations.append(
                    f"job {job_id} of server {guild_of[job_id]} ({queued_ahead[job_id]} of its own ahead) waited "
                    f"behind {count} jobs of server {guild}"
                )
    return violations


class RecordingPoster:
    """Stands in for Discord delivery: records each result instead of posting it."""

    def __init__(self) -> None:
        self.delivered: Counter[int] = Counter()
        self.failures: list[tuple[int, str]] = []

    def channel(self, job: Job) -> Any:
        raise AssertionError("the simulation has no status messages")

    async def post_result(self, job: Job, result: GenerationResult, interaction: Any) -> PostedResult:
        self.delivered[job.id] += 1
        return PostedResult(message_id=job.id, posted_format=str(result.output_format))

    async def post_failure(self, job: Job, message: str, interaction: Any, *, ephemeral: bool) -> None:
        self.failures.append((job.id, message))


# -- the run ----------------------------------------------------------------------------------------
@dataclass
class SimulationReport:
    jobs: int
    completed: int
    failures: list[tuple[int, str]]
    violations: list[str]
    # Simulated seconds from enqueue to a worker starting the job.
    waits_s: dict[int, float]
    busy_guilds: set[int]
    batches: int
    joins: int  # groups of jobs that joined a running batch (continuous batching)
    wall_s: float

    def percentile(self, values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else float("nan")

    def lines(self, guild_of: dict[int, int]) -> list[str]:
        all_waits = list(self.waits_s.values())
        quiet = [w for job_id, w in self.waits_s.items() if guild_of[job_id] not in self.busy_guilds]
        busy = [w for job_id, w in self.waits_s.items() if guild_of[job_id] in self.busy_guilds]
        out = [
            f"jobs {self.jobs}, completed {self.completed}, failed {len(self.failures)}, batches {self.batches}, "
            f"joins {self.joins}, wall {self.wall_s:.1f} s",
            f"fairness violations: {len(self.violations)}",
        ]
        for name, waits in (("all", all_waits), ("quiet servers", quiet), ("busy servers", busy)):
            out.append(
                f"wait per job ({name}, {len(waits)} jobs): p50 {self.percentile(waits, 50):.1f} s, "
                f"p99 {self.percentile(waits, 99):.1f} s (simulated seconds)"
            )
        return out


async def simulate(
    traffic: Traffic,
    *,
    backend: str = "simulated",
    workers: int = 8,
    max_batch_size: int = 4,
    time_scale: float = 0.01,
    batch_wait_s: float = 0.0,
    continuous_batching: bool = True,
    folder: Path,
) -> tuple[SimulationReport, dict[int, int]]:
    """Run the traffic through a real job store, scheduler and dispatcher on the chosen back end."""
    arrivals = bursty_arrivals(traffic)
    database = await Database.open(folder / "simulation.sqlite3")
    store = PatientJobStore(database)
    order = StartOrder()
    # Caps high enough that no job is refused: the simulation is about the order of service.
    scheduler = RecordingScheduler(
        QueueLimits(max_pending_per_user=10**6, max_pending_per_guild=10**6),
        BatchLimits(max_jobs=max_batch_size),
        order,
    )
    poster = RecordingPoster()
    enqueued_at: dict[int, float] = {}
    guild_of: dict[int, int] = {}
    loop = asyncio.get_running_loop()
    async with BACKENDS[backend](workers, time_scale, folder) as inference:
        starts: dict[int, float] = {}
        dispatcher = JobDispatcher(
            store=store,
            scheduler=scheduler,
            inference=inference,
            poster=poster,  # type: ignore[arg-type]
            options=DispatcherOptions(
                output_dir=folder / "outputs",
                worker_slots=inference.worker_count if hasattr(inference, "worker_count") else workers,
                job_retries=1,
                progress_interval_s=0,
                batch_wait_s=batch_wait_s,
                continuous_batching=continuous_batching,
            ),
        )
        original_submit_batch, original_join_batch = inference.submit_batch, inference.join_batch

        def started(jobs: Sequence[JobSubmission]) -> None:
            now = loop.time()
            for job in jobs:
                starts[int(job.job_id)] = now

        def recording_submit_batch(jobs: Sequence[JobSubmission], output_dir: str | Path) -> Any:
            started(jobs)
            return original_submit_batch(jobs, output_dir)

        def recording_join_batch(
            running: Sequence[str], jobs: Sequence[JobSubmission], output_dir: str | Path
        ) -> Any:
            started(jobs)
            return original_join_batch(running, jobs, output_dir)

        inference.submit_batch = recording_submit_batch
        inference.join_batch = recording_join_batch
        dispatcher.start()
        began = loop.time()
        for arrival in arrivals:
            delay = began + arrival.at_s * time_scale - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            request = GenerationRequest(
                model_version="small", prompt=f"server {arrival.guild_id}", duration=arrival.duration, seed=1
            )
            job = await store.create(
                JobOrigin(arrival.guild_id, arrival.guild_id, arrival.user_id), request, seed_was_random=False
            )
            enqueued_at[job.id] = loop.time()
            guild_of[job.id] = arrival.guild_id
            dispatcher.add(job, None)
        deadline = loop.time() + RUN_TIMEOUT_S
        while len(poster.delivered) + len(poster.failures) < len(arrivals) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        wall_s = loop.time() - began
        await dispatcher.stop()
    await database.close()
    waits = {job_id: (starts[job_id] - enqueued_at[job_id]) / time_scale for job_id in starts}
    report = SimulationReport(
        jobs=len(arrivals),
        completed=sum(1 for count in poster.delivered.values() if count == 1),
        failures=poster.failures,
        violations=fairness_violations(order),
        waits_s=waits,
        busy_guilds=set(range(1, traffic.busy_servers + 1)),
        batches=scheduler.batches,
        joins=scheduler.joins,
        wall_s=wall_s,
    )
    return report, guild_of


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="simulated")
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--busy", type=int, default=10, help="busy servers among them [10]")
    parser.add_argument("--busy-jobs", type=int, default=40, help="jobs per busy server [40]")
    parser.add_argument("--window", type=float, default=600.0, help="simulated seconds of traffic [600]")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--time-scale", type=float, default=0.01, help="wall seconds per simulated second")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-continuous-batching",
        action="store_true",
        help="queued jobs wait for the next batch instead of joining a running one",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    traffic = Traffic(
        servers=args.servers,
        busy_servers=args.busy,
        busy_jobs=args.busy_jobs,
        window_s=args.window,
        seed=args.seed,
    )
    # The job store commits on every change: on a disk each commit waits for a flush, which the
    # time scale would turn into minutes of simulated waiting. Memory-backed storage where there is one.
    scratch = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="server-sim-", dir=scratch) as folder:
        report, guild_of = asyncio.run(
            simulate(
                traffic,
                backend=args.backend,
                workers=args.workers,
                max_batch_size=args.max_batch_size,
                time_scale=args.time_scale,
                continuous_batching=not args.no_continuous_batching,
                folder=Path(folder),
            )
        )
    joining = "off" if args.no_continuous_batching else "on"
    print(
        f"# {traffic.servers} servers ({traffic.busy_servers} busy), {args.backend} back end, "
        f"{args.workers} workers, batches of up to {args.max_batch_size}, continuous batching {joining}"
    )
    for line in report.lines(guild_of):
        print(line)
    for violation in report.violations[:10]:
        print("  ", violation)
    ok = report.completed == report.jobs and not report.violations and not report.failures
    print(f"RESULT all_jobs_completed_fairly {'ok' if ok else 'short'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
