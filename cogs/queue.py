"""/queue, /cancel and /history: seeing and managing jobs in this server."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import Range
from discord.ext import commands

from bot.access import can_see_channel_of
from bot.replies import clip_text, escape_member_text, join_lines_within
from bot.storage.jams import Jam, JamTurn
from bot.storage.jobs import Job, JobStatus
from inference.request import RequestError

if TYPE_CHECKING:
    from bot.app import MusicGenBot

logger = logging.getLogger(__name__)

QUEUE_LINES_SHOWN = 15
HISTORY_LINES_SHOWN = 10
STATUS_ICONS = {
    JobStatus.QUEUED: "🎼",
    JobStatus.RUNNING: "🎹",
    JobStatus.DONE: "✅",
    JobStatus.FAILED: "❌",
    JobStatus.CANCELLED: "🚫",
}


def short_prompt(job: Job, limit: int = 60) -> str:
    """The job's prompt (or clip name), cut to `limit` characters and escaped for display."""
    if job.request.prompt:
        return escape_member_text(clip_text(job.request.prompt, limit))
    if job.input_audio_filename:
        return "🎵 " + escape_member_text(clip_text(job.input_audio_filename, limit))
    return "—"


class QueueCog(commands.Cog):
    """Seeing and managing jobs: /queue, /cancel, /history."""

    def __init__(self, bot: MusicGenBot) -> None:
        self.bot = bot

    @app_commands.command(name="queue", description="Your place in line and this server's queue.")
    @app_commands.guild_only()
    async def queue(self, interaction: discord.Interaction[MusicGenBot]) -> None:
        assert interaction.guild_id is not None
        jobs = await self.bot.jobs.pending_in_guild(interaction.guild_id)
        if not jobs:
            await interaction.response.send_message(
                "Nothing is queued or running in this server.", ephemeral=True
            )
            return
        scheduler, dispatcher = self.bot.scheduler, self.bot.dispatcher
        # One simulation of the start order for the whole reply (each position() would run its own).
        positions = scheduler.positions()

        def where(job: Job) -> str:
            position = positions.get(job.id)
            if position == 0:
                return f"running {dispatcher.progress_of(job.id) or ''}".rstrip()
            return "waiting" if position is None else f"#{position} in line"

        ordered = sorted(jobs, key=lambda job: (job.id not in positions, positions.get(job.id, 0), job.id))
        mine = [job for job in ordered if job.user_id == interaction.user.id]
        lines = []
        if mine:
            lines.append("**Your jobs:** " + ", ".join(f"#{job.id} ({where(job)})" for job in mine))
        else:
            lines.append("You have no jobs queued here.")
        lines.append(
            f"**This server's queue** ({len(jobs)} pending, limit {scheduler.guild_limit(interaction.guild_id)}):"
        )
        for job in ordered[:QUEUE_LINES_SHOWN]:
            request = job.request
            # Who asked for what is shown only to those who can read the channel it was asked in.
            if can_see_channel_of(interaction, job):
                who, what = f"<@{job.user_id}>", f" · {short_prompt(job)}"
            else:
                who, what = "in a channel you cannot see", ""
            lines.append(
                f"{STATUS_ICONS[job.status]} #{job.id} · {who} · {request.model_version}, "
                f"{request.duration} s{what} · {where(job)}"
            )
        hidden = max(len(ordered) - QUEUE_LINES_SHOWN, 0)
        await interaction.response.send_message(join_lines_within(lines, hidden=hidden), ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel your job (Manage Server: anyone's).")
    @app_commands.guild_only()
    @app_commands.describe(job_id="Which job; default: your most recent pending one.")
    async def cancel(
        self, interaction: discord.Interaction[MusicGenBot], job_id: Range[int, 1, None] | None = None
    ) -> None:
        assert interaction.guild_id is not None
        if job_id is None:
            mine = [
                job
                for job in await self.bot.jobs.pending_in_guild(interaction.guild_id)
                if job.user_id == interaction.user.id
            ]
            turns = await self.bot.jam_store.waiting_turns_of(interaction.guild_id, interaction.user.id)
            # A turn waiting in this jam's thread, else the latest job, else a turn waiting elsewhere.
            here = [(jam, turn) for jam, turn in turns if jam.thread_id == interaction.channel_id]
            if here or (turns and not mine):
                await self.cancel_waiting_turn(interaction, *(here or turns)[-1])
                return
            if not mine:
                raise RequestError("You have no queued or running job in this server.")
            job = mine[-1]
        else:
            found = await self.bot.jobs.get(job_id)
            if found is None or found.guild_id != interaction.guild_id:
                raise RequestError(f"There is no job #{job_id} in this server.")
            job = found
        permissions = interaction.permissions
        if not permissions.manage_guild and not can_see_channel_of(interaction, job):
            raise RequestError(f"There is no job #{job_id} in this server.")
        if job.user_id != interaction.user.id and not permissions.manage_guild:
            raise RequestError(
                f"Job #{job.id} is <@{job.user_id}>'s; only they or someone with Manage Server can cancel it."
            )
        if not job.is_pending:
            raise RequestError(f"Job #{job.id} is already {job.status.value}.")
        if await self.bot.dispatcher.cancel(job.id):
            text = (
                f"Job #{job.id} is cancelled."
                if job.status is JobStatus.QUEUED
                else f"Cancelling job #{job.id}…"
            )
        else:
            text = f"Job #{job.id} has just finished; there was nothing left to cancel."
        await interaction.response.send_message(text, ephemeral=True)

    async def cancel_waiting_turn(
        self, interaction: discord.Interaction[MusicGenBot], jam: Jam, turn: JamTurn
    ) -> None:
        """A jam turn still waiting for its place leaves the line (it has no job yet)."""
        if not await self.bot.jam_store.mark_failed(turn.id):
            raise RequestError("Your turn has just started; `/cancel` again cancels its job.")
        text = f"🚫 <@{turn.user_id}>'s turn (*{escape_member_text(clip_text(turn.prompt or jam.prompt, 100))}*) was cancelled."
        if turn.status_message_id is not None:
            thread = self.bot.get_partial_messageable(jam.thread_id, guild_id=jam.guild_id)
            try:
                await thread.get_partial_message(turn.status_message_id).edit(content=text)
            except discord.HTTPException as error:
                logger.warning("could not mark turn %s as cancelled: %s", turn.id, error)
        await interaction.response.send_message(
            f"Your turn waiting in <#{jam.thread_id}> is cancelled.", ephemeral=True
        )

    @app_commands.command(name="history", description="Your recent jobs in this server, with their seeds.")
    @app_commands.guild_only()
    async def history(self, interaction: discord.Interaction[MusicGenBot]) -> None:
        assert interaction.guild_id is not None
        jobs = await self.bot.jobs.history(
            interaction.guild_id, interaction.user.id, limit=HISTORY_LINES_SHOWN
        )
        if not jobs:
            await interaction.response.send_message(
                "You have not made anything here yet: try `/generate`.", ephemeral=True
            )
            return
        lines = [f"**Your last {len(jobs)} job(s) here** (`/replay job_id` makes one again):"]
        for job in jobs:
            request = job.request
            take = f" · take {job.take.number} of {job.take.count}" if job.take is not None else ""
            line = (
                f"{STATUS_ICONS[job.status]} #{job.id}{take} · {job.status.value} · <t:{int(job.created_at)}:R> · "
                f"{request.model_version}, {request.duration} s · seed `{job.seed}` · {short_prompt(job)}"
            )
            if job.status is JobStatus.FAILED and job.error:
                line += f"\n  ↳ {escape_member_text(clip_text(job.error, 150))}"
            lines.append(line)
        await interaction.response.send_message(join_lines_within(lines), ephemeral=True)


async def setup(bot: MusicGenBot) -> None:
    await bot.add_cog(QueueCog(bot))
