"""What members see of the jobs the dispatcher follows: each job's status message, its interaction
while the token lives, and its progress for /queue.

Interaction tokens are credentials that live 15 minutes: they are kept in memory only, never in the
database. A job asked for without one (a reply that mentions the bot, a jam turn) or resumed after a
restart has its status message edited through its channel. The takes of one request share one
status message, their first take's, which speaks for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import discord

from bot.pipeline.delivery import ResultPoster
from bot.pipeline.scheduler import ScheduledJob
from bot.pipeline.status_message import StatusMessage
from bot.storage.jobs import Job, Take
from bot.storage.patience import PatientJobStore


class StatusBoard:
    """The status message, interaction and progress of every job still followed, by job id."""

    def __init__(self, poster: ResultPoster, store: PatientJobStore, *, interval_s: float) -> None:
        self.poster = poster
        self.store = store
        self.interval_s = interval_s
        self._interactions: dict[int, discord.Interaction] = {}
        self._status: dict[int, StatusMessage] = {}
        self._progress: dict[int, str] = {}
        # The first take of a request of several: its status message names them all...
        self._takes: dict[int, Take] = {}
        # ... and the later takes show their progress on it (by job id: the first take's).
        self._lead_of: dict[int, int] = {}

    def follow(
        self, job: Job, interaction: discord.Interaction | None, *, status_message_id: int | None
    ) -> None:
        """Start showing a job: through its interaction, else by editing `status_message_id` (a message
        the bot posted in the job's channel), else nowhere. A take after the first shows nothing of
        its own (its interaction is kept, for the takes' post)."""
        if job.take is not None:
            if job.take.number > 1:
                self._lead_of[job.id] = job.take.group
                if interaction is not None:
                    self._interactions[job.id] = interaction
                return
            self._takes[job.id] = job.take
        if interaction is not None:
            self._interactions[job.id] = interaction
            self._status[job.id] = self._status_message(
                job,
                interaction=interaction,
                on_first_edit=lambda message_id: self.store.set_status_message(job.id, message_id),
            )
        elif status_message_id is not None:
            self._status[job.id] = self._status_message(job, message_id=status_message_id)

    def _status_message(
        self,
        job: Job,
        *,
        interaction: discord.Interaction | None = None,
        message_id: int | None = None,
        on_first_edit: Callable[[int], object] | None = None,
    ) -> StatusMessage:
        return StatusMessage(
            self.poster.channel(job),
            interaction=interaction,
            message_id=message_id,
            interval_s=self.interval_s,
            on_first_edit=on_first_edit,
            timeouts=self.poster.timeouts,
        )

    def interaction(self, job_id: int) -> discord.Interaction | None:
        return self._interactions.get(job_id)

    def show(self, job_id: int, text: str) -> None:
        """The job's status message reads `text` soon (throttled; a later text replaces it).

        A later take's texts (its progress, a retry) go to its request's status message: they name
        the takes as the first take's do, and whichever take runs moves the bar.
        """
        status = self._status.get(job_id)
        if status is None and job_id in self._lead_of:
            status = self._status.get(self._lead_of[job_id])
        if status is not None:
            status.show(text)

    async def finish(self, job_id: int, text: str) -> None:
        """The job's status message reads its final `text` now."""
        status = self._status.get(job_id)
        if status is not None:
            await status.finish(text)

    def show_progress(self, job_id: int, label: str, progress: str) -> None:
        self._progress[job_id] = progress
        self.show(job_id, f"🎹 {label}: {progress}")

    def progress_of(self, job_id: int) -> str | None:
        return self._progress.get(job_id)

    def stop_progress(self, job_id: int) -> None:
        self._progress.pop(job_id, None)

    def show_positions(self, queued_in_order: Iterable[ScheduledJob]) -> None:
        """Every queued job's place in line, on its status message."""
        for position, queued in enumerate(queued_in_order, start=1):
            job_id = queued.job_id
            status = self._status.get(job_id)
            if status is None:
                continue
            take = self._takes.get(job_id)
            if take is not None:
                status.show(takes_queued_text(take, position, via_token=status.via_token))
            elif status.via_token:
                ahead = "next in line" if position == 1 else f"position {position} in line"
                status.show(f"🎼 Job #{job_id} is queued: {ahead}. `/cancel {job_id}` cancels it.")
            else:
                # Channel edits share the channel's rate limit with everyone's results: no edit per
                # place gained, just a text that stays true until the job starts.
                status.show(
                    f"🎼 Job #{job_id} is queued; `/queue` shows its place. `/cancel {job_id}` cancels it."
                )

    async def report_failure(self, job: Job, message: str, *, ephemeral: bool) -> None:
        """Tell the requester why the job failed; `ephemeral`: the reason is for them alone while the
        token lives (a request they can fix)."""
        interaction = self._interactions.get(job.id)
        status = self._status.get(job.id)
        if status is not None and status.via_token and interaction is not None:
            if ephemeral:
                await status.finish(f"❌ Job #{job.id} could not run (details were sent to the requester).")
                await self.poster.post_failure(job, message, interaction, ephemeral=True)
            else:
                await status.finish(f"❌ Job #{job.id} failed: {message}")
            return
        # No token: a channel message that mentions the requester (an edit would notify nobody).
        await self.finish(job.id, f"❌ Job #{job.id} failed; the reason is in the message below.")
        await self.poster.post_failure(job, message, None, ephemeral=False)

    def forget(self, job_id: int) -> None:
        """The job has ended: nothing more is shown of it."""
        self._interactions.pop(job_id, None)
        self._status.pop(job_id, None)
        self._takes.pop(job_id, None)
        self._lead_of.pop(job_id, None)

    async def close(self) -> None:
        """Stop every status message's edits (the bot is shutting down)."""
        for status in list(self._status.values()):
            await status.close()


def takes_queued_text(take: Take, position: int, *, via_token: bool) -> str:
    """The status message of a request's takes while its first take waits (as for one job: its place
    while the token lives, else a text that stays true until it starts)."""
    if via_token:
        where = "next in line" if position == 1 else f"position {position} in line"
    else:
        where = "`/queue` shows their place"
    return (
        f"🎼 Jobs {take.span} ({take.count} takes) are queued: {where}. "
        "`/cancel` with one of their numbers cancels that take."
    )
