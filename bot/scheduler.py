"""Which job runs next: per-guild FIFO queues served round-robin, with per-user and per-guild caps.

Pure logic with no I/O and no clock, so it is tested deterministically on its own. The dispatcher
owns one `FairScheduler`, asks it for the next job whenever a worker is free, and tells it when a
job has finished; the database stays the source of truth across restarts.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ScheduledJob:
    """What the scheduler needs to know about a job: who asked, where."""

    job_id: int
    guild_id: int
    user_id: int


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

    def __init__(self, limits: QueueLimits) -> None:
        self.limits = limits
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
        # Guilds whose head is a retried job: served before anyone else.
        self._retry_first: set[int] = set()

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
        """Queue a job at the back of its guild's queue, or (front=True, a retry) at the very front."""
        if self.contains(job.job_id):
            raise ValueError(f"job {job.job_id} is already scheduled")
        if job.guild_id not in self._queues:
            self._queues[job.guild_id] = deque()
            self._arrival[job.guild_id] = next(self._arrivals)
        queue = self._queues[job.guild_id]
        if front:
            # A retried job was already served once: it goes next, not after every other guild.
            queue.appendleft(job)
            self._retry_first.add(job.guild_id)
        else:
            queue.append(job)

    def next_job(self) -> ScheduledJob | None:
        """Take the next job to run (it counts as running until `finish`), or None if none is queued."""
        guild_id = self._next_guild(self._queues.keys(), self._last_served)
        if guild_id is None:
            return None
        queue = self._queues[guild_id]
        job = queue.popleft()
        self._last_served[guild_id] = next(self._turns)
        self._retry_first.discard(guild_id)
        if not queue:
            self._drop_guild(guild_id)
        self._running[job.job_id] = job
        return job

    def finish(self, job_id: int) -> None:
        """Forget a running job (done, failed, cancelled, or about to be re-enqueued)."""
        self._running.pop(job_id, None)

    def cancel(self, job_id: int) -> bool:
        """Remove a queued job; False if it is not queued (running jobs are cancelled by the worker)."""
        for guild_id, queue in self._queues.items():
            for job in queue:
                if job.job_id == job_id:
                    queue.remove(job)
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
        """Every queued job, in the order the round-robin will start them."""
        queues = {guild_id: deque(queue) for guild_id, queue in self._queues.items()}
        last_served = dict(self._last_served)
        retry_first = set(self._retry_first)
        order: list[ScheduledJob] = []
        turn = 0
        while (guild_id := self._next_guild(queues.keys(), last_served, retry_first)) is not None:
            order.append(queues[guild_id].popleft())
            # Later than every real turn so far: simulated turns only compare among themselves.
            last_served[guild_id] = (1 << 62) + turn
            turn += 1
            retry_first.discard(guild_id)
            if not queues[guild_id]:
                del queues[guild_id]
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

    def _next_guild(
        self, guild_ids: Iterable[int], last_served: dict[int, int], retry_first: set[int] | None = None
    ) -> int | None:
        """The guild served next: a retry first, else the least recently served (ties: arrival order)."""
        retry_first = self._retry_first if retry_first is None else retry_first
        candidates = list(guild_ids)
        if not candidates:
            return None
        return min(
            candidates,
            key=lambda g: (g not in retry_first, last_served.get(g, -1), self._arrival[g]),
        )

    def _drop_guild(self, guild_id: int) -> None:
        del self._queues[guild_id]
        del self._arrival[guild_id]
        self._retry_first.discard(guild_id)

    def _pending_in_guild(self, guild_id: int) -> list[ScheduledJob]:
        running = [job for job in self._running.values() if job.guild_id == guild_id]
        return running + list(self._queues.get(guild_id, ()))
