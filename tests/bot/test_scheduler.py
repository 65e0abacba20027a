"""The fair queue on its own: round-robin across guilds, FIFO within one, caps, cancel, retry, batches."""

from __future__ import annotations

import pytest

from bot.pipeline.scheduler import BatchLimits, FairScheduler, QueueLimits, ScheduledJob

GUILD_A, GUILD_B, GUILD_C, GUILD_D = 100, 200, 300, 400
ALICE, BOB, CAROL, DAVE = 1, 2, 3, 4
SMALL, MELODY = ("small",), ("melody",)


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


# -- batches ------------------------------------------------------------------------------------------
def batching_scheduler(max_jobs: int = 4, max_audio_seconds: float = 1000.0) -> FairScheduler:
    return FairScheduler(
        QueueLimits(max_pending_per_user=10, max_pending_per_guild=20),
        BatchLimits(max_jobs=max_jobs, max_audio_seconds=max_audio_seconds),
    )


def job(job_id: int, guild_id: int, key: object = SMALL, seconds: float = 8.0) -> ScheduledJob:
    return ScheduledJob(job_id, guild_id, ALICE, batch_key=key, audio_seconds=seconds)


def batches(scheduler: FairScheduler) -> list[list[int]]:
    """Run every batch to its end, as the dispatcher does with one worker."""
    started = []
    while batch := scheduler.next_batch():
        started.append([queued.job_id for queued in batch])
        for queued in batch:
            scheduler.finish(queued.job_id)
    return started


def test_a_batch_takes_jobs_in_round_robin_order_so_every_guild_gets_its_turn() -> None:
    scheduler = batching_scheduler(max_jobs=3)
    for job_id in (1, 2, 3, 4):
        scheduler.enqueue(job(job_id, GUILD_A))
    scheduler.enqueue(job(10, GUILD_B))
    scheduler.enqueue(job(20, GUILD_C))
    # The round-robin order is 1, 10, 20, 2, 3, 4: the flooding guild does not fill the first batch.
    assert batches(scheduler) == [[1, 10, 20], [2, 3, 4]]


def test_a_batch_is_capped_by_its_size_and_by_rows_times_the_longest_job() -> None:
    scheduler = batching_scheduler(max_jobs=4, max_audio_seconds=60)
    scheduler.enqueue(job(1, GUILD_A, seconds=10))
    scheduler.enqueue(job(2, GUILD_B, seconds=20))
    scheduler.enqueue(job(3, GUILD_C, seconds=10))  # 3 rows x 20 s = 60 s: fits
    scheduler.enqueue(job(4, GUILD_D, seconds=10))  # 4 x 20 = 80 s: waits
    assert batches(scheduler) == [[1, 2, 3], [4]]

    sized = batching_scheduler(max_jobs=2)
    for job_id, guild in ((1, GUILD_A), (2, GUILD_B), (3, GUILD_C)):
        sized.enqueue(job(job_id, guild))
    assert batches(sized) == [[1, 2], [3]]


def test_batch_size_one_is_the_plain_round_robin() -> None:
    scheduler = batching_scheduler(max_jobs=1)
    for job_id in (1, 2):
        scheduler.enqueue(job(job_id, GUILD_A))
    scheduler.enqueue(job(10, GUILD_B))
    assert batches(scheduler) == [[1], [10], [2]]


def test_only_jobs_with_the_same_batch_key_share_a_batch_and_none_runs_alone() -> None:
    scheduler = batching_scheduler()
    scheduler.enqueue(job(1, GUILD_A, key=None))  # e.g. a continuation
    scheduler.enqueue(job(2, GUILD_B))
    scheduler.enqueue(job(3, GUILD_C, key=None))
    scheduler.enqueue(job(4, GUILD_D))
    assert batches(scheduler) == [[1], [2, 4], [3]]


def test_a_job_that_cannot_join_goes_in_the_next_batch_and_is_never_passed_over_twice() -> None:
    scheduler = batching_scheduler(max_jobs=4)
    scheduler.enqueue(job(1, GUILD_A, key=SMALL))
    scheduler.enqueue(job(2, GUILD_B, key=MELODY))
    scheduler.enqueue(job(3, GUILD_C, key=SMALL))
    first = [queued.job_id for queued in scheduler.next_batch()]
    assert first == [1, 3]  # job 2 is passed over once
    # More small jobs arrive while the first batch runs, from guilds never served before: without the
    # rule they would go first and make a batch without job 2 again.
    scheduler.enqueue(job(4, GUILD_D, key=SMALL))
    scheduler.enqueue(job(5, GUILD_A, key=SMALL))
    assert scheduler.queued_in_order()[0].job_id == 2
    for job_id in first:
        scheduler.finish(job_id)
    assert batches(scheduler) == [[2], [4, 5]]


def test_a_batch_stops_growing_rather_than_pass_over_a_job_a_second_time() -> None:
    scheduler = batching_scheduler(max_jobs=4)
    scheduler.enqueue(job(1, GUILD_A, key=SMALL))
    scheduler.enqueue(job(2, GUILD_B, key=MELODY))
    scheduler.enqueue(job(3, GUILD_C, key=("large",)))
    scheduler.enqueue(job(4, GUILD_D, key=SMALL))
    assert [queued.job_id for queued in scheduler.next_batch()] == [1, 4]  # 2 and 3 passed over once
    scheduler.enqueue(job(5, GUILD_A, key=MELODY))
    # 2 leads; 3 cannot join and was passed over already, so 5 (behind it) waits too.
    assert [queued.job_id for queued in scheduler.next_batch()] == [2]
    assert [queued.job_id for queued in scheduler.next_batch()] == [3]
    assert [queued.job_id for queued in scheduler.next_batch()] == [5]


