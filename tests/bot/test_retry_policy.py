"""The crash and retry policy on its own: which cut-short job runs again, and what its member reads."""

from __future__ import annotations

import dataclasses
from typing import Any

from bot.pipeline.retries import (
    BATCH_CRASH_REASON,
    BATCH_DEADLINE_REASON,
    CRASHED_TWICE_TEXT,
    RESTARTED_TWICE_TEXT,
    TOOK_TOO_LONG_TEXT,
    GiveUp,
    Retry,
    RetryPolicy,
)
from bot.storage.jobs import Job, JobStatus
from inference.errors import WorkerCrashed


def job_on_attempt(attempts: int, job_id: int = 7) -> Job:
    """A running job, read after it was marked running: `attempts` counts the run now cut short.

    The policy reads only the id and the attempts; every other field is left empty.
    """
    empty: dict[str, Any] = {field.name: None for field in dataclasses.fields(Job)}
    return Job(**empty | {"id": job_id, "status": JobStatus.RUNNING, "attempts": attempts})


def test_a_crash_alone_is_retried_once_then_the_job_fails() -> None:
    policy = RetryPolicy(job_retries=1)
    crash = WorkerCrashed("worker exited with code -9")
    assert policy.after_crash(job_on_attempt(1), crash, missed=None) == Retry(
        error="worker crashed: worker exited with code -9",
        reason="the generator crashed on the first",
        notice="⚠️ Job #7: the generator crashed; trying once more…",
    )
    assert policy.after_crash(job_on_attempt(2), crash, missed=None) == GiveUp(CRASHED_TWICE_TEXT)


def test_a_job_the_watchdog_stopped_took_too_long_it_did_not_crash() -> None:
    policy = RetryPolicy(job_retries=1)
    killed = WorkerCrashed("worker exited with code -9")
    retry = policy.after_crash(job_on_attempt(1), killed, missed="it missed its deadline")
    assert retry == Retry(
        error="stopped by the watchdog: it missed its deadline",
        reason="the first took too long",
        notice="⚠️ Job #7: it was taking too long; trying once more…",
    )
    assert policy.after_crash(job_on_attempt(2), killed, missed="it stalled") == GiveUp(TOOK_TOO_LONG_TEXT)


def test_a_crash_under_a_batch_costs_no_job_its_retry() -> None:
    """Any job of the batch may have caused it: each runs again alone, however many tries it had."""
    policy = RetryPolicy(job_retries=1)
    crash = WorkerCrashed("out of memory", running_jobs=3)
    for attempts in (1, 2, 5):
        retry = policy.after_crash(job_on_attempt(attempts), crash, missed=None)
        assert isinstance(retry, Retry) and retry.refund_attempt
        assert retry.reason == BATCH_CRASH_REASON
        assert retry.notice == "⚠️ Job #7: the generator crashed; trying again on its own…"
    slow = policy.after_crash(job_on_attempt(1), crash, missed="it stalled")
    assert isinstance(slow, Retry) and slow.reason == BATCH_DEADLINE_REASON and slow.refund_attempt


def test_a_job_left_running_by_a_restart_runs_again_unless_it_had_its_tries() -> None:
    policy = RetryPolicy(job_retries=1)
    assert policy.after_restart(job_on_attempt(1)) == Retry(
        error="interrupted by a restart", reason="the bot restarted during the first"
    )
    assert policy.after_restart(job_on_attempt(2)) == GiveUp(RESTARTED_TWICE_TEXT)
    assert isinstance(RetryPolicy(job_retries=0).after_restart(job_on_attempt(1)), GiveUp)


def test_the_status_label_says_why_a_job_is_on_another_try() -> None:
    policy = RetryPolicy(job_retries=1)
    assert policy.label(job_on_attempt(1)) == "Job #7"
    assert policy.label(job_on_attempt(2)) == "Job #7 (second try: the first was interrupted)"
    crash = policy.after_crash(job_on_attempt(1), WorkerCrashed("gone"), missed=None)
    assert isinstance(crash, Retry)
    policy.remember(7, crash)
    assert policy.label(job_on_attempt(2)) == "Job #7 (second try: the generator crashed on the first)"
    alone = policy.after_crash(job_on_attempt(1), WorkerCrashed("gone", running_jobs=2), missed=None)
    assert isinstance(alone, Retry)
    policy.remember(7, alone)
    # Its attempt was refunded: still the first try, now running alone.
    assert policy.label(job_on_attempt(1)) == f"Job #7 ({BATCH_CRASH_REASON})"
    policy.forget(7)
    assert policy.label(job_on_attempt(1)) == "Job #7"
