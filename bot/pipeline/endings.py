"""How a job's end reaches the channel and the database: its music posted (a request's takes
together, once every take has ended), its failure or its cancel told, and then the job forgotten.

`JobEndings` is the dispatcher's last step for every job. Its row is updated as the post succeeds or
fails, so `/replay` can post music whose upload Discord refused, and a restart never posts twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import discord

from bot.pipeline import takes as take_texts
from bot.pipeline.delivery import ResultPoster
from bot.pipeline.discord_faults import DISCORD_REQUEST_ERRORS, describe_fault
from bot.pipeline.status_board import StatusBoard
from bot.pipeline.takes import TakeGroups
from bot.storage.jobs import Job, Take
from bot.storage.patience import PatientJobStore
from inference.protocol import GenerationResult

logger = logging.getLogger(__name__)


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


@dataclass
class JobEndings:
    """Tells how each job ended, records it, then hands the job to `forget` (the dispatcher's)."""

    store: PatientJobStore
    board: StatusBoard
    poster: ResultPoster
    # The takes of each request, held until all of them have ended.
    takes: TakeGroups
    forget: Callable[[int], None]

    async def deliver(self, job: Job, result: GenerationResult) -> None:
        """Post a finished job's music (a take waits for its request's other takes) and record it."""
        if job.take is not None:
            self.takes.hold(job, result)
            await self.take_ended(job.id, job.take)
            return
        interaction = self.board.interaction(job.id)
        # The status message is finished first: until the deferred response has been edited once,
        # a followup would replace it instead of arriving as a new message.
        await self.board.finish(job.id, f"✅ Job #{job.id} is done (seed `{result.seed}`).")
        try:
            posted = await self.poster.post_result(job, result, interaction)
        except DISCORD_REQUEST_ERRORS as error:
            logger.error("job %s: could not post the result: %s", job.id, describe_fault(error))
            await self.store.mark_failed(
                job.id, f"could not post the result: {error}", output_path=result.output_path
            )
            await self.board.finish(job.id, undeliverable_text(job.id, error))
            self.forget(job.id)
            return
        await self.store.mark_done(
            job.id,
            output_path=result.output_path,
            seed=result.seed,
            posted_format=posted.posted_format,
            result_message_id=posted.message_id,
        )
        self.forget(job.id)

    async def fail(self, job: Job, message: str, *, ephemeral: bool = False) -> None:
        """Record the failure and tell the requester; the queue goes on.

        `ephemeral`: the reason is for the requester alone (a request they can fix) while the token lives.
        """
        # An ephemeral reason is a request the member can fix: the one failure that is their fault.
        await self.store.mark_failed(job.id, message, by_member=ephemeral)
        if job.take is not None:
            await self.take_ended(job.id, job.take)
            return
        await self.board.report_failure(job, message, ephemeral=ephemeral)
        self.forget(job.id)

    async def cancelled(self, job_id: int, take: Take | None) -> None:
        """Tell that a job whose row is marked cancelled was cancelled (a take: with its request's others)."""
        if take is not None:
            await self.take_ended(job_id, take)
            return
        await self.board.finish(job_id, cancelled_text(job_id))
        self.forget(job_id)

    # -- takes ----------------------------------------------------------------------------------
    async def take_ended(self, job_id: int, take: Take) -> None:
        """A take has ended (made, failed or cancelled; its row says so): once every take of its
        request has, the ones made are posted together."""
        if self.takes.ended(job_id, take):
            await self._post_takes(take)

    async def _post_takes(self, take: Take) -> None:
        """Post a request's takes in one message, name the ones not made, and forget them all."""
        made, followed = self.takes.release(take.group)
        try:
            rows = await self.store.takes_of(take.group)
            in_order = take_texts.made_in_order(rows, made)
            if in_order:
                await self._deliver_takes(take, in_order, take_texts.missing_lines(rows, made))
            elif take_texts.all_cancelled(rows):
                await self.board.finish(take.group, take_texts.cancelled_text(take))
            else:
                text, ephemeral = take_texts.failure_text(take, rows)
                await self.board.report_failure(rows[0], text, ephemeral=ephemeral)
        finally:
            for job_id in sorted(followed):
                self.forget(job_id)

    async def _deliver_takes(
        self, take: Take, made: list[tuple[Job, GenerationResult]], missing: list[str]
    ) -> None:
        interaction = next(
            (found for job_id in take.job_ids if (found := self.board.interaction(job_id)) is not None), None
        )
        # As for one job: the status message is finished first, so that the post is a message of its own.
        await self.board.finish(take.group, take_texts.done_text(take, made))
        try:
            posted = await self.poster.post_takes(made, missing, interaction)
        except DISCORD_REQUEST_ERRORS as error:
            logger.error("jobs %s: could not post the takes: %s", take.span, describe_fault(error))
            for job, result in made:
                await self.store.mark_failed(
                    job.id, f"could not post the result: {error}", output_path=result.output_path
                )
            await self.board.finish(take.group, undeliverable_text(made[0][0].id, error))
            return
        for job, result in made:
            await self.store.mark_done(
                job.id,
                output_path=result.output_path,
                seed=result.seed,
                posted_format=posted.posted_formats[job.id],
                result_message_id=posted.message_id,
            )
