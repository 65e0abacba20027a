"""Runs queued jobs on the inference workers and reports back on Discord.

The dispatcher pulls the next job from the fair scheduler whenever a worker slot is free, marks it
running, submits it to the `InferenceClient`, turns progress into status-message edits, and posts
the result. The database row is updated at each step, so a restart knows what to resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import discord

from bot.delivery import ResultPoster
from bot.discord_faults import DISCORD_REQUEST_ERRORS, describe_fault
from bot.jobs import Job, JobStatus
from bot.replies import INTERNAL_ERROR_TEXT
from bot.scheduler import FairScheduler, ScheduledJob
from bot.status_message import ProgressClock, StatusMessage
from bot.storage_faults import PatientJobStore
from bot.supervision import keep_running
from inference.client import InferenceClient
from inference.errors import GenerationCancelled, GenerationFailed, WorkerCrashed
from inference.protocol import GenerationResult
from inference.request import RequestError

logger = logging.getLogger(__name__)


def scheduled(job: Job) -> ScheduledJob:
    return ScheduledJob(job.id, job.guild_id, job.user_id)


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
        inference: InferenceClient,
        poster: ResultPoster,
        output_dir: Path,
        worker_slots: int,
        job_retries: int,
        progress_interval_s: float,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.inference = inference
        self.poster = poster
        self.output_dir = output_dir
        self.worker_slots = worker_slots
        self.job_retries = job_retries
        self.progress_interval_s = progress_interval_s
        # Interaction tokens are credentials that live 15 minutes: memory only, never the database.
        self._interactions: dict[int, discord.Interaction] = {}
        self._status: dict[int, StatusMessage] = {}
        self._progress: dict[int, str] = {}
        # Why a job is on its second try, for its status message ("the generator crashed on the first").
        self._retry_reasons: dict[int, str] = {}
        self._runners: dict[int, asyncio.Task[None]] = {}
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
        for job_id in list(self._runners):
            await self.inference.cancel(str(job_id))
        if self._runners:
            _, still_running = await asyncio.wait(list(self._runners.values()), timeout=timeout_s)
            for task in still_running:
                # Left 'running' in the database: the next start retries it.
                task.cancel()
        for status in list(self._status.values()):
            await status.close()

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
    def add(self, job: Job, interaction: discord.Interaction | None) -> None:
        """Queue a job whose row exists; its status message shows the place in line from now on."""
        if interaction is not None:
            self._interactions[job.id] = interaction
            self._status[job.id] = StatusMessage(
                self.poster.channel(job),
                interaction=interaction,
                interval_s=self.progress_interval_s,
                on_first_edit=lambda message_id: self.store.set_status_message(job.id, message_id),
            )
        self.scheduler.enqueue(scheduled(job))
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
                return True  # _run_job sees the request before submitting
            return await self.inference.cancel(str(job_id))
        return False

    def progress_of(self, job_id: int) -> str | None:
        return self._progress.get(job_id)

    # -- the loop -------------------------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        while not self.stopping:
            # While the database refuses writes no job starts (each would wait on its first write).
            await self.store.gate.wait_writable()
            while (
                not self.paused
                and len(self._runners) < self.worker_slots
                and (next_job := self.scheduler.next_job()) is not None
            ):
                self._runners[next_job.job_id] = asyncio.create_task(
                    self._run(next_job), name=f"job-{next_job.job_id}"
                )
                self._refresh_positions()
            await self._wake.wait()
            self._wake.clear()

    async def _run(self, queued: ScheduledJob) -> None:
        job_id = queued.job_id
        try:
            await self._run_job(job_id)
        except Exception:
            logger.exception("job %s: unexpected error in the dispatcher", job_id)
            job = await self.store.get(job_id)
            if job is not None and job.is_pending:
                await self._fail(job, INTERNAL_ERROR_TEXT)
        finally:
            self._runners.pop(job_id, None)
            self._submitted.discard(job_id)
            self.scheduler.finish(job_id)
            self._wake.set()

    async def _run_job(self, job_id: int) -> None:
        if not await self.store.mark_running(job_id):
            return  # cancelled meanwhile
        job = await self.store.get(job_id)
        assert job is not None
        status = self._status.get(job_id)
        clock = ProgressClock()
        label = f"Job #{job_id}"
        if job.attempts > 1:
            label += f" (second try: {self._retry_reasons.get(job_id, 'the first was interrupted')})"
        if status is not None:
            status.show(f"🎹 {label}: loading the {job.request.model_version} model…")

        def on_progress(steps_done: int, steps_total: int) -> None:
            text = clock.describe(steps_done, steps_total)
            self._progress[job_id] = text
            if status is not None:
                status.show(f"🎹 {label}: {text}")

        if self.stopping or job_id in self._cancel_requested:
            # A shutdown or a /cancel came while the job was being marked running, before the client
            # knew of it (so cancelling it there did nothing): handle it as cancelled now.
            await self._after_cancel(job)
            return
        # No await between the check above and submit() registering the job with the client.
        self._submitted.add(job_id)
        try:
            result = await self.inference.submit(
                str(job_id), job.request, self.output_dir, on_progress=on_progress
            )
        except GenerationCancelled:
            await self._after_cancel(job)
        except WorkerCrashed as crash:
            await self._after_crash(job, crash)
        except RequestError as error:
            await self._fail(job, str(error), ephemeral=True)
        except GenerationFailed as error:
            logger.error("job %s failed in the engine: %s", job_id, error)
            await self._fail(job, "The generator hit an internal error on this request. Please try again.")
        else:
            await self._deliver(job, result)
        finally:
            self._progress.pop(job_id, None)

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
        logger.error("job %s: %s (attempt %d)", job.id, crash, job.attempts)
        if self.stopping:
            # The shutdown took the worker down with the job: not the job's fault.
            await self._put_back_for_restart(job)
            return
        # job was read after mark_running, so attempts counts this run.
        if job.attempts <= self.job_retries:
            await self.store.requeue(job.id, error=f"worker crashed: {crash}")
            self._retry_reasons[job.id] = "the generator crashed on the first"
            self.scheduler.finish(job.id)
            self.scheduler.enqueue(scheduled(job), front=True)
            status = self._status.get(job.id)
            if status is not None:
                status.show(f"⚠️ Job #{job.id}: the generator crashed; trying once more…")
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
        await self.store.mark_failed(job.id, message)
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
        self._interactions.pop(job_id, None)
        self._status.pop(job_id, None)
        self._retry_reasons.pop(job_id, None)
        self._cancel_requested.discard(job_id)
