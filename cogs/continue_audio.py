"""Continue any audio posted on Discord: the "Continue with MusicGen" context menu and "@bot" replies.

Both queue an ordinary job on the server's default model: the tail of the clip (the last
`[limits] continuation_context_s` seconds that leave room for the new ones) is continued, and the
posted result is the whole piece, the full clip followed by the new seconds.

What Discord lets the bot read decides how: a context-menu command always carries its target
message with its attachments. A reply that mentions the bot is readable, but the message it
replies to arrives without attachments unless it is the bot's own (or the bot has the privileged
message-content intent). So without that intent, replies continue the bot's results, and a reply to
a member's clip is answered with how to use the context menu; the bot never fetches it over REST.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.admission import JobAsk
from bot.audio.editing import clip_seconds, context_window
from bot.continuation import (
    DEFAULT_NEW_SECONDS,
    audio_attachments,
    continuation_request,
    continuation_source,
    mentions_bot,
    parse_mention_request,
    parse_seconds,
)
from bot.replies import INTERNAL_ERROR_TEXT, defer_publicly, reply_privately
from bot.storage.jobs import ContinuationSource, Job, JobOrigin
from inference.request import MAX_PROMPT_CHARS, GenerationRequest, RequestError

if TYPE_CHECKING:
    from bot.app import MusicGenBot
    from cogs.jam import JamCog

logger = logging.getLogger(__name__)

CONTEXT_MENU_NAME = "Continue with MusicGen"
MODAL_TITLE_LIMIT = 45

CONTEXT_MENU_HINT = (
    "I can't see the audio of a member's message from a reply (Discord hides it from bots without the "
    "Message Content permission). Right-click (or long-press) the message with the audio → Apps → "
    f"**{CONTEXT_MENU_NAME}** instead."
)


def shown_filename(filename: str) -> str:
    """A member's file name as the bot quotes it: cut, and with markdown and mentions escaped."""
    return discord.utils.escape_mentions(discord.utils.escape_markdown(filename[:100]))


def modal_title(clip_count: int) -> str:
    """The modal must be the first response, so it is where a member learns which clip is used."""
    if clip_count > 1:
        return f"Continue the first of {clip_count} clips"[:MODAL_TITLE_LIMIT]
    return CONTEXT_MENU_NAME


class ContinueModal(discord.ui.Modal):
    """The prompt and the seconds to add, for continuing the first audio clip of a message."""

    prompt: discord.ui.TextInput[ContinueModal] = discord.ui.TextInput(
        label="prompt (optional)",
        custom_id="prompt",
        style=discord.TextStyle.paragraph,
        required=False,
        max_length=MAX_PROMPT_CHARS,
        placeholder="What the continuation should sound like",
    )
    seconds: discord.ui.TextInput[ContinueModal] = discord.ui.TextInput(
        label="seconds to add (1–30)",
        custom_id="seconds",
        required=False,
        default=str(DEFAULT_NEW_SECONDS),
        max_length=10,
    )

    def __init__(
        self, cog: ContinueAudioCog, source: discord.Message, clips: list[discord.Attachment]
    ) -> None:
        super().__init__(title=modal_title(len(clips)), timeout=15 * 60)
        self.cog = cog
        self.source = source
        self.clip = clips[0]

    async def on_submit(self, interaction: discord.Interaction) -> None:
        seconds = parse_seconds(self.seconds.value)
        await self.cog.continue_from_interaction(
            cast("discord.Interaction[MusicGenBot]", interaction),
            self.source,
            self.clip,
            prompt=self.prompt.value or None,
            seconds=seconds,
        )

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:  # type: ignore[override]
        await answer_error(interaction, error)


async def answer_error(interaction: discord.Interaction, error: Exception) -> None:
    """A friendly ephemeral answer: the request's own message, or the internal-error text (logged)."""
    if isinstance(error, RequestError):
        text = str(error)
    else:
        logger.error("interaction %s failed", interaction.id, exc_info=error)
        text = INTERNAL_ERROR_TEXT
    try:
        await reply_privately(interaction, text)
    except discord.HTTPException:
        logger.warning("could not send an error message for interaction %s", interaction.id)


