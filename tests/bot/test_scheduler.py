"""The fair queue on its own: round-robin across guilds, FIFO within one, caps, cancel, retry."""

from __future__ import annotations

import pytest

from bot.scheduler import FairScheduler, QueueLimits, ScheduledJob

GUILD_A, GUILD_B, GUILD_C = 100, 200, 300
ALICE, BOB, CAROL = 1, 2, 3


def make_scheduler(per_user: int = 10, per_guild: int = 20) -> FairScheduler:
    return FairScheduler(QueueLimits(max_pending_per_user=per_user, max_pending_per_guild=per_guild))


def drain(scheduler: FairScheduler) -> list[int]:
    started = []
    while (job := scheduler.next_job()) is not None:
        started.append(job.job_id)
        scheduler.finish(job.job_id)
    return started


def test_one_guild_is_served_first_in_first_out() -> None:
    scheduler = make_scheduler()
    for job_id in (1, 2, 3):
        scheduler.enqueue(ScheduledJob(job_id, GUILD_A, ALICE))
    assert drain(scheduler) == [1, 2, 3]


def test_a_guild_that_floods_the_queue_only_delays_itself() -> None:
    scheduler = make_scheduler()
    for job_id in (1, 2, 3, 4):
        scheduler.enqueue(ScheduledJob(job_id, GUILD_A, ALICE))
    scheduler.enqueue(ScheduledJob(10, GUILD_B, BOB))
    scheduler.enqueue(ScheduledJob(11, GUILD_B, BOB))
    scheduler.enqueue(ScheduledJob(20, GUILD_C, CAROL))
    assert scheduler.queued_in_order() == [
        scheduler.guild_queue(GUILD_A)[0],
        scheduler.guild_queue(GUILD_B)[0],
        scheduler.guild_queue(GUILD_C)[0],
        scheduler.guild_queue(GUILD_A)[1],
        scheduler.guild_queue(GUILD_B)[1],
        scheduler.guild_queue(GUILD_A)[2],
        scheduler.guild_queue(GUILD_A)[3],
    ]
    assert drain(scheduler) == [1, 10, 20, 2, 11, 3, 4]


def test_a_guild_arriving_later_joins_the_rotation_at_the_back() -> None:
    scheduler = make_scheduler()
    scheduler.enqueue(ScheduledJob(1, GUILD_A, ALICE))
    scheduler.enqueue(ScheduledJob(2, GUILD_A, ALICE))
    first = scheduler.next_job()
    assert first is not None and first.job_id == 1
    scheduler.enqueue(ScheduledJob(10, GUILD_B, BOB))
    # A was just served, so B goes before A's second job.
    assert [job.job_id for job in scheduler.queued_in_order()] == [10, 2]


def test_positions_follow_the_start_order_and_running_jobs_are_position_zero() -> None:
    scheduler = make_scheduler()
    scheduler.enqueue(ScheduledJob(1, GUILD_A, ALICE))
    scheduler.enqueue(ScheduledJob(2, GUILD_A, ALICE))
    scheduler.enqueue(ScheduledJob(10, GUILD_B, BOB))
    assert [scheduler.position(j) for j in (1, 10, 2)] == [1, 2, 3]
    scheduler.next_job()
    assert scheduler.position(1) == 0
    assert scheduler.position(10) == 1
    assert scheduler.position(999) is None
    assert scheduler.positions() == {1: 0, 10: 1, 2: 2}  # all at once, as /queue shows them


def test_the_per_user_cap_counts_queued_and_running_jobs_in_that_guild() -> None:
    scheduler = make_scheduler(per_user=2)
    scheduler.enqueue(ScheduledJob(1, GUILD_A, ALICE))
    scheduler.enqueue(ScheduledJob(2, GUILD_A, ALICE))
    scheduler.next_job()  # job 1 runs: still pending
    refusal = scheduler.admission_refusal(GUILD_A, ALICE)
    assert refusal is not None and "limit is 2" in refusal
    assert scheduler.admission_refusal(GUILD_A, BOB) is None
    assert scheduler.admission_refusal(GUILD_B, ALICE) is None
    scheduler.finish(1)
    assert scheduler.admission_refusal(GUILD_A, ALICE) is None


def test_the_guild_cap_and_an_admin_override() -> None:
    scheduler = make_scheduler(per_user=5, per_guild=3)
    for job_id, user in ((1, ALICE), (2, BOB), (3, CAROL)):
        scheduler.enqueue(ScheduledJob(job_id, GUILD_A, user))
    refusal = scheduler.admission_refusal(GUILD_A, 4)
    assert refusal is not None and "queue is full" in refusal
    scheduler.set_guild_limit(GUILD_A, 4)
    assert scheduler.admission_refusal(GUILD_A, 4) is None
    scheduler.set_guild_limit(GUILD_A, 1)
    assert scheduler.admission_refusal(GUILD_A, 4) is not None
    scheduler.set_guild_limit(GUILD_A, None)
    assert scheduler.guild_limit(GUILD_A) == 3


def test_cancelling_a_queued_job_removes_it_and_keeps_the_rest_in_order() -> None:
    scheduler = make_scheduler()
    scheduler.enqueue(ScheduledJob(1, GUILD_A, ALICE))
    scheduler.enqueue(ScheduledJob(2, GUILD_A, ALICE))
    scheduler.enqueue(ScheduledJob(10, GUILD_B, BOB))
    assert scheduler.cancel(10) is True
    assert scheduler.cancel(10) is False
    assert not scheduler.contains(10)
    assert drain(scheduler) == [1, 2]


def test_a_running_job_is_not_cancelled_by_the_scheduler() -> None:
    scheduler = make_scheduler()
    scheduler.enqueue(ScheduledJob(1, GUILD_A, ALICE))
    scheduler.next_job()
    assert scheduler.cancel(1) is False
    assert scheduler.is_running(1)


def test_a_retried_job_goes_to_the_very_front() -> None:
    scheduler = make_scheduler()
    scheduler.enqueue(ScheduledJob(1, GUILD_A, ALICE))
    scheduler.enqueue(ScheduledJob(2, GUILD_A, ALICE))
    scheduler.enqueue(ScheduledJob(10, GUILD_B, BOB))
    crashed = scheduler.next_job()
    assert crashed is not None
    scheduler.finish(crashed.job_id)
    scheduler.enqueue(crashed, front=True)
    assert drain(scheduler) == [1, 10, 2]


def test_a_job_cannot_be_scheduled_twice() -> None:
    scheduler = make_scheduler()
    scheduler.enqueue(ScheduledJob(1, GUILD_A, ALICE))
    with pytest.raises(ValueError):
        scheduler.enqueue(ScheduledJob(1, GUILD_A, ALICE))
