"""Runs queued jobs on the inference workers, in batches, and reports back on Discord.

The dispatcher pulls the next batch from the fair scheduler whenever a worker slot is free, marks its
jobs running, submits them together to the inference back end, and then follows each job on its own:
its progress becomes its status-message edits, its cancel stops it alone, and its result is posted
as soon as it is there. The database row is updated at each step, so a restart knows what to resume.
With continuous batching, while every worker is busy, queued jobs that can share a running batch join
it between two decoder steps instead of waiting for it to end (the same round-robin order and caps
as a new batch). A worker crash under several jobs puts each of them back to run alone. A job that runs far
past its deadline, or stops making progress, has its worker killed by the watchdog
(`bot/pipeline/deadlines.py`) and is then retried or failed as after a crash (`bot/pipeline/retries.py`),
with a "took too long" message. How each job ended is posted and recorded by `JobEndings`
(`bot/pipeline/endings.py`). When a job has ended, the dispatcher says so through `on_job_ended`
(the bot turns it into a `job_ended` event, which moves a jam on). The takes of one request are
queued together (to share a batch) and posted together once every one of them has ended
(`bot/pipeline/takes.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import discord

from bot.pipeline.deadlines import JobWatchdog
from bot.pipeline.delivery import ResultPoster
from bot.pipeline.endings import JobEndings
from bot.pipeline.retries import GiveUp, RetryPolicy
from bot.pipeline.scheduler import FairScheduler, ScheduledJob
from bot.pipeline.status_board import StatusBoard
from bot.pipeline.status_message import ProgressClock
from bot.pipeline.supervision import keep_running
from bot.pipeline.takes import TakeGroups
from bot.pipeline.worker_batches import WorkerBatch, WorkerBatches
from bot.replies import INTERNAL_ERROR_TEXT, text_for_requester
from bot.storage.jobs import Job, JobStatus
from bot.storage.patience import PatientJobStore
from inference.backends.base import InferenceBackend, JobSubmission
from inference.errors import GenerationCancelled, GenerationFailed, WorkerCrashed
from inference.protocol import GenerationResult
from inference.request import GenerationRequest, RequestError, batch_key
from inference.windows import RELEASED_MODEL_WINDOW_S

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DispatcherOptions:
    """How the dispatcher runs jobs (bot/app.py builds them from the config's [worker] and [limits])."""

    # Where the workers write the audio they make.
    output_dir: Path
    # Batches on the workers at once (one per worker).
    worker_slots: int
    # Tries after the first for a job whose worker crashed or took too long under it.
    job_retries: int = 1
    # The least time between two edits of one status message.
    progress_interval_s: float = 0.0
    # How long a free worker waits for more jobs to join a batch that could still grow.
    batch_wait_s: float = 0.0
    # Queued jobs join running batches while every worker is busy.
    continuous_batching: bool = False


def scheduled(job: Job) -> ScheduledJob:
    return ScheduledJob(
        job.id,
        job.guild_id,
        job.user_id,
        batch_key=batch_key(job.request),
        audio_seconds=audio_seconds(job.request),
        group=job.take.group if job.take is not None else None,
    )


def audio_seconds(request: GenerationRequest) -> float:
    """Seconds of audio a job holds in the decoder at once, for the batch budget (the decoder's memory):
    its length up to the model's 30 s window (a longer piece is made one window at a time, each
    prompted with the end of the one before), and a whole window for a continuation (its clip and
    new seconds). Its time on the worker is counted by its deadline, for every second it makes."""
    if request.continuation:
        return RELEASED_MODEL_WINDOW_S  # the clip and the new seconds: a window's worth at most at once
    # A piece longer than the window is made one window at a time: only that window is in the decoder.
    return float(min(request.duration, RELEASED_MODEL_WINDOW_S))


def watched(
    submission: JobSubmission, batch: list[GenerationRequest], watchdog: JobWatchdog | None
) -> JobSubmission:
    """The submission with the watchdog (if any) armed once a worker takes it, and fed its progress.

    Every row of a batch runs as long as its longest job: each gets the longest job's deadline.
    A back end that does not report the start arms it at the first step instead.
    """
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


class JobDispatcher:
    """Feeds the workers from the scheduler and follows each job to its end."""

    def __init__(
        self,
        *,
        store: PatientJobStore,
        scheduler: FairScheduler,
        inference: InferenceBackend,
        poster: ResultPoster,
        options: DispatcherOptions,
        watchdog: JobWatchdog | None = None,
        prepare_result: Callable[[Job, GenerationResult], Awaitable[GenerationResult]] | None = None,
        on_job_ended: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.inference = inference
        self.poster = poster
        self.options = options
        self.worker_slots = options.worker_slots
        # May be switched while the bot runs (the options say how it starts).
        self.continuous_batching = options.continuous_batching
        # Kills the worker of a job that misses its deadline or stalls (None: jobs may run for ever).
        self.watchdog = watchdog
        # Turns the worker's file into what is posted (a continuation becomes the whole piece).
        self.prepare_result = prepare_result
        # Told the job id once a job has ended (done, failed or cancelled), after its last edit.
        self.on_job_ended = on_job_ended
        self.retries = RetryPolicy(options.job_retries)
        self.board = StatusBoard(poster, store, interval_s=options.progress_interval_s)
        # The takes of each request, held until all of them have ended.
        self.takes = TakeGroups()
        self.endings = JobEndings(
            store=store, board=self.board, poster=poster, takes=self.takes, forget=self._forget
        )
        self.workers = WorkerBatches(slots=options.worker_slots, batch_wait_s=options.batch_wait_s)
        # One task per batch on the workers, and one per group of jobs joining one.
        self._batches: set[asyncio.Task[None]] = set()
        self._joins: set[asyncio.Task[None]] = set()
        self._running: set[int] = set()
        self._cancel_requested: set[int] = set()
        # Running jobs the inference client has been given (a running job is briefly not one yet).
        self._submitted: set[int] = set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
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
        for job, _ in self.takes.held():
            # Made, but waiting for its request's other takes: made again after the restart.
            await self.store.requeue(job.id, error="interrupted by a shutdown", refund_attempt=True)
        await self.board.close()

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
            self.board.follow(job, None, status_message_id=job.status_message_id)
            self.takes.follow(job)
            if job.status is JobStatus.RUNNING:
                verdict = self.retries.after_restart(job)
                if isinstance(verdict, GiveUp):
                    await self.endings.fail(job, verdict.text)
                    continue
                await self.store.requeue(job.id, error=verdict.error)
                self.retries.remember(job.id, verdict)
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
        self.board.follow(job, interaction, status_message_id=status_message_id)
        self.takes.follow(job)
        self.scheduler.enqueue(scheduled(job))
        self.workers.arrived(job.id)
        self._refresh_positions()
        self._wake.set()

    async def cancel(self, job_id: int) -> bool:
        """Cancel a queued or running job; False if it is neither."""
        if self.scheduler.cancel(job_id):
            await self.store.mark_cancelled(job_id)
            await self.endings.cancelled(job_id, self.takes.take_of(job_id))
            self._refresh_positions()
            return True
        if self.scheduler.is_running(job_id):
            self._cancel_requested.add(job_id)
            if job_id not in self._submitted:
                return True  # _run_jobs sees the request before submitting
            return await self.inference.cancel(str(job_id))
        return False

    def progress_of(self, job_id: int) -> str | None:
        return self.board.progress_of(job_id)

    # -- the loop -------------------------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        while not self.stopping:
            # While the database refuses writes no job starts (each would wait on its first write).
            await self.store.gate.wait_writable()
            wait_s: float | None = None  # until woken
            while not self.paused and not self.workers.all_busy:
                planned = self.scheduler.peek_batch()
                wait_s = self.workers.wait_left(planned, self.scheduler.can_grow)
                if wait_s is None or wait_s > 0:
                    break
                self._start_batch(shared=not self.scheduler.runs_alone(planned[0]))
            if self.continuous_batching and not self.paused and self.workers.all_busy:
                self._start_joins()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)
            self._wake.clear()

    def _start_batch(self, *, shared: bool) -> None:
        """Take the next batch from the scheduler and run it; `shared`: others may join it later."""
        batch = self.scheduler.next_batch()
        joinable_key = batch[0].batch_key if self.continuous_batching and shared else None
        on_worker = self.workers.place(batch, joinable_key)
        self._running.update(queued.job_id for queued in batch)
        self._batches.add(
            asyncio.create_task(self._run_batch(batch, on_worker), name=f"batch-{batch[0].job_id}")
        )
        self._refresh_positions()

    def _start_joins(self) -> None:
        """Queued jobs that can share a running batch join it now, in round-robin order."""
        for on_worker in self.workers.joinable():
            if not any(job_id in self._submitted for job_id in on_worker.members):
                continue  # not on its worker yet: joins wait until it is
            joiners = self.scheduler.next_joiners(
                on_worker.joinable_key, len(on_worker.members), on_worker.longest_seconds
            )
            if not joiners:
                continue
            self.workers.join(on_worker, joiners)
            self._running.update(queued.job_id for queued in joiners)
            self._joins.add(
                asyncio.create_task(
                    self._run_batch(joiners, on_worker, join=True), name=f"join-{joiners[0].job_id}"
                )
            )
            self._refresh_positions()

    def _off_worker(self, job_id: int) -> None:
        if self.workers.leave(job_id):
            self._wake.set()  # a free worker

    async def _run_batch(
        self, batch: list[ScheduledJob], on_worker: WorkerBatch, *, join: bool = False
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

    async def _run_jobs(self, job_ids: list[int], unfinished: set[int], joining: WorkerBatch | None) -> None:
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
        submissions = [watched(submission, batch_requests, self.watchdog) for _, submission in to_submit]
        if joining is None:
            tasks = self.inference.submit_batch(submissions, self.options.output_dir)
        else:
            # Should its batch have ended meanwhile, the client runs them as a batch of their own.
            tasks = self.inference.join_batch(running, submissions, self.options.output_dir)
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
        clock = ProgressClock()
        label = self.retries.label(job)
        self.board.show(job_id, f"🎹 {label}: loading the {job.request.model_version} model…")

        def on_progress(steps_done: int, steps_total: int) -> None:
            self.board.show_progress(job_id, label, clock.describe(steps_done, steps_total))

        return job, JobSubmission(str(job_id), job.request, on_progress)

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
                await self.endings.fail(
                    job,
                    text_for_requester(str(error), self.board.interaction(job.id), job.id),
                    ephemeral=True,
                )
            except GenerationFailed as error:
                logger.error("job %s failed in the engine: %s", job.id, error)
                await self.endings.fail(
                    job, "The generator hit an internal error on this request. Please try again."
                )
            else:
                if self.prepare_result is not None:
                    result = await self.prepare_result(job, result)
                await self.endings.deliver(job, result)
        except Exception:
            logger.exception("job %s: unexpected error in the dispatcher", job.id)
            await self._fail_if_pending(job.id)
        finally:
            self._job_ended(job.id, unfinished)

    def _job_ended(self, job_id: int, unfinished: set[int]) -> None:
        """The job left its batch (done, failed, cancelled or put back): it no longer counts as running."""
        unfinished.discard(job_id)
        self.board.stop_progress(job_id)
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
            await self.endings.fail(job, INTERNAL_ERROR_TEXT)

    async def _after_cancel(self, job: Job) -> None:
        if self.stopping and job.id not in self._cancel_requested:
            # Cancelled by our own shutdown, not by a person: it runs again after the restart.
            await self._put_back_for_restart(job)
            return
        self._cancel_requested.discard(job.id)
        await self.store.mark_cancelled(job.id)
        await self.endings.cancelled(job.id, job.take)

    async def _after_crash(self, job: Job, crash: WorkerCrashed) -> None:
        # Why the watchdog killed the worker, when it did: then the job took too long, it did not crash.
        missed = None if self.watchdog is None else self.watchdog.missed(str(job.id))
        if missed is None:
            logger.error("job %s: %s (attempt %d)", job.id, crash, job.attempts)
        else:
            logger.error(
                "job %s: its worker was killed because %s (attempt %d)", job.id, missed, job.attempts
            )
        if self.stopping:
            # The shutdown took the worker down with the job: not the job's fault.
            await self._put_back_for_restart(job)
            return
        verdict = self.retries.after_crash(job, crash, missed)
        if isinstance(verdict, GiveUp):
            await self.endings.fail(job, verdict.text)
            return
        await self.store.requeue(job.id, error=verdict.error, refund_attempt=verdict.refund_attempt)
        self.retries.remember(job.id, verdict)
        self.scheduler.finish(job.id)
        self.scheduler.enqueue(scheduled(job), front=True)
        if verdict.notice is not None:
            self.board.show(job.id, verdict.notice)
        self._wake.set()

    async def _put_back_for_restart(self, job: Job) -> None:
        """A job stopped by our own shutdown: queued again without using up its retry."""
        await self.store.requeue(job.id, error="interrupted by a shutdown", refund_attempt=True)
        await self.board.finish(
            job.id, f"⏸️ Job #{job.id}: the bot is restarting; it will run when it is back."
        )

    def _refresh_positions(self) -> None:
        self.board.show_positions(self.scheduler.queued_in_order())

    def _forget(self, job_id: int) -> None:
        """Drop what was kept for a job that has ended, and say that it ended."""
        self.workers.dequeued(job_id)
        self.board.forget(job_id)
        self.retries.forget(job_id)
        self._cancel_requested.discard(job_id)
        if self.on_job_ended is not None:
            self.on_job_ended(job_id)