class ContinueAudioCog(commands.Cog):
    """Continuing posted audio: the message context menu, its modal, and replies that mention the bot."""

    def __init__(self, bot: MusicGenBot) -> None:
        self.bot = bot
        self.context_menu = app_commands.ContextMenu(name=CONTEXT_MENU_NAME, callback=self.continue_message)
        self.context_menu.guild_only = True

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.context_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.context_menu.name, type=self.context_menu.type)

    # -- the context menu (and the Continue button, which opens the same modal) ------------------------
    async def continue_message(
        self, interaction: discord.Interaction[MusicGenBot], message: discord.Message
    ) -> None:
        await self.open_modal(interaction, message)

    async def open_modal(
        self, interaction: discord.Interaction[MusicGenBot], message: discord.Message
    ) -> None:
        """Check what can be checked, then ask for the prompt and seconds (a modal is the first response)."""
        self.bot.admission.check_accepting_jobs()
        clips = audio_attachments(message)
        if not clips:
            raise RequestError(
                "That message has no audio I can continue. Use it on a message with an audio file or a "
                "voice message attached (MP3, WAV, OGG, FLAC, M4A…)."
            )
        self.bot.uploads.check_before_download(clips[0])
        await self.bot.admission.check(JobAsk.of_interaction(interaction))
        await interaction.response.send_modal(ContinueModal(self, message, clips))

    async def continue_from_interaction(
        self,
        interaction: discord.Interaction[MusicGenBot],
        source: discord.Message,
        clip: discord.Attachment,
        *,
        prompt: str | None,
        seconds: int,
    ) -> Job:
        """After the modal: defer publicly (the status message), fetch the clip and queue the job."""
        assert interaction.guild_id is not None
        await self.bot.admission.check(JobAsk.of_interaction(interaction))
        model_version = self.bot.default_model_for(interaction.guild_id)
        await defer_publicly(interaction)
        async with self.bot.clip_intake.slot(interaction.user.id):
            request, continues, stored = await self.prepare(source, clip, model_version, prompt, seconds)
        try:
            return await self.bot.admission.queue_for_interaction(
                interaction, request, input_audio_filename=clip.filename, continues=continues
            )
        except BaseException:
            stored.unlink(missing_ok=True)
            raise

    async def prepare(
        self,
        source: discord.Message,
        clip: discord.Attachment,
        model_version: str,
        prompt: str | None,
        seconds: int,
    ) -> tuple[GenerationRequest, ContinuationSource, Path]:
        """Download the clip and build the request: its tail as context, `seconds` new ones."""
        if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
            # Before the download: a prompt over the limit is refused at once.
            raise RequestError(
                f"The prompt is too long ({len(prompt)} characters, at most {MAX_PROMPT_CHARS})."
            )
        stored, _probed_seconds = await self.bot.uploads.store(clip)
        try:
            source_seconds = await asyncio.to_thread(
                clip_seconds,
                stored,
                timeout_s=self.bot.config.engine_settings.engine.decode_timeout_s,
                max_seconds=self.bot.config.limits.max_input_seconds,
            )
            window = context_window(source_seconds, seconds, self.bot.config.limits.continuation_context_s)
            request = continuation_request(
                model_version=model_version, prompt=prompt, source_path=stored, seconds=seconds, window=window
            )
        except BaseException:
            stored.unlink(missing_ok=True)
            raise
        return request, continuation_source(source, window), stored

    # -- replies that mention the bot -------------------------------------------------------------
    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        me = self.bot.user
        if me is None or message.author.bot or message.guild is None:
            return
        # Only a mention typed in the text counts: a reply pings the bot by default without one.
        if not mentions_bot(message.content, me.id):
            return
        try:
            # In a jam's thread, a mention takes a turn in the jam instead.
            jams = cast("JamCog | None", self.bot.get_cog("JamCog"))
            if jams is not None and await jams.take_turn_from_message(message):
                return
            await self.continue_from_reply(message)
        except RequestError as error:
            await self.answer_reply(message, str(error))
        except Exception:
            logger.exception("a reply that mentions the bot failed (message %s)", message.id)
            await self.answer_reply(message, INTERNAL_ERROR_TEXT)

    async def answer_reply(self, message: discord.Message, text: str) -> discord.Message | None:
        try:
            return await message.reply(
                text, mention_author=True, allowed_mentions=discord.AllowedMentions(replied_user=True)
            )
        except discord.HTTPException as error:
            logger.warning("could not answer message %s: %s", message.id, error)
            return None

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
        wanted = parse_mention_request(message.content, self.bot.user.id)
        clips = audio_attachments(source)
        if not clips:
            raise RequestError("The message you replied to has no audio I can continue.")
        model_version = self.bot.default_model_for(message.guild.id)
        async with message.channel.typing(), self.bot.clip_intake.slot(message.author.id):
            request, continues, stored = await self.prepare(
                source, clips[0], model_version, wanted.prompt, wanted.seconds_or(DEFAULT_NEW_SECONDS)
            )
        first_of = f" (the first of its {len(clips)} clips)" if len(clips) > 1 else ""
        name = shown_filename(clips[0].filename)
        status = await self.answer_reply(message, f"🎼 Continuing {name}{first_of}: queueing…")
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
