"""/musicgen-settings: per-server settings for admins (Manage Server)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import Range
from discord.ext import commands

from bot.storage.server_controls import Feature
from cogs.utils.options import choices
from inference.catalogue import MODEL_VERSIONS
from inference.request import RequestError

if TYPE_CHECKING:
    from bot.app import MusicGenBot


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class SettingsCog(
    commands.GroupCog, group_name="musicgen-settings", group_description="Server settings for the music bot."
):
    """Admin settings, stored in the guild_settings table."""

    def __init__(self, bot: MusicGenBot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(
        name="max_pending",
        description="Cap the jobs this server may have queued or running (empty = default).",
    )
    @app_commands.checks.has_permissions(manage_guild=True)
    @app_commands.describe(limit="Jobs queued or running at once; leave empty for the bot's default.")
    async def max_pending(
        self, interaction: discord.Interaction[MusicGenBot], limit: Range[int, 1, 1000] | None = None
    ) -> None:
        assert interaction.guild_id is not None
        before = self.bot.scheduler.guild_limit(interaction.guild_id)
        await self.bot.jobs.set_guild_limit(interaction.guild_id, limit)
        self.bot.scheduler.set_guild_limit(interaction.guild_id, limit)
        effective = self.bot.scheduler.guild_limit(interaction.guild_id)
        await self.bot.controls.record(
            interaction.guild_id, interaction.user.id, "max_pending", str(before), str(effective)
        )
        text = (
            f"This server may now have {limit} job(s) queued or running at once."
            if limit is not None
            else f"This server's cap is back to the bot's default ({effective})."
        )
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(
        name="default_model",
        description="The model /generate uses here when none is picked (empty = default).",
    )
    @app_commands.checks.has_permissions(manage_guild=True)
    @app_commands.describe(
        model_version="The model for /generate without model_version; leave empty for the bot's default."
    )
    # The same list as /generate's model_version; the ones that cannot be a default get an explanation.
    @app_commands.choices(model_version=choices(MODEL_VERSIONS))
    async def default_model(
        self, interaction: discord.Interaction[MusicGenBot], model_version: str | None = None
    ) -> None:
        assert interaction.guild_id is not None
        if (
            model_version is not None
            and (refusal := self.bot.default_model_refusal(model_version)) is not None
        ):
            raise RequestError(refusal)
        before = await self.bot.jobs.guild_default_model(interaction.guild_id)
        await self.bot.set_default_model(interaction.guild_id, model_version)
        await self.bot.controls.record(
            interaction.guild_id,
            interaction.user.id,
            "default_model",
            before or "default",
            model_version or "default",
        )
        text = (
            f"`/generate` without model_version now uses the {model_version} model in this server."
            if model_version is not None
            else f"`/generate` without model_version is back to the bot's default model ({self.bot.config.bot.default_model_version})."
        )
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(
        name="channel", description="Let the bot work in a channel, or stop it working there."
    )
    @app_commands.checks.has_permissions(manage_guild=True)
    @app_commands.describe(
        channel="The channel.",
        allowed="True: the bot works there. With no channel listed, it works everywhere.",
    )
    async def channel(
        self, interaction: discord.Interaction[MusicGenBot], channel: discord.TextChannel, allowed: bool
    ) -> None:
        assert interaction.guild_id is not None
        channels = await self.bot.controls.set_channel(
            interaction.guild_id, channel.id, allowed, by=interaction.user.id
        )
        where = ", ".join(f"<#{channel_id}>" for channel_id in channels) if channels else "every channel"
        await interaction.response.send_message(f"The bot now works in {where}.", ephemeral=True)

    @app_commands.command(
        name="replies", description="Turn continuing the bot's results by replying on or off."
    )
    @app_commands.checks.has_permissions(manage_guild=True)
    @app_commands.describe(enabled="On: members may continue a result by replying to it.")
    async def replies(self, interaction: discord.Interaction[MusicGenBot], enabled: bool) -> None:
        await self._switch(interaction, "replies", enabled)

    @app_commands.command(name="jams", description="Turn jams on or off in this server.")
    @app_commands.checks.has_permissions(manage_guild=True)
    @app_commands.describe(enabled="On: members may start jams.")
    async def jams(self, interaction: discord.Interaction[MusicGenBot], enabled: bool) -> None:
        await self._switch(interaction, "jams", enabled)

    async def _switch(
        self, interaction: discord.Interaction[MusicGenBot], feature: Feature, enabled: bool
    ) -> None:
        assert interaction.guild_id is not None
        await self.bot.controls.set_feature(interaction.guild_id, feature, enabled, by=interaction.user.id)
        state = "on" if enabled else "off"
        await interaction.response.send_message(
            f"{feature.capitalize()} are now {state} in this server.", ephemeral=True
        )

    @app_commands.command(
        name="daily_quota", description="Jobs one member may start here per day (empty = no limit)."
    )
    @app_commands.checks.has_permissions(manage_guild=True)
    @app_commands.describe(limit="Jobs per member per UTC day; leave empty for no daily limit.")
    async def daily_quota(
        self, interaction: discord.Interaction[MusicGenBot], limit: Range[int, 1, 10_000] | None = None
    ) -> None:
        assert interaction.guild_id is not None
        await self.bot.controls.set_daily_quota(interaction.guild_id, limit, by=interaction.user.id)
        text = (
            f"Each member may now start {limit} job(s) a day here (the day ends at midnight UTC)."
            if limit is not None
            else "Members have no daily limit here any more."
        )
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: MusicGenBot) -> None:
    await bot.add_cog(SettingsCog(bot))
