"""When a job whose run was cut short runs again, and what its member is told.

A run is cut short by a worker crash, by the watchdog (`bot/pipeline/deadlines.py`) killing a worker
whose job ran far past its deadline or stalled, or by a restart of the bot. A job gets `job_retries`
tries after its first; a crash under a batch of several jobs does not count against any of them (any
of them may have caused it), and each runs again alone. The dispatcher applies the verdicts: it
queues the job again or fails it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.storage.jobs import Job
from inference.errors import WorkerCrashed

BATCH_CRASH_REASON = "running alone now: the generator crashed during its batch"
BATCH_DEADLINE_REASON = "running alone now: its batch took too long"
TOOK_TOO_LONG_TEXT = (
    "This took too long to make, twice, so I stopped it. It was not your fault: "
    "try a shorter duration, or try again later."
)
CRASHED_TWICE_TEXT = (
    "The generator crashed while making this, twice. It was not your fault; "
    "try again later, perhaps with a shorter duration."
)
RESTARTED_TWICE_TEXT = (
    "The bot restarted while this was being made, more than once. It was not your fault: "
    "please run the command again."
)


@dataclass(frozen=True)
class Retry:
    """Run the job again: its row goes back to the queue with `error`, its next try says `reason`."""

    error: str
    reason: str
    # What its status message says until it runs again (None: nothing new to say yet).
    notice: str | None = None
    # This run does not count against the job's retries (it may not have been this job's fault).
    refund_attempt: bool = False


@dataclass(frozen=True)
class GiveUp:
    """Fail the job and tell its member `text`."""

    text: str


class RetryPolicy:
    """Decides whether a cut-short job runs again, and remembers why a job is on another try."""

    def __init__(self, job_retries: int) -> None:
        self.job_retries = job_retries
        # Why a job is on its second try, for its status message ("the generator crashed on the first").
        self._reasons: dict[int, str] = {}

    def after_restart(self, job: Job) -> Retry | GiveUp:
        """A job the previous run left running: the bot stopped without putting it back (killed,
        crashed), so that run counts as an attempt."""
        if job.attempts > self.job_retries:
            return GiveUp(RESTARTED_TWICE_TEXT)
        return Retry(error="interrupted by a restart", reason="the bot restarted during the first")

    def after_crash(self, job: Job, crash: WorkerCrashed, missed: str | None) -> Retry | GiveUp:
        """A job whose worker died under it; `missed`: why the watchdog killed it, when it did (then the
        job took too long, it did not crash)."""
        cause = f"worker crashed: {crash}" if missed is None else f"stopped by the watchdog: {missed}"
        if crash.running_jobs > 1:
            # Any job running with it may have caused it: each runs again alone, and this crash does
            # not count against them, so one bad job cannot use up its neighbours' retry.
            what_happened = "the generator crashed" if missed is None else "its batch was taking too long"
            return Retry(
                error=f"during a batch: {cause}",
                reason=BATCH_CRASH_REASON if missed is None else BATCH_DEADLINE_REASON,
                notice=f"⚠️ Job #{job.id}: {what_happened}; trying again on its own…",
                refund_attempt=True,
            )
        # The job was read after it was marked running, so its attempts count this run.
        if job.attempts <= self.job_retries:
            what_happened = "the generator crashed" if missed is None else "it was taking too long"
            return Retry(
                error=cause,
                reason="the generator crashed on the first" if missed is None else "the first took too long",
                notice=f"⚠️ Job #{job.id}: {what_happened}; trying once more…",
            )
        return GiveUp(CRASHED_TWICE_TEXT if missed is None else TOOK_TOO_LONG_TEXT)

    def remember(self, job_id: int, retry: Retry) -> None:
        self._reasons[job_id] = retry.reason

    def forget(self, job_id: int) -> None:
        self._reasons.pop(job_id, None)

    def label(self, job: Job) -> str:
        """How the job's status message names this run of it: "Job #N", and why it is another try."""
        # The takes of a request share one status message, the first take's: it names them all.
        label = f"Job #{job.id}" if job.take is None else f"Jobs {job.take.span} ({job.take.count} takes)"
        reason = self._reasons.get(job.id)
        if job.attempts > 1:
            label += f" (second try: {reason or 'the first was interrupted'})"
        elif reason is not None:
            label += f" ({reason})"
        return label
