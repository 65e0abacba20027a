"""Continue any audio posted on Discord: the "Continue with MusicGen" context menu and "@bot" replies.

Both queue an ordinary job on the server's default model: the tail of the clip (its last
`[limits] continuation_context_s` seconds) is continued, and the posted result is the whole piece,
the full clip followed by the new seconds (stereo when the clip or the model is: a stereo default
model continues in stereo, `bot.audio.editing`).

What Discord lets the bot read decides how: a context-menu command always carries its target
message with its attachments. A reply that mentions the bot is readable, but the message it
replies to arrives without attachments unless it is the bot's own (or the bot has the privileged
message-content intent). So without that intent, replies continue the bot's results, and a reply to
a member's clip is answered with how to use the context menu; the bot never fetches it over REST.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.admission import JobAsk
from bot.continuation import DEFAULT_NEW_SECONDS, audio_attachments, parse_mention_request
from bot.replies import answer_message
from bot.storage.jobs import JobOrigin
from cogs.utils.continuing import CONTEXT_MENU_NAME, ClipContinuation
from cogs.utils.mentions import answer_mention, mentions_me
from inference.request import RequestError

if TYPE_CHECKING:
    from bot.app import MusicGenBot

CONTEXT_MENU_HINT = (
    "I can't see the audio of a member's message from a reply (Discord hides it from bots without the "
    "Message Content permission). Right-click (or long-press) the message with the audio → Apps → "
    f"**{CONTEXT_MENU_NAME}** instead."
)


def shown_filename(filename: str) -> str:
    """A member's file name as the bot quotes it: cut, and with markdown and mentions escaped."""
    return discord.utils.escape_mentions(discord.utils.escape_markdown(filename[:100]))


class ContinueAudioCog(commands.Cog):
    """Continuing posted audio: the message context menu (its modal is shared with the Continue button)
    and replies that mention the bot."""

    def __init__(self, bot: MusicGenBot) -> None:
        self.bot = bot
        self.continuing = ClipContinuation(bot)
        self.context_menu = app_commands.ContextMenu(name=CONTEXT_MENU_NAME, callback=self.continue_message)
        self.context_menu.guild_only = True

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.context_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.context_menu.name, type=self.context_menu.type)

    # -- the context menu ---------------------------------------------------------------------------
    async def continue_message(
        self, interaction: discord.Interaction[MusicGenBot], message: discord.Message
    ) -> None:
        await self.continuing.open_modal(interaction, message)

    # -- replies that mention the bot -------------------------------------------------------------
    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if mentions_me(self.bot.user, message):
            await answer_mention(message, lambda: self.continue_unless_in_jam(message))

    async def continue_unless_in_jam(self, message: discord.Message) -> None:
        # In a jam's thread, a mention takes a turn in the jam instead (the jam cog answers it).
        if await self.bot.jam_store.in_thread(message.channel.id) is not None:
            return
        await self.continue_from_reply(message)

    async def replied_to(self, message: discord.Message) -> discord.Message | None:
        """The message being replied to, as far as the bot may read it."""
        reference = message.reference
        if reference is None or reference.message_id is None:
            return None
        if isinstance(reference.resolved, discord.Message):
            return reference.resolved
        if reference.cached_message is not None:
            return reference.cached_message
        if not self.bot.config.bot.message_content_intent:
            return None
        try:
            return await message.channel.fetch_message(reference.message_id)
        except discord.HTTPException:
            return None

    async def continue_from_reply(self, message: discord.Message) -> None:
        assert message.guild is not None and self.bot.user is not None
        # Every gate before the download and before anything is posted.
        await self.bot.admission.check(JobAsk.of_message(message, feature="replies"))
        if message.reference is None:
            raise RequestError(
                "Reply to a message with audio and mention me to continue it, e.g. "
                f"`@{self.bot.user.name} 12s add brass and drums` (seconds default to {DEFAULT_NEW_SECONDS})."
            )
        source = await self.replied_to(message)
        own = source is not None and source.author.id == self.bot.user.id
        if not own and not self.bot.config.bot.message_content_intent:
            raise RequestError(CONTEXT_MENU_HINT)
        if source is None:
            raise RequestError("I can't find the message you replied to any more.")
        wanted = parse_mention_request(
            message.content, self.bot.user.id, max_seconds=self.bot.config.limits.max_duration_s
        )
        clips = audio_attachments(source)
        if not clips:
            raise RequestError("The message you replied to has no audio I can continue.")
        model_version = self.bot.default_model_for(message.guild.id)
        async with message.channel.typing(), self.bot.clip_intake.slot(message.author.id):
            request, continues, stored = await self.continuing.prepare(
                source, clips[0], model_version, wanted.prompt, wanted.seconds_or(DEFAULT_NEW_SECONDS)
            )
        first_of = f" (the first of its {len(clips)} clips)" if len(clips) > 1 else ""
        name = shown_filename(clips[0].filename)
        status = await answer_message(message, f"🎼 Continuing {name}{first_of}: queueing…")
        try:
            await self.bot.admission.admit_and_queue(
                JobOrigin(
                    guild_id=message.guild.id, channel_id=message.channel.id, user_id=message.author.id
                ),
                request,
                interaction=None,
                input_audio_filename=clips[0].filename,
                continues=continues,
                status_message_id=status.id if status is not None else None,
            )
        except RequestError as error:
            stored.unlink(missing_ok=True)
            if status is not None:
                await status.edit(content=str(error))
                return
            raise


async def setup(bot: MusicGenBot) -> None:
    await bot.add_cog(ContinueAudioCog(bot))
