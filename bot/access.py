"""Who may see which job: a member sees their own jobs, and others' only where Discord shows them.

A job's prompt, clip and result belong to the channel it was made in. A member may replay, or see
the details of, another member's job only if it was posted (done) in a channel the member can read
now. Permissions come from the guild cache (channels, roles and overwrites arrive with
GUILD_CREATE under the guilds intent) and the member's roles in the interaction payload; a
channel the bot no longer knows counts as private.
"""

from __future__ import annotations

import discord

from bot.storage.jobs import Job, JobStatus


def can_read_channel(
    member: discord.Member | discord.User, guild: discord.Guild | None, channel_id: int
) -> bool:
    """Whether `member` can read the messages of the channel (or thread) `channel_id` right now."""
    if guild is None or not isinstance(member, discord.Member):
        return False
    channel = guild.get_channel_or_thread(channel_id)
    if channel is None or isinstance(channel, discord.CategoryChannel):
        return False
    if isinstance(channel, discord.Thread) and channel.is_private():
        # Members of a private thread are not in the cache without the members intent.
        return False
    permissions = channel.permissions_for(member)
    return permissions.view_channel and permissions.read_message_history


def can_see_job(interaction: discord.Interaction, job: Job) -> bool:
    """Whether the member behind `interaction` may see `job`'s details (prompt, clip, result)."""
    if job.guild_id != interaction.guild_id:
        return False
    if job.user_id == interaction.user.id:
        return True
    posted = job.status is JobStatus.DONE and job.result_message_id is not None
    return posted and can_read_channel(interaction.user, interaction.guild, job.channel_id)


def can_see_channel_of(interaction: discord.Interaction, job: Job) -> bool:
    """Whether the member could see the job's public status message (its channel is readable to them)."""
    return job.user_id == interaction.user.id or can_read_channel(
        interaction.user, interaction.guild, job.channel_id
    )
