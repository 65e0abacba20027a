"""Which jobs run next: per-guild FIFO queues served round-robin, with per-user and per-guild caps,
taken a batch at a time.

Pure logic with no I/O and no clock, so it is tested deterministically on its own. The dispatcher
owns one `FairScheduler`, asks it for the next batch whenever a worker is free, and tells it when a
job has finished; the database stays the source of truth across restarts.

A batch follows the round-robin order: its first job is the one the rotation serves next, and the
jobs after it in that order join while they can share its batch (same batch key) and fit the caps.
A job that cannot join is passed over: it waits for the next batch, at the front of the line, and
is never passed over a second time (a batch stops growing rather than skip it again). So fairness
holds when counted in batches: nobody waits longer than one batch for being different.

The takes of one request (`/generate takes:N`, one `group`) were asked for together: they are served
in one turn of their guild and join a batch together or not at all, so they run as one batch
wherever the batch's size and audio budget leave room for all of them. Only takes that could never
share one batch (more than `max_jobs`, or over the audio budget together) are split, in order.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class ScheduledJob:
    """What the scheduler needs to know about a job: who asked, where, and how it batches."""

    job_id: int
    guild_id: int
    user_id: int
    # Jobs with equal keys may share a batch (the engine can run them together); None runs alone.
    batch_key: Hashable | None = None
    # Seconds of audio the job generates: its share of a batch's budget.
    audio_seconds: float = 0.0
    # The takes of one request share a group (the first take's job id); None: a job asked for alone.
    group: int | None = None


@dataclass(frozen=True)
class BatchLimits:
    """How big a batch may grow."""

    max_jobs: int = 1
    # Every row of a batch is generated to the longest job's length, so a batch costs (and holds in
    # memory) rows x longest seconds of audio: this caps that product.
    max_audio_seconds: float = math.inf

    def fits(self, jobs: int, longest_seconds: float) -> bool:
        return jobs <= self.max_jobs and jobs * longest_seconds <= self.max_audio_seconds


@dataclass(frozen=True)
class QueueLimits:
    """Caps on pending (queued + running) jobs."""

    max_pending_per_user: int
    max_pending_per_guild: int


class FairScheduler:
    """Per-guild FIFO queues served round-robin across guilds.

    A guild that floods the queue only delays itself: each turn serves the guild with queued jobs
    that was served least recently (never-served guilds first, in order of arrival), so a guild that
    shows up while another is busy goes next rather than behind the busy guild's backlog.
    """

    def __init__(self, limits: QueueLimits, batching: BatchLimits | None = None) -> None:
        self.limits = limits
        self.batching = batching if batching is not None else BatchLimits()
        # Admin-set caps that replace limits.max_pending_per_guild for one guild.
        self._guild_limits: dict[int, int] = {}
        self._queues: dict[int, deque[ScheduledJob]] = {}
        self._running: dict[int, ScheduledJob] = {}
        # Round-robin state: the turn each guild was last served on (-1: never), and the order in
        # which guilds' queues became non-empty (breaks ties among never-served guilds).
        self._turns = itertools.count()
        self._last_served: dict[int, int] = {}
        self._arrivals = itertools.count()
        self._arrival: dict[int, int] = {}
        # Retried jobs (after a crash): served before anyone else, and each in a batch of its own,
        # so one bad job cannot take its neighbours' retry down with it.
        self._retried: set[int] = set()
        # Jobs a batch has passed over once: served next, and never passed over again.
        self._passed_over: set[int] = set()

    # -- limits ---------------------------------------------------------------------------------
    def set_guild_limit(self, guild_id: int, max_pending: int | None) -> None:
        """Set (or with None, clear) a guild's own cap on pending jobs."""
        if max_pending is None:
            self._guild_limits.pop(guild_id, None)
        else:
            self._guild_limits[guild_id] = max_pending

    def guild_limit(self, guild_id: int) -> int:
        return self._guild_limits.get(guild_id, self.limits.max_pending_per_guild)

    def pending_for_user(self, guild_id: int, user_id: int) -> int:
        return sum(1 for job in self._pending_in_guild(guild_id) if job.user_id == user_id)

    def pending_for_guild(self, guild_id: int) -> int:
        return sum(1 for _ in self._pending_in_guild(guild_id))

    def admission_refusal(self, guild_id: int, user_id: int) -> str | None:
        """Why a new job from this member would be refused now, or None if it may be queued."""
        user_pending = self.pending_for_user(guild_id, user_id)
        if user_pending >= self.limits.max_pending_per_user:
            return (
                f"You already have {user_pending} job(s) queued or running here (the limit is "
                f"{self.limits.max_pending_per_user}). Wait for one to finish, or `/cancel` one."
            )
        guild_pending = self.pending_for_guild(guild_id)
        if guild_pending >= self.guild_limit(guild_id):
            return (
                f"This server's queue is full ({guild_pending} jobs queued or running, the limit is "
                f"{self.guild_limit(guild_id)}). Try again when some have finished."
            )
        return None

    # -- queueing -------------------------------------------------------------------------------
    def enqueue(self, job: ScheduledJob, *, front: bool = False) -> None:
        """Queue a job at the back of its guild's queue, or (front=True, a retry) at the very front,
        to run in a batch of its own."""
        if self.contains(job.job_id):
            raise ValueError(f"job {job.job_id} is already scheduled")
        if job.guild_id not in self._queues:
            self._queues[job.guild_id] = deque()
            self._arrival[job.guild_id] = next(self._arrivals)
        queue = self._queues[job.guild_id]
        if front:
            # A retried job was already served once: it goes next, not after every other guild.
            queue.appendleft(job)
            self._retried.add(job.job_id)
        else:
            queue.append(job)

    def next_job(self) -> ScheduledJob | None:
        """Take the next job to run alone (it counts as running until `finish`), or None if none is queued."""
        batch = self._take(self._plan_batch(BatchLimits(max_jobs=1)))
        return batch[0] if batch else None

    def next_batch(self) -> list[ScheduledJob]:
        """Take the next batch to run (each job counts as running until `finish`); [] if none is queued."""
        return self._take(self._plan_batch(self.batching))

    def peek_batch(self) -> list[ScheduledJob]:
        """The batch `next_batch` would take now, leaving everything as it is."""
        return self._plan_batch(self.batching, mark_passed_over=False)

    def can_grow(self, batch: list[ScheduledJob]) -> bool:
        """Whether jobs queued later could still join this batch (it is not full and may be shared)."""
        return len(batch) < self.batching.max_jobs and not self.runs_alone(batch[0])

    def runs_alone(self, job: ScheduledJob) -> bool:
        """Whether a queued job's batch is its alone: it shares with nobody, or is a retry after a crash."""
        return job.batch_key is None or job.job_id in self._retried

    def next_joiners(
        self, batch_key: Hashable, running_jobs: int, longest_seconds: float
    ) -> list[ScheduledJob]:
        """Take the queued jobs that join a running batch now (continuous batching): in round-robin
        order, the jobs with its key that fit beside its `running_jobs` (the longest of them making
        `longest_seconds`), under the same rules as a new batch (a job passed over once is passed over
        no more). They count as running until `finish`."""
        if running_jobs >= self.batching.max_jobs:
            return []  # full: no need to work out the round-robin order on every wake
        joiners = self._grow(batch_key, running_jobs, longest_seconds, self.queued_in_order(), self.batching)
        return self._take(joiners)

    def _plan_batch(self, limits: BatchLimits, *, mark_passed_over: bool = True) -> list[ScheduledJob]:
        """The next batch, in round-robin order, without taking it; marks the jobs it passes over."""
        order = self.queued_in_order()
        if not order:
            return []
        first = order[0]
        if self.runs_alone(first):
            return [first]
        assert first.batch_key is not None
        # The first job's own takes, next to it in the order, come with it: as many as fit.
        joined = self._grow(
            first.batch_key,
            1,
            first.audio_seconds,
            order[1:],
            limits,
            mark_passed_over,
            lead_group=first.group,
        )
        return [first, *joined]

    def _grow(
        self,
        batch_key: Hashable,
        size: int,
        longest: float,
        candidates: list[ScheduledJob],
        limits: BatchLimits,
        mark_passed_over: bool = True,
        *,
        lead_group: int | None = None,
    ) -> list[ScheduledJob]:
        """The candidates, in order, that join a batch of `size` jobs with this key; marks the jobs they
        pass over (skipped before one that joins), and stops rather than pass one over twice.

        The takes of one request join together or not at all, unless they are the rest of the batch's
        first request (`lead_group`) or could never share a batch: then as many as fit join, and the
        others go first in the next batch.
        """
        joined: list[ScheduledJob] = []
        skipped: list[ScheduledJob] = []
        passed_over: list[ScheduledJob] = []
        for unit in _units(candidates):
            if size + len(joined) >= limits.max_jobs:
                break
            fitting = self._fitting(unit, batch_key, size + len(joined), longest, limits)
            may_split = unit[0].group is not None and (
                unit[0].group == lead_group or not _fits_in_one_batch(unit, limits)
            )
            if fitting and (len(fitting) == len(unit) or may_split):
                joined.extend(fitting)
                longest = max([longest, *(job.audio_seconds for job in fitting)])
                # Only the jobs skipped before one that joins are passed over (the rest just wait).
                passed_over.extend(skipped)
                skipped.clear()
                if len(fitting) < len(unit):
                    passed_over.extend(unit[len(fitting) :])  # the rest of these takes go next
                    break
            elif any(job.job_id in self._passed_over for job in unit):
                break  # taking anything after it would pass it over a second time
            else:
                skipped.extend(unit)
        if mark_passed_over:
            self._passed_over.update(job.job_id for job in passed_over)
        return joined

    def _fitting(
        self,
        unit: list[ScheduledJob],
        batch_key: Hashable,
        size: int,
        longest: float,
        limits: BatchLimits,
    ) -> list[ScheduledJob]:
        """The leading jobs of `unit` that can join a batch of `size` jobs with this key."""
        fitting: list[ScheduledJob] = []
        for job in unit:
            longest = max(longest, job.audio_seconds)
            if (
                job.batch_key != batch_key
                or job.job_id in self._retried
                or not limits.fits(size + len(fitting) + 1, longest)
            ):
                break
            fitting.append(job)
        return fitting

    def _take(self, batch: list[ScheduledJob]) -> list[ScheduledJob]:
        """Move planned jobs from their queues to running, each guild counted as served in turn."""
        for job in batch:
            queue = self._queues[job.guild_id]
            queue.remove(job)
            self._last_served[job.guild_id] = next(self._turns)
            self._retried.discard(job.job_id)
            self._passed_over.discard(job.job_id)
            if not queue:
                self._drop_guild(job.guild_id)
            self._running[job.job_id] = job
        return batch

    def finish(self, job_id: int) -> None:
        """Forget a running job (done, failed, cancelled, or about to be re-enqueued)."""
        self._running.pop(job_id, None)

    def cancel(self, job_id: int) -> bool:
        """Remove a queued job; False if it is not queued (running jobs are cancelled by the worker)."""
        for guild_id, queue in self._queues.items():
            for job in queue:
                if job.job_id == job_id:
                    queue.remove(job)
                    self._retried.discard(job_id)
                    self._passed_over.discard(job_id)
                    if not queue:
                        self._drop_guild(guild_id)
                    return True
        return False

    # -- lookups --------------------------------------------------------------------------------
    def contains(self, job_id: int) -> bool:
        return job_id in self._running or any(
            job.job_id == job_id for q in self._queues.values() for job in q
        )

    def is_running(self, job_id: int) -> bool:
        return job_id in self._running

    def queued_in_order(self) -> list[ScheduledJob]:
        """Every queued job, in the round-robin order (the order they start in when nothing batches).

        The status messages ask for it after every new job, so a burst of commands must not make it
        slow: a heap of the guilds by `_guild_key`, in which only the guild just served moves.
        """
        queues = {guild_id: deque(queue) for guild_id, queue in self._queues.items()}
        last_served = dict(self._last_served)
        ready = [(self._guild_key(guild_id, queues, last_served), guild_id) for guild_id in queues]
        heapq.heapify(ready)
        order: list[ScheduledJob] = []
        turn = 0
        while ready:
            _, guild_id = heapq.heappop(ready)
            queue = queues[guild_id]
            head = queue.popleft()
            order.append(head)
            # The takes of one request were asked for together: they are served in one turn.
            while head.group is not None and queue and queue[0].group == head.group:
                order.append(queue.popleft())
            # Later than every real turn so far: simulated turns only compare among themselves.
            last_served[guild_id] = (1 << 62) + turn
            turn += 1
            if queue:
                heapq.heappush(ready, (self._guild_key(guild_id, queues, last_served), guild_id))
        return order

    def position(self, job_id: int) -> int | None:
        """1-based place in the overall start order (1 = starts next); 0 if running; None if unknown."""
        return self.positions().get(job_id)

    def positions(self) -> dict[int, int]:
        """`position()` of every known job, for one simulation of the start order instead of one per job."""
        placed = {job_id: 0 for job_id in self._running}
        placed.update((job.job_id, index) for index, job in enumerate(self.queued_in_order(), start=1))
        return placed

    def guild_queue(self, guild_id: int) -> list[ScheduledJob]:
        """A guild's queued jobs, FIFO."""
        return list(self._queues.get(guild_id, ()))

    def _guild_key(
        self, guild_id: int, queues: dict[int, deque[ScheduledJob]], last_served: dict[int, int]
    ) -> tuple[int, int, int]:
        """The guild with the smallest key is served next: one whose first job is a retry, then one whose
        first job was passed over by a batch, else the least recently served (ties: arrival order;
        arrivals are unique, so no two keys tie)."""
        return (self._head_rank(queues[guild_id][0]), last_served.get(guild_id, -1), self._arrival[guild_id])

    def _head_rank(self, head: ScheduledJob) -> int:
        if head.job_id in self._retried:
            return 0
        if head.job_id in self._passed_over:
            return 1
        return 2

    def _drop_guild(self, guild_id: int) -> None:
        del self._queues[guild_id]
        del self._arrival[guild_id]

    def _pending_in_guild(self, guild_id: int) -> list[ScheduledJob]:
        running = [job for job in self._running.values() if job.guild_id == guild_id]
        return running + list(self._queues.get(guild_id, ()))


def _units(jobs: list[ScheduledJob]) -> list[list[ScheduledJob]]:
    """`jobs` in order, with the takes of one request (next to each other, as queued) as one unit."""
    units: list[list[ScheduledJob]] = []
    for job in jobs:
        if units and job.group is not None and units[-1][-1].group == job.group:
            units[-1].append(job)
        else:
            units.append([job])
    return units


def _fits_in_one_batch(unit: list[ScheduledJob], limits: BatchLimits) -> bool:
    return limits.fits(len(unit), max(job.audio_seconds for job in unit))
