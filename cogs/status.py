"""/musicgen-status: how the bot is doing, for the members who run a server (Manage Server)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.pipeline.status_message import format_seconds
from bot.replies import clip_text, escape_member_text, join_lines_within
from bot.storage.server_controls import BotHealth

if TYPE_CHECKING:
    from bot.app import MusicGenBot


class StatusCog(commands.Cog):
    """/musicgen-status: queues, workers, models, uptime, the last error and the server's settings."""

    def __init__(self, bot: MusicGenBot) -> None:
        self.bot = bot
        self.health = BotHealth(bot.database)

    @app_commands.command(name="musicgen-status", description="Queues, workers, models and the last error.")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.checks.has_permissions(manage_guild=True)
    async def status(self, interaction: discord.Interaction[MusicGenBot]) -> None:
        assert interaction.guild_id is not None
        guild_id = interaction.guild_id
        pending = await self.health.pending_by_guild()
        queued, running = pending.get(guild_id, (0, 0))
        others = {gid: counts for gid, counts in pending.items() if gid != guild_id}
        other_jobs = sum(q + r for q, r in others.values())
        inference = self.bot.inference
        configured = inference.worker_count
        busy, idle = inference.busy_workers, inference.idle_workers
        starting = max(configured - busy - idle, 0)
        models = await self.health.models_run_since(self.bot.started_at)
        lines = [
            f"**Up for** {format_seconds(time.time() - self.bot.started_at)}"
            + (" · not taking new jobs (shutting down)" if not self.bot.accepting_jobs else ""),
            f"**This server:** {queued} queued, {running} running "
            f"(limit {self.bot.scheduler.guild_limit(guild_id)})",
            f"**Other servers:** {other_jobs} job(s) pending in {len(others)} server(s)",
            f"**Workers:** {configured} configured · {busy} busy · {idle} idle"
            + (f" · {starting} starting or restarting" if starting else ""),
            "**Models run since start:** " + (", ".join(models) or "none yet"),
        ]
        # Each worker's device and models, where the back end follows its workers one by one (local),
        # with the kernels each model's decoder took ([engine] cpu_matmul: measured, cached or forced).
        lines.extend(
            f"· {worker.name} on {worker.ready_device or worker.device}: "
            + (", ".join(worker.models) or "no model loaded yet")
            + "".join(f" · {version} kernels: {kernels}" for version, kernels in worker.kernels.items())
            for worker in inference.workers
        )
        failure = await self.health.last_failure(guild_id)
        if failure is None:
            lines.append("**Last error here:** none")
        else:
            when = f"<t:{int(failure['finished_at'] or time.time())}:R>"
            error = escape_member_text(clip_text(failure["error"] or "?", 300))
            lines.append(f"**Last error here:** job #{failure['id']} {when}: {error}")
        lines.extend(await self._settings_lines(guild_id))
        await interaction.response.send_message(join_lines_within(lines), ephemeral=True)

    async def _settings_lines(self, guild_id: int) -> list[str]:
        controls = self.bot.controls
        channels = await controls.channels(guild_id)
        quota = await controls.daily_quota(guild_id)
        switches = [
            f"{feature} {'on' if await controls.feature_enabled(guild_id, feature) else 'off'}"
            for feature in ("replies", "jams")
        ]
        lines = [
            "**Settings:** works in "
            + (", ".join(f"<#{c}>" for c in channels) if channels else "every channel")
            + f" · {' · '.join(switches)} · daily quota {quota if quota is not None else 'none'}"
        ]
        for change in await controls.recent_changes(guild_id, limit=3):
            lines.append(
                f"  ↳ <t:{int(change['changed_at'])}:R> <@{change['user_id']}> set {change['setting']}: "
                f"{clip_text(change['old_value'] or '—', 80)} → {clip_text(change['new_value'] or '—', 80)}"
            )
        return lines


async def setup(bot: MusicGenBot) -> None:
    await bot.add_cog(StatusCog(bot))