def test_jobs_skipped_after_the_last_one_taken_were_not_passed_over() -> None:
    scheduler = batching_scheduler(max_jobs=4)
    scheduler.enqueue(job(1, GUILD_A, key=SMALL))
    scheduler.enqueue(job(2, GUILD_B, key=SMALL))
    scheduler.enqueue(job(3, GUILD_A, key=MELODY))
    assert [queued.job_id for queued in scheduler.next_batch()] == [1, 2]
    scheduler.enqueue(job(4, GUILD_C, key=SMALL))
    # Nothing behind job 3 was taken, so it keeps its ordinary place: a guild never served goes first.
    assert [queued.job_id for queued in scheduler.queued_in_order()] == [4, 3]


def test_retried_jobs_run_one_at_a_time_before_anything_else() -> None:
    scheduler = batching_scheduler(max_jobs=4)
    for job_id, guild in ((1, GUILD_A), (2, GUILD_B), (3, GUILD_C)):
        scheduler.enqueue(job(job_id, guild))
    crashed = scheduler.next_batch()
    assert [queued.job_id for queued in crashed] == [1, 2, 3]
    scheduler.enqueue(job(4, GUILD_D))
    for queued in crashed:  # the worker died under the batch: each is retried alone
        scheduler.finish(queued.job_id)
        scheduler.enqueue(queued, front=True)
    assert batches(scheduler)[:3] == [[1], [2], [3]]


def test_peeking_at_the_next_batch_changes_nothing_and_says_whether_it_could_grow() -> None:
    scheduler = batching_scheduler(max_jobs=3)
    scheduler.enqueue(job(1, GUILD_A, key=SMALL))
    scheduler.enqueue(job(2, GUILD_B, key=MELODY))
    scheduler.enqueue(job(3, GUILD_C, key=SMALL))
    preview = scheduler.peek_batch()
    assert [queued.job_id for queued in preview] == [1, 3]
    assert scheduler.can_grow(preview)  # a third small job may still come
    # Peeking passed nobody over: a new guild's job still goes before job 2.
    scheduler.enqueue(job(4, GUILD_D, key=MELODY))
    assert [queued.job_id for queued in scheduler.queued_in_order()] == [1, 2, 3, 4]
    scheduler.enqueue(job(5, GUILD_D, key=SMALL))
    assert not scheduler.can_grow(scheduler.peek_batch())  # 1, 3, 5: full
    alone = batching_scheduler()
    alone.enqueue(job(6, GUILD_A, key=None))
    assert not alone.can_grow(alone.peek_batch())


# -- continuous batching: jobs joining a running batch ------------------------------------------------
def joiners(scheduler: FairScheduler, key: object, running: int, longest: float = 8.0) -> list[int]:
    return [queued.job_id for queued in scheduler.next_joiners(key, running, longest)]


def test_jobs_join_a_running_batch_in_round_robin_order_up_to_its_size() -> None:
    scheduler = batching_scheduler(max_jobs=4)
    scheduler.enqueue(job(1, GUILD_A))
    assert [queued.job_id for queued in scheduler.next_batch()] == [1]
    for job_id in (2, 3, 4):
        scheduler.enqueue(job(job_id, GUILD_A))
    scheduler.enqueue(job(10, GUILD_B))
    # Three places left beside job 1, taken in the round-robin order: guild A was just served, so
    # guild B's job goes first, then A's, then B's turn is over and A's next one.
    assert joiners(scheduler, SMALL, running=1) == [10, 2, 3]
    assert scheduler.is_running(10) and scheduler.position(4) == 1
    assert joiners(scheduler, SMALL, running=4) == []  # full
    assert joiners(scheduler, SMALL, running=3) == [4]  # a job left: room for one more


def test_joiners_respect_the_audio_budget_of_the_running_batch() -> None:
    scheduler = batching_scheduler(max_jobs=4, max_audio_seconds=60)
    scheduler.enqueue(job(1, GUILD_A, seconds=30))
    scheduler.enqueue(job(2, GUILD_B, seconds=10))
    # Two running jobs, the longest 20 s: job 1 would make 3 x 30 = 90 s, job 2 makes 3 x 20 = 60 s.
    assert joiners(scheduler, SMALL, running=2, longest=20) == [2]
    assert [queued.job_id for queued in scheduler.queued_in_order()] == [1]


def test_only_jobs_of_the_running_batch_s_key_join_and_none_passes_a_job_over_twice() -> None:
    scheduler = batching_scheduler(max_jobs=8)
    scheduler.enqueue(job(1, GUILD_A, key=MELODY))
    scheduler.enqueue(job(2, GUILD_B, key=SMALL))
    assert joiners(scheduler, SMALL, running=1) == [2]  # job 1 is passed over once
    scheduler.enqueue(job(3, GUILD_C, key=SMALL))
    # Job 3 would pass job 1 over a second time: it waits, and job 1 starts the next batch.
    assert joiners(scheduler, SMALL, running=2) == []
    assert [queued.job_id for queued in scheduler.queued_in_order()] == [1, 3]
    assert joiners(scheduler, None, running=1) == []  # a batch that runs alone takes nobody


def test_a_retried_job_never_joins_a_running_batch() -> None:
    scheduler = batching_scheduler(max_jobs=4)
    retried = job(1, GUILD_A)
    scheduler.enqueue(retried)
    scheduler.next_batch()
    scheduler.finish(1)
    scheduler.enqueue(retried, front=True)  # its worker crashed under a batch: it runs alone next
    assert scheduler.runs_alone(retried)
    assert joiners(scheduler, SMALL, running=1) == []
    assert [queued.job_id for queued in scheduler.next_batch()] == [1]
