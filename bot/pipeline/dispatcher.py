"""Runs queued jobs on the inference workers, in batches, and reports back on Discord.

The dispatcher pulls the next batch from the fair scheduler whenever a worker slot is free, marks its
jobs running, submits them together to the `InferenceClient`, and then follows each job on its own:
its progress becomes its status-message edits, its cancel stops it alone, and its result is posted
as soon as it is there. The database row is updated at each step, so a restart knows what to resume.
With continuous batching, while every worker is busy, queued jobs that can share a running batch join
it between two decoder steps instead of waiting for it to end (the same round-robin order and caps
as a new batch). A worker crash under several jobs puts each of them back to run alone. A job that runs far
past its deadline, or stops making progress, has its worker killed by the watchdog
(`bot/pipeline/deadlines.py`) and is then retried or failed as after a crash, with a "took too long" message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import discord

from bot.pipeline.deadlines import JobWatchdog
from bot.pipeline.delivery import ResultPoster
from bot.pipeline.discord_faults import DISCORD_REQUEST_ERRORS, describe_fault
from bot.pipeline.scheduler import FairScheduler, ScheduledJob
from bot.pipeline.status_message import ProgressClock, StatusMessage
from bot.pipeline.supervision import keep_running
from bot.replies import INTERNAL_ERROR_TEXT, text_for_requester
from bot.storage.jobs import Job, JobStatus
from bot.storage.patience import PatientJobStore
from inference.backends.base import InferenceService, JobSubmission
from inference.errors import GenerationCancelled, GenerationFailed, WorkerCrashed
from inference.protocol import GenerationResult
from inference.request import MAX_DURATION_S, GenerationRequest, RequestError, batch_key

logger = logging.getLogger(__name__)

BATCH_CRASH_REASON = "running alone now: the generator crashed during its batch"
BATCH_DEADLINE_REASON = "running alone now: its batch took too long"
TOOK_TOO_LONG_TEXT = (
    "This took too long to make, twice, so I stopped it. It was not your fault: "
    "try a shorter duration, or try again later."
)


@dataclass(eq=False)
class _WorkerBatch:
    """A batch on a worker: it holds the worker while any of its jobs (joined ones included) runs."""

    # Its jobs still on the worker (or about to be), with their seconds of audio.
    members: dict[int, float]
    # The batch key queued jobs may join it with (continuous batching); None: nobody joins it.
    joinable_key: Hashable | None

    @property
    def longest_seconds(self) -> float:
        return max(self.members.values())


def scheduled(job: Job) -> ScheduledJob:
    return ScheduledJob(
        job.id,
        job.guild_id,
        job.user_id,
        batch_key=batch_key(job.request),
        audio_seconds=audio_seconds(job.request),
    )


def audio_seconds(request: GenerationRequest) -> float:
    """Seconds of audio a job makes, for the batch budget (a continuation's clip counts, up to the cap)."""
    return float(MAX_DURATION_S if request.continuation else request.duration)


def cancelled_text(job_id: int) -> str:
    return f"🚫 Job #{job_id} was cancelled."


def undeliverable_text(job_id: int, error: Exception) -> str:
    """The status of a job whose music was made but could not be posted, and what to do about it."""
    if not isinstance(error, discord.HTTPException):
        return f"❌ Job #{job_id} is made, but I could not reach Discord to post it. `/replay {job_id}` tries again."
    if isinstance(error, discord.Forbidden):
        return (
            f"❌ Job #{job_id} is made, but I am not allowed to post files in this channel. Someone with Manage "
            f"Server can give me Send Messages and Attach Files here; then `/replay {job_id}` posts the same music."
        )
    return f"❌ Job #{job_id} is made, but Discord refused the upload ({error.text or error.status}). `/replay {job_id}` tries again."


class JobDispatcher:
    """Feeds the workers from the scheduler and follows each job to its end."""

    def __init__(
        self,
        *,
        store: PatientJobStore,
        scheduler: FairScheduler,
        inference: InferenceService,
        poster: ResultPoster,
        output_dir: Path,
        worker_slots: int,
        job_retries: int,
        progress_interval_s: float,
        prepare_result: Callable[[Job, GenerationResult], Awaitable[GenerationResult]] | None = None,
        batch_wait_s: float = 0.0,
        watchdog: JobWatchdog | None = None,
        continuous_batching: bool = False,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.inference = inference
        self.poster = poster
        self.output_dir = output_dir
        self.worker_slots = worker_slots
        self.job_retries = job_retries
        self.progress_interval_s = progress_interval_s
        # Turns the worker's file into what is posted (a continuation becomes the whole piece).
        self.prepare_result = prepare_result
        self.batch_wait_s = batch_wait_s
        # Queued jobs join running batches while every worker is busy.
        self.continuous_batching = continuous_batching
        # Kills the worker of a job that misses its deadline or stalls (None: jobs may run for ever).
        self.watchdog = watchdog
        # When each queued job arrived (loop time), for the batch wait.
        self._queued_at: dict[int, float] = {}
        # Interaction tokens are credentials that live 15 minutes: memory only, never the database.
        self._interactions: dict[int, discord.Interaction] = {}
        self._status: dict[int, StatusMessage] = {}
        self._progress: dict[int, str] = {}
        # Why a job is on its second try, for its status message ("the generator crashed on the first").
        self._retry_reasons: dict[int, str] = {}
        # One task per batch on the workers; the ids of the jobs in them.
        self._batches: set[asyncio.Task[None]] = set()
        # The batches on the workers (one worker each), and one task per group of jobs joining one.
        self._on_workers: list[_WorkerBatch] = []
        self._joins: set[asyncio.Task[None]] = set()
        self._running: set[int] = set()
        self._cancel_requested: set[int] = set()
        # Running jobs the inference client has been given (a running job is briefly not one yet).
        self._submitted: set[int] = set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        # Called with the job id once a job has ended (done, failed or cancelled), e.g. so a jam's
        # next turn can start; each call runs as its own task.
        self.job_ended_listeners: list[Callable[[int], Coroutine[Any, Any, None]]] = []
        self._listener_tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.paused = False

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop_task = asyncio.create_task(
            keep_running(self._dispatch_loop, name="the job dispatcher loop"), name="job-dispatcher"
        )

    async def stop(self, *, timeout_s: float = 30.0) -> None:
        """Take no new jobs; cancel the running ones, which go back to the queue for the next start."""
        self.stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for job_id in list(self._running):
            await self.inference.cancel(str(job_id))
        if self._batches or self._joins:
            _, still_running = await asyncio.wait(list(self._batches | self._joins), timeout=timeout_s)
            for task in still_running:
                # Left 'running' in the database: the next start retries it.
                task.cancel()
        for status in list(self._status.values()):
            await status.close()
        if self._listener_tasks:
            # Let listeners finish what they started (a jam's next turn becomes a queued row).
            await asyncio.wait(list(self._listener_tasks), timeout=timeout_s)

    def pause(self) -> None:
        """Stop starting jobs (they keep queueing); running jobs finish. For maintenance."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._wake.set()

    async def resume_from_database(self) -> int:
        """Queue again what a previous run left pending; returns how many jobs were resumed.

        The interaction tokens died with the previous run, so the jobs' status messages are edited
        through their channel from now on.
        """
        resumed = 0
        for job in await self.store.pending():
            if job.status_message_id is not None:
                self._status[job.id] = StatusMessage(
                    self.poster.channel(job),
                    message_id=job.status_message_id,
                    interval_s=self.progress_interval_s,
                    timeouts=self.poster.timeouts,
                )
            if job.status is JobStatus.RUNNING:
                # The bot stopped without putting it back (killed, crashed): that run counts as an attempt.
                if job.attempts > self.job_retries:
                    await self._fail(
                        job,
                        "The bot restarted while this was being made, more than once. It was not your fault: "
                        "please run the command again.",
                    )
                    continue
                await self.store.requeue(job.id, error="interrupted by a restart")
                self._retry_reasons[job.id] = "the bot restarted during the first"
            self.scheduler.enqueue(scheduled(job))
            resumed += 1
        if resumed:
            logger.info("resumed %d job(s) from the database", resumed)
            self._refresh_positions()
        self._wake.set()
        return resumed

    # -- used by the cogs -------------------------------------------------------------------------
    def add(
        self, job: Job, interaction: discord.Interaction | None, *, status_message_id: int | None = None
    ) -> None:
        """Queue a job whose row exists; its status message shows the place in line from now on.

        Without an interaction (a reply that mentions the bot), `status_message_id` is a message the
        bot posted in the job's channel, edited through the channel.
        """
        if interaction is None and status_message_id is not None:
            self._status[job.id] = StatusMessage(
                self.poster.channel(job),
                message_id=status_message_id,
                interval_s=self.progress_interval_s,
                timeouts=self.poster.timeouts,
            )
        if interaction is not None:
            self._interactions[job.id] = interaction
            self._status[job.id] = StatusMessage(
                self.poster.channel(job),
                interaction=interaction,
                interval_s=self.progress_interval_s,
                timeouts=self.poster.timeouts,
                on_first_edit=lambda message_id: self.store.set_status_message(job.id, message_id),
            )
        self.scheduler.enqueue(scheduled(job))
        self._queued_at[job.id] = asyncio.get_running_loop().time()
        self._refresh_positions()
        self._wake.set()

    async def cancel(self, job_id: int) -> bool:
        """Cancel a queued or running job; False if it is neither."""
        if self.scheduler.cancel(job_id):
            await self.store.mark_cancelled(job_id)
            await self._finish_status(job_id, cancelled_text(job_id))
            self._forget(job_id)
            self._refresh_positions()
            return True
        if self.scheduler.is_running(job_id):
            self._cancel_requested.add(job_id)
            if job_id not in self._submitted:
                return True  # _run_jobs sees the request before submitting
            return await self.inference.cancel(str(job_id))
        return False

    def progress_of(self, job_id: int) -> str | None:
        return self._progress.get(job_id)

    # -- the loop -------------------------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        while not self.stopping:
            # While the database refuses writes no job starts (each would wait on its first write).
            await self.store.gate.wait_writable()
            wait_s: float | None = None  # until woken
            while not self.paused and len(self._on_workers) < self.worker_slots:
                planned = self.scheduler.peek_batch()
                wait_s = self._batch_wait_left(planned)
                if wait_s is None or wait_s > 0:
                    break
                self._start_batch(shared=not self.scheduler.runs_alone(planned[0]))
            if self.continuous_batching and not self.paused and len(self._on_workers) >= self.worker_slots:
                self._start_joins()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)
            self._wake.clear()

    def _start_batch(self, *, shared: bool) -> None:
        """Take the next batch from the scheduler and run it; `shared`: others may join it later."""
        batch = self.scheduler.next_batch()
        for queued in batch:
            self._queued_at.pop(queued.job_id, None)
        self._running.update(queued.job_id for queued in batch)
        joinable_key = batch[0].batch_key if self.continuous_batching and shared else None
        on_worker = _WorkerBatch({q.job_id: q.audio_seconds for q in batch}, joinable_key)
        self._on_workers.append(on_worker)
        self._batches.add(
            asyncio.create_task(self._run_batch(batch, on_worker), name=f"batch-{batch[0].job_id}")
        )
        self._refresh_positions()

    def _start_joins(self) -> None:
        """Queued jobs that can share a running batch join it now, in round-robin order."""
        for on_worker in list(self._on_workers):
            if on_worker.joinable_key is None:
                continue
            if not any(job_id in self._submitted for job_id in on_worker.members):
                continue  # not on its worker yet: joins wait until it is
            joiners = self.scheduler.next_joiners(
                on_worker.joinable_key, len(on_worker.members), on_worker.longest_seconds
            )
            if not joiners:
                continue
            for queued in joiners:
                self._queued_at.pop(queued.job_id, None)
                on_worker.members[queued.job_id] = queued.audio_seconds
            self._running.update(queued.job_id for queued in joiners)
            self._joins.add(
                asyncio.create_task(
                    self._run_batch(joiners, on_worker, join=True), name=f"join-{joiners[0].job_id}"
                )
            )
            self._refresh_positions()

    def _off_worker(self, job_id: int) -> None:
        """The job left its worker (its outcome came, or it never got there): a batch whose jobs have
        all left frees its worker."""
        for on_worker in list(self._on_workers):
            if on_worker.members.pop(job_id, None) is not None and not on_worker.members:
                self._on_workers.remove(on_worker)
                self._wake.set()

    def _batch_wait_left(self, batch: list[ScheduledJob]) -> float | None:
        """None when nothing is queued; else how long a free worker should still wait for more jobs to
        join the next batch (`batch`, as planned now; 0: start it now).

        Only a batch that could still grow waits, and only until `batch_wait_s` after its first job
        arrived: a job that waited behind a running batch starts as soon as a worker is free.
        """
        if not batch:
            return None
        if self.batch_wait_s <= 0 or not self.scheduler.can_grow(batch):
            return 0.0
        arrived = self._queued_at.get(batch[0].job_id)
        if arrived is None:  # resumed after a restart or retried: it has waited long enough
            return 0.0
        return max(0.0, arrived + self.batch_wait_s - asyncio.get_running_loop().time())

    async def _run_batch(
        self, batch: list[ScheduledJob], on_worker: _WorkerBatch, *, join: bool = False
    ) -> None:
        """Run a batch (or, with `join`, jobs joining the one `on_worker` runs) and follow each job to its end."""
        job_ids = [queued.job_id for queued in batch]
        # The jobs this batch still answers for: each leaves it once (a retried one may be running in
        # another batch by the time this one ends, and is no longer this batch's to finish).
        unfinished = set(job_ids)
        try:
            await self._run_jobs(job_ids, unfinished, on_worker if join else None)
        except Exception:
            logger.exception("batch %s: unexpected error in the dispatcher", job_ids)
            for job_id in sorted(unfinished):
                await self._fail_if_pending(job_id)
        finally:
            for job_id in list(unfinished):
                self._job_ended(job_id, unfinished)
            task = asyncio.current_task()
            if task is not None:
                self._batches.discard(task)
                self._joins.discard(task)
            self._wake.set()

    async def _run_jobs(self, job_ids: list[int], unfinished: set[int], joining: _WorkerBatch | None) -> None:
        started: list[tuple[Job, JobSubmission]] = []
        for job_id in job_ids:
            if (prepared := await self._start_job(job_id)) is not None:
                started.append(prepared)
            else:
                self._job_ended(job_id, unfinished)
        to_submit: list[tuple[Job, JobSubmission]] = []
        for job, submission in started:
            if self.stopping or job.id in self._cancel_requested:
                # A shutdown or a /cancel came while the job was being marked running, before the
                # client knew of it (so cancelling it there did nothing): handle it as cancelled now.
                await self._after_cancel(job)
                self._job_ended(job.id, unfinished)
            else:
                to_submit.append((job, submission))
        if not to_submit:
            return
        # No await between the checks above and the client registering the jobs.
        running = [] if joining is None else [str(i) for i in joining.members if i in self._submitted]
        self._submitted.update(job.id for job, _ in to_submit)
        batch_requests = [job.request for job, _ in to_submit]
        submissions = [self._watched(submission, batch_requests) for _, submission in to_submit]
        if joining is None:
            tasks = self.inference.submit_batch(submissions, self.output_dir)
        else:
            # Should its batch have ended meanwhile, the client runs them as a batch of their own.
            tasks = self.inference.join_batch(running, submissions, self.output_dir)
        self._wake.set()  # jobs on a worker now: others may join their batch
        await asyncio.gather(
            *(
                self._finish_job(job, task, unfinished)
                for (job, _), task in zip(to_submit, tasks, strict=True)
            )
        )

    async def _start_job(self, job_id: int) -> tuple[Job, JobSubmission] | None:
        """Mark a job running and prepare its status display; None if it was cancelled meanwhile."""
        if not await self.store.mark_running(job_id):
            return None
        job = await self.store.get(job_id)
        assert job is not None
        status = self._status.get(job_id)
        clock = ProgressClock()
        label = f"Job #{job_id}"
        reason = self._retry_reasons.get(job_id)
        if job.attempts > 1:
            label += f" (second try: {reason or 'the first was interrupted'})"
        elif reason is not None:
            label += f" ({reason})"
        if status is not None:
            status.show(f"🎹 {label}: loading the {job.request.model_version} model…")

        def on_progress(steps_done: int, steps_total: int) -> None:
            text = clock.describe(steps_done, steps_total)
            self._progress[job_id] = text
            if status is not None:
                status.show(f"🎹 {label}: {text}")

        return job, JobSubmission(str(job_id), job.request, on_progress)

    def _watched(self, submission: JobSubmission, batch: list[GenerationRequest]) -> JobSubmission:
        """The submission with the watchdog armed once a worker takes it, and fed its progress.

        Every row of a batch runs as long as its longest job: each gets the longest job's deadline.
        A back end that does not report the start arms it at the first step instead.
        """
        watchdog = self.watchdog
        if watchdog is None:
            return submission
        job_id, show_progress = submission.job_id, submission.on_progress
        armed = False

        def on_started() -> None:
            nonlocal armed
            armed = True
            deadline_s = max(watchdog.policy.deadline_s(request) for request in batch)
            watchdog.start(job_id, submission.request, deadline_s=deadline_s)

        def on_progress(steps_done: int, steps_total: int) -> Awaitable[None] | None:
            if not armed:
                on_started()
            watchdog.progress(job_id)
            return None if show_progress is None else show_progress(steps_done, steps_total)

        return replace(submission, on_started=on_started, on_progress=on_progress)

    async def _finish_job(
        self, job: Job, outcome: asyncio.Task[GenerationResult], unfinished: set[int]
    ) -> None:
        """Follow one job of a batch to its end: deliver, fail, cancel or retry it."""
        try:
            try:
                try:
                    result = await outcome
                finally:
                    self._off_worker(job.id)
            except GenerationCancelled:
                await self._after_cancel(job)
            except WorkerCrashed as crash:
                await self._after_crash(job, crash)
            except RequestError as error:
                await self._fail(
                    job,
                    text_for_requester(str(error), self._interactions.get(job.id), job.id),
                    ephemeral=True,
                )
            except GenerationFailed as error:
                logger.error("job %s failed in the engine: %s", job.id, error)
                await self._fail(
                    job, "The generator hit an internal error on this request. Please try again."
                )
            else:
                await self._deliver(job, result)
        except Exception:
            logger.exception("job %s: unexpected error in the dispatcher", job.id)
            await self._fail_if_pending(job.id)
        finally:
            self._job_ended(job.id, unfinished)

    def _job_ended(self, job_id: int, unfinished: set[int]) -> None:
        """The job left its batch (done, failed, cancelled or put back): it no longer counts as running."""
        unfinished.discard(job_id)
        self._progress.pop(job_id, None)
        self._submitted.discard(job_id)
        self._running.discard(job_id)
        self._off_worker(job_id)
        self.scheduler.finish(job_id)
        if self.watchdog is not None:
            self.watchdog.finish(str(job_id))
            self.watchdog.missed(str(job_id))  # a kill that came too late for a job that ended anyway

    async def _fail_if_pending(self, job_id: int) -> None:
        job = await self.store.get(job_id)
        if job is not None and job.is_pending:
            await self._fail(job, INTERNAL_ERROR_TEXT)

    async def _after_cancel(self, job: Job) -> None:
        if self.stopping and job.id not in self._cancel_requested:
            # Cancelled by our own shutdown, not by a person: it runs again after the restart.
            await self._put_back_for_restart(job)
            return
        self._cancel_requested.discard(job.id)
        await self.store.mark_cancelled(job.id)
        await self._finish_status(job.id, cancelled_text(job.id))
        self._forget(job.id)

    async def _after_crash(self, job: Job, crash: WorkerCrashed) -> None:
        # Why the watchdog killed the worker, when it did: then the job took too long, it did not crash.
        missed = None if self.watchdog is None else self.watchdog.missed(str(job.id))
        if missed is None:
            logger.error("job %s: %s (attempt %d)", job.id, crash, job.attempts)
        else:
            logger.error(
                "job %s: its worker was killed because %s (attempt %d)", job.id, missed, job.attempts
            )
        cause = f"worker crashed: {crash}" if missed is None else f"stopped by the watchdog: {missed}"
        if self.stopping:
            # The shutdown took the worker down with the job: not the job's fault.
            await self._put_back_for_restart(job)
            return
        if crash.running_jobs > 1:
            # Any job running with it may have caused it: each runs again alone, and this crash does
            # not count against them, so one bad job cannot use up its neighbours' retry.
            await self.store.requeue(job.id, error=f"during a batch: {cause}", refund_attempt=True)
            self._retry_reasons[job.id] = BATCH_CRASH_REASON if missed is None else BATCH_DEADLINE_REASON
            self.scheduler.finish(job.id)
            self.scheduler.enqueue(scheduled(job), front=True)
            status = self._status.get(job.id)
            what_happened = "the generator crashed" if missed is None else "its batch was taking too long"
            if status is not None:
                status.show(f"⚠️ Job #{job.id}: {what_happened}; trying again on its own…")
            self._wake.set()
            return
        # job was read after mark_running, so attempts counts this run.
        if job.attempts <= self.job_retries:
            await self.store.requeue(job.id, error=cause)
            self._retry_reasons[job.id] = (
                "the generator crashed on the first" if missed is None else "the first took too long"
            )
            self.scheduler.finish(job.id)
            self.scheduler.enqueue(scheduled(job), front=True)
            status = self._status.get(job.id)
            what_happened = "the generator crashed" if missed is None else "it was taking too long"
            if status is not None:
                status.show(f"⚠️ Job #{job.id}: {what_happened}; trying once more…")
            self._wake.set()
            return
        if missed is not None:
            await self._fail(job, TOOK_TOO_LONG_TEXT)
            return
        await self._fail(
            job,
            "The generator crashed while making this, twice. It was not your fault; "
            "try again later, perhaps with a shorter duration.",
        )

    async def _put_back_for_restart(self, job: Job) -> None:
        """A job stopped by our own shutdown: queued again without using up its retry."""
        await self.store.requeue(job.id, error="interrupted by a shutdown", refund_attempt=True)
        await self._finish_status(
            job.id, f"⏸️ Job #{job.id}: the bot is restarting; it will run when it is back."
        )

    async def _deliver(self, job: Job, result: GenerationResult) -> None:
        interaction = self._interactions.get(job.id)
        if self.prepare_result is not None:
            result = await self.prepare_result(job, result)
        # The status message is finished first: until the deferred response has been edited once,
        # a followup would replace it instead of arriving as a new message.
        await self._finish_status(job.id, f"✅ Job #{job.id} is done (seed `{result.seed}`).")
        try:
            posted = await self.poster.post_result(job, result, interaction)
        except DISCORD_REQUEST_ERRORS as error:
            logger.error("job %s: could not post the result: %s", job.id, describe_fault(error))
            await self.store.mark_failed(
                job.id, f"could not post the result: {error}", output_path=result.output_path
            )
            await self._finish_status(job.id, undeliverable_text(job.id, error))
            self._forget(job.id)
            return
        await self.store.mark_done(
            job.id,
            output_path=result.output_path,
            seed=result.seed,
            posted_format=posted.posted_format,
            result_message_id=posted.message_id,
        )
        self._forget(job.id)

    async def _fail(self, job: Job, message: str, *, ephemeral: bool = False) -> None:
        """Record the failure and tell the requester; the queue goes on.

        `ephemeral`: the reason is for the requester alone (a request they can fix) while the token lives.
        """
        # An ephemeral reason is a request the member can fix: the one failure that is their fault.
        await self.store.mark_failed(job.id, message, by_member=ephemeral)
        interaction = self._interactions.get(job.id)
        status = self._status.get(job.id)
        if status is not None and status.via_token and interaction is not None:
            if ephemeral:
                await status.finish(f"❌ Job #{job.id} could not run (details were sent to the requester).")
                await self.poster.post_failure(job, message, interaction, ephemeral=True)
            else:
                await status.finish(f"❌ Job #{job.id} failed: {message}")
        else:
            # No token: a channel message that mentions the requester (an edit would notify nobody).
            await self._finish_status(job.id, f"❌ Job #{job.id} failed; the reason is in the message below.")
            await self.poster.post_failure(job, message, None, ephemeral=False)
        self._forget(job.id)

    # -- status messages ------------------------------------------------------------------------
    def _refresh_positions(self) -> None:
        for position, queued in enumerate(self.scheduler.queued_in_order(), start=1):
            job_id = queued.job_id
            status = self._status.get(job_id)
            if status is None:
                continue
            if status.via_token:
                ahead = "next in line" if position == 1 else f"position {position} in line"
                status.show(f"🎼 Job #{job_id} is queued: {ahead}. `/cancel {job_id}` cancels it.")
            else:
                # Channel edits share the channel's rate limit with everyone's results: no edit per
                # place gained, just a text that stays true until the job starts.
                status.show(
                    f"🎼 Job #{job_id} is queued; `/queue` shows its place. `/cancel {job_id}` cancels it."
                )

    async def _finish_status(self, job_id: int, text: str) -> None:
        status = self._status.get(job_id)
        if status is not None:
            await status.finish(text)

    def _forget(self, job_id: int) -> None:
        """Drop what was kept for a job that has ended, and tell the listeners it ended."""
        self._queued_at.pop(job_id, None)
        self._interactions.pop(job_id, None)
        self._status.pop(job_id, None)
        self._retry_reasons.pop(job_id, None)
        self._cancel_requested.discard(job_id)
        for listener in self.job_ended_listeners:
            task = asyncio.create_task(listener(job_id), name=f"job-{job_id}-ended")
            self._listener_tasks.add(task)
            task.add_done_callback(self._listener_tasks.discard)
