"""/jam: members grow one piece together in a thread, one turn at a time.

`/jam start` opens a public thread named after the prompt and queues the opening turn. Each later
turn (`/jam add`, or a message in the thread that mentions the bot) continues the tail of the whole
piece so far, so the piece grows well past the model's 30 s; the bot posts the new part and the
whole piece, with who added what. Turns of one jam run one at a time, in the order asked: a turn
becomes an ordinary job (queue, caps, row, /history, /cancel) when the turns before it are done,
since it continues the piece they leave. A jam ends at `max_turns`, at `[jam] max_seconds`, or by
`/jam end`, which posts the final piece with the credits and archives the thread.

Jams and turns are rows (bot/storage/jams.py); the turns' state machine (their line, one at a time,
what each leaves in the piece) is `JamTurns` beside them (bot/storage/jam_turns.py), which this cog
holds. A job's end moves its jam on (the `job_ended` event), so a restart loses nothing: the queued
turn runs and the next one follows. This cog keeps the commands and everything posted in a thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.app_commands import Choice, Range
from discord.ext import commands

from bot.admission import JobAsk
from bot.continuation import parse_mention_request
from bot.pipeline.delivery import PostedResult, upload_size
from bot.pipeline.discord_faults import DISCORD_REQUEST_ERRORS, describe_fault
from bot.replies import defer_publicly, reply_privately, shown_member_text
from bot.storage.jam_turns import Answer, JamTurns, check_piece_present
from bot.storage.jams import Jam, JamState, JamTurn
from bot.storage.jobs import Job
from cogs.utils.jam_posts import (
    NO_MENTIONS,
    credits_embed,
    final_attachments,
    final_text,
    permission_text,
    picture_name,
    piece_attachments,
    post_nonce,
    thread_name,
    turn_attachments,
    turn_text,
    welcome_text,
)
from cogs.utils.mentions import answer_mention, mentions_me
from cogs.utils.options import set_option_maximum
from inference.protocol import GenerationResult
from inference.request import (
    DEFAULT_MAX_DURATION_S,
    MAX_PROMPT_CHARS,
    MIN_DURATION_S,
    MODEL_VERSIONS,
    GenerationRequest,
    RequestError,
)

if TYPE_CHECKING:
    from bot.app import MusicGenBot

logger = logging.getLogger(__name__)

DEFAULT_TURN_SECONDS = 8
DEFAULT_MAX_TURNS = 10
MAX_MAX_TURNS = 50
# How long a shutdown waits for a jam change in progress (adding a turn, posting one) to finish.
SHUTDOWN_WAIT_S = 30.0
# Versions that make music (encode-decode only re-encodes a clip).
JAM_MODELS = tuple(version for version in MODEL_VERSIONS if version != "encode-decode")


class JamCog(commands.Cog):
    """Jam sessions: /jam start, add, export, end, list, and turns asked by mentioning the bot in a jam thread."""

    jam = app_commands.Group(
        name="jam", description="Grow one piece together, a turn each, in a thread.", guild_only=True
    )

    def __init__(self, bot: MusicGenBot) -> None:
        self.bot = bot
        # A turn adds up to `[limits] max_duration_s`, like any continuation (the annotations hold the default's).
        most = bot.config.limits.max_duration_s
        set_option_maximum(self.start, "turn_seconds", most)
        set_option_maximum(self.add, "seconds", most)
        self.store = bot.jam_store
        self.turns = JamTurns(bot, posts=self)
        self._resume_task: asyncio.Task[None] | None = None

    async def cog_load(self) -> None:
        # A finished turn is posted in its thread, by `post_turn`, instead of as a plain result.
        self.bot.dispatcher.poster.own_way = self.post_turn
        # After a restart, jams move on once the dispatcher has queued the jobs left pending.
        self._resume_task = asyncio.create_task(self.resume_open_jams(), name="jam-resume")

    async def cog_unload(self) -> None:
        if self.bot.dispatcher.poster.own_way == self.post_turn:
            self.bot.dispatcher.poster.own_way = None
        if self._resume_task is not None:
            self._resume_task.cancel()
        await self.turns.work.settle(SHUTDOWN_WAIT_S)

    # -- commands -------------------------------------------------------------------------------------
    @jam.command(name="start", description="Open a jam thread here and play the opening turn.")
    @app_commands.describe(
        prompt="What the piece should sound like (the thread is named after it).",
        model_version="Which model plays every turn. Default: the server's default.",
        turn_seconds=f"Seconds each turn adds (default {DEFAULT_TURN_SECONDS}).",
        max_turns=f"Turns before the jam ends (default {DEFAULT_MAX_TURNS}).",
    )
    @app_commands.choices(model_version=[Choice(name=v, value=v) for v in JAM_MODELS])
    async def start(
        self,
        interaction: discord.Interaction[MusicGenBot],
        prompt: Range[str, 1, MAX_PROMPT_CHARS],
        model_version: str | None = None,
        turn_seconds: Range[int, MIN_DURATION_S, DEFAULT_MAX_DURATION_S] = DEFAULT_TURN_SECONDS,
        max_turns: Range[int, 1, MAX_MAX_TURNS] = DEFAULT_MAX_TURNS,
    ) -> None:
        assert interaction.guild_id is not None
        self.bot.admission.check_accepting_jobs()
        channel = interaction.channel
        if isinstance(channel, discord.Thread):
            raise RequestError(
                "Start a jam in a text channel, not in a thread: the jam opens its own thread."
            )
        if not isinstance(channel, discord.TextChannel):
            raise RequestError("Jams live in threads, so start one in a text channel.")
        default_model = self.bot.default_model_for(interaction.guild_id)
        model = model_version or default_model
        request = GenerationRequest(model_version=model, prompt=prompt, duration=turn_seconds).validate(  # type: ignore[arg-type]
            max_duration_s=self.bot.config.limits.max_duration_s
        )
        self.bot.admission.check_model_available(request, default_model)
        if turn_seconds > self.bot.config.jam.max_seconds:
            raise RequestError(
                f"A turn cannot be longer than the longest jam here ({self.bot.config.jam.max_seconds:g} s)."
            )
        # Every gate before the thread, the announcement or the jam exist.
        ask = dataclasses.replace(JobAsk.of_interaction(interaction, feature="jams"), opens_thread=True)
        await self.bot.admission.check(ask)
        await defer_publicly(interaction)
        try:
            thread = await channel.create_thread(
                name=thread_name(prompt), type=discord.ChannelType.public_thread, reason="/jam start"
            )
        except discord.Forbidden as error:
            raise RequestError(permission_text(["Create Public Threads"], channel)) from error
        jam = await self.create_jam_in(
            thread,
            guild_id=interaction.guild_id,
            channel_id=channel.id,
            starter_id=interaction.user.id,
            prompt=prompt,
            model_version=model,
            turn_seconds=turn_seconds,
            max_turns=max_turns,
        )
        await self.post_in_thread(jam, welcome_text(jam, self.bot.config.jam.max_seconds))
        await self.turns.queue_turn(
            jam, interaction.user, prompt, turn_seconds, answer=None, gates_passed=True
        )
        await interaction.followup.send(
            f"🎶 {interaction.user.mention} started a jam: {thread.mention} · **{shown_member_text(thread.name, 100)}**. "
            "Take a turn in the thread with `/jam add`.",
            allowed_mentions=NO_MENTIONS,
        )

    async def create_jam_in(self, thread: discord.Thread, **jam: Any) -> Jam:
        """The jam's row; if the database cannot take it now, the new thread says so and is archived."""
        try:
            return await self.store.create(thread_id=thread.id, **jam)
        except RequestError as error:
            try:
                await thread.send(f"This jam could not start: {error}", allowed_mentions=NO_MENTIONS)
                await thread.edit(archived=True, reason="the jam could not start")
            except discord.HTTPException as failure:
                logger.warning(
                    "could not close thread %s of a jam that did not start: %s", thread.id, failure
                )
            raise

    @jam.command(name="add", description="Take a turn: continue the jam's piece with your prompt.")
    @app_commands.describe(
        prompt="What your part should sound like.", seconds="Seconds to add (default: the jam's turn length)."
    )
    async def add(
        self,
        interaction: discord.Interaction[MusicGenBot],
        prompt: Range[str, 1, MAX_PROMPT_CHARS],
        seconds: Range[int, MIN_DURATION_S, DEFAULT_MAX_DURATION_S] | None = None,
    ) -> None:
        jam = await self.open_jam_here(interaction)
        state = await self.store.state(jam.id)
        check_piece_present(state)
        self.turns.check_room(state, seconds or jam.turn_seconds)
        await self.bot.admission.check(JobAsk.of_interaction(interaction, feature="jams"))
        # Taking the place writes to the database, which may make the member wait past Discord's 3 s.
        await defer_publicly(interaction)

        async def answer(text: str) -> int | None:
            message = await interaction.followup.send(text, allowed_mentions=NO_MENTIONS, wait=True)
            return message.id

        await self.turns.queue_turn(jam, interaction.user, prompt, seconds or jam.turn_seconds, answer=answer)

    @jam.command(name="export", description="Post the whole piece so far.")
    @app_commands.describe(output_format="wav (MP3 anyway when a WAV would be too large) or mp3.")
    @app_commands.choices(output_format=[Choice(name="wav", value="wav"), Choice(name="mp3", value="mp3")])
    async def export(self, interaction: discord.Interaction[MusicGenBot], output_format: str = "wav") -> None:
        jam = await self.open_jam_here(interaction)
        state = await self.store.state(jam.id)
        if state.piece_path is None:
            raise RequestError("There is nothing to export yet: the opening turn is still being made.")
        check_piece_present(state)
        await defer_publicly(interaction)
        attachments, note = await piece_attachments(
            state, f"jam-{jam.id}-piece", interaction.filesize_limit, output_format=output_format
        )
        players = ", ".join(f"<@{c.user_id}>" for c in await self.store.contributors(jam.id))
        await interaction.followup.send(
            "\n".join(
                part
                for part in (f"📼 The whole piece so far: {state.piece_seconds:.1f} s by {players}.", note)
                if part
            ),
            files=[attachment.file() for attachment in attachments],
            embed=credits_embed(
                state,
                f"Jam: {shown_member_text(jam.prompt, 250)}",
                footer=f"Jam #{jam.id} · export",
                picture_name=picture_name(attachments),
            ),
            allowed_mentions=NO_MENTIONS,
        )

    @jam.command(
        name="end", description="End the jam: post the final piece with the credits and archive the thread."
    )
    async def end(self, interaction: discord.Interaction[MusicGenBot]) -> None:
        jam = await self.open_jam_here(interaction)
        if interaction.user.id != jam.starter_id and not interaction.permissions.manage_threads:
            raise RequestError(
                f"Only <@{jam.starter_id}>, who started this jam, or someone with Manage Threads can end it."
            )
        await defer_publicly(interaction)
        await self.end_jam(jam, f"ended by {interaction.user.mention}", interaction=interaction)

    @jam.command(name="list", description="This server's open jams.")
    async def list_jams(self, interaction: discord.Interaction[MusicGenBot]) -> None:
        guild = interaction.guild
        assert guild is not None and isinstance(interaction.user, discord.Member)
        lines = []
        for jam in await self.store.open_jams(guild.id):
            parent = guild.get_channel(jam.channel_id)
            if parent is None or not parent.permissions_for(interaction.user).view_channel:
                continue  # a jam in a channel the member cannot see is not theirs to know about
            state = await self.store.state(jam.id)
            lines.append(
                f"🎶 <#{jam.thread_id}> · **{shown_member_text(thread_name(jam.prompt), 60)}** by <@{jam.starter_id}> · "
                f"{len(state.done)}/{jam.max_turns} turns · {state.piece_seconds:.0f} s"
            )
        text = (
            "\n".join(["**Open jams here:**", *lines])
            if lines
            else "There is no open jam here: `/jam start` opens one."
        )
        await interaction.response.send_message(text[:2000], ephemeral=True)

    # -- a turn asked for by mentioning the bot in a jam thread ---------------------------------------
    @commands.Cog.listener("on_message")
    async def take_turn_from_mention(self, message: discord.Message) -> None:
        """A mention in a jam's thread takes a turn (the continue cog leaves those to this one)."""
        if not mentions_me(self.bot.user, message):
            return
        jam = await self.store.in_thread(message.channel.id)
        if jam is not None:
            await answer_mention(message, lambda: self.take_turn_from_message(message, jam))

    async def take_turn_from_message(self, message: discord.Message, jam: Jam) -> None:
        """Queue a turn asked for in `message`, which mentions the bot in `jam`'s thread."""
        assert self.bot.user is not None
        if not jam.is_open:
            raise RequestError("This jam has ended; `/jam start` opens a new one.")
        check_piece_present(await self.store.state(jam.id))
        await self.bot.admission.check(JobAsk.of_message(message, feature="jams"))
        wanted = parse_mention_request(
            message.content, self.bot.user.id, max_seconds=self.bot.config.limits.max_duration_s
        )
        seconds = wanted.seconds_or(jam.turn_seconds)

        async def answer(text: str) -> int | None:
            reply = await message.reply(text, allowed_mentions=NO_MENTIONS)
            return reply.id

        await self.turns.queue_turn(jam, message.author, wanted.prompt or jam.prompt, seconds, answer=answer)

    # -- where a command is used -----------------------------------------------------------------------
    async def open_jam_here(self, interaction: discord.Interaction[MusicGenBot]) -> Jam:
        jam = await self.store.in_thread(interaction.channel_id or 0)
        if jam is None:
            raise RequestError(
                "Use this in a jam's thread. `/jam list` shows the open jams; `/jam start` opens one."
            )
        if not jam.is_open:
            raise RequestError("This jam has ended (its final piece is above). `/jam start` opens a new one.")
        return jam

    # -- a job's end, and a finished turn's post ------------------------------------------------------
    @commands.Cog.listener()
    async def on_job_ended(self, job_id: int) -> None:
        await self.turns.job_ended(job_id)

    async def post_turn(
        self, job: Job, result: GenerationResult, interaction: discord.Interaction | None
    ) -> PostedResult | None:
        """A finished turn, in its thread: the new part, the whole piece so far and who added what.

        The turn is recorded as done only once its post exists: if the post cannot be made, the
        job takes the "could not deliver" path (its audio kept), the turn fails, and the piece stays
        what the members have heard.
        """
        async with self.turns.work.counted():
            playing = await self.turns.playing(job.id, result.output_path)
            if playing is None:
                return None
            after, played = playing
            posted = await self.send_turn_post(job, after, played, result)
            await self.turns.posted(played)
            return posted

    async def send_turn_post(
        self, job: Job, state: JamState, turn: JamTurn, result: GenerationResult
    ) -> PostedResult:
        """Post the turn through the delivery path: retried on network faults, with a nonce against doubles."""
        jam = state.jam
        limit = self.bot.dispatcher.poster.upload_limit(job, None)
        attachments, note = await turn_attachments(state, turn, result.output_path, limit)
        content = turn_text(state, turn, next_turn_open=self.turns.completion_reason(state) is None)
        embed = credits_embed(
            state,
            f"Jam: {shown_member_text(jam.prompt, 250)}",
            footer=f"Job #{job.id} · jam #{jam.id}, turn {turn.number} · /jam export posts the whole piece",
            picture_name=picture_name(attachments),
        )
        sent = await self.bot.dispatcher.poster.deliver(
            lambda: self.thread(jam).send(
                "\n".join(part for part in (content, note) if part),
                files=[attachment.file() for attachment in attachments],
                embed=embed,
                allowed_mentions=discord.AllowedMentions(users=[discord.Object(turn.user_id)]),
                nonce=post_nonce(jam, f"job-{job.id}"),
            ),
            upload_bytes=upload_size(attachments),
            what=f"jam {jam.id}: posting turn {turn.number} (job {job.id})",
        )
        posted_format = "mp3" if any(a.filename.endswith(".mp3") for a in attachments) else "wav"
        return PostedResult(sent.id, posted_format)

    async def resume_open_jams(self) -> None:
        """After a restart, once connected: every open jam moves on (see `JamTurns.resume_open_jams`)."""
        await self.bot.wait_until_ready()
        await self.turns.resume_open_jams()

    # -- the end ---------------------------------------------------------------------------------------
    async def end_jam(self, jam: Jam, reason: str, *, interaction: discord.Interaction[MusicGenBot]) -> None:
        """/jam end: stop the turn being made, drop the waiting ones, post the final piece, archive."""
        async with self.turns.work.counted():
            if not await self.turns.end(jam, reason):
                await reply_privately(interaction, "This jam has just ended.")
                return
            await self.finish(jam, reason, interaction=interaction)

    async def finish(
        self, jam: Jam, reason: str, *, interaction: discord.Interaction[MusicGenBot] | None = None
    ) -> None:
        """Post the final piece with the credits (the credits alone if its audio is gone), then archive."""
        async with self.turns.work.counted():
            await self.store.end(jam.id, reason)
            state = await self.store.state(jam.id)
            contributors = await self.store.contributors(jam.id)
            limit = interaction.filesize_limit if interaction is not None else self.guild_upload_limit(jam)
            attachments, note = await final_attachments(state, limit)
            content = final_text(state, contributors, reason, note)
            embed = credits_embed(
                state,
                f"Jam: {shown_member_text(jam.prompt, 250)}",
                footer=f"Jam #{jam.id} · final piece",
                picture_name=picture_name(attachments),
            )

            async def send() -> discord.Message:
                files = [attachment.file() for attachment in attachments]
                if interaction is not None and not interaction.is_expired():
                    return await interaction.followup.send(
                        content, files=files, embed=embed, allowed_mentions=NO_MENTIONS, wait=True
                    )
                return await self.thread(jam).send(
                    content,
                    files=files,
                    embed=embed,
                    allowed_mentions=NO_MENTIONS,
                    nonce=post_nonce(jam, "final"),
                )

            try:
                await self.bot.dispatcher.poster.deliver(
                    send, upload_bytes=upload_size(attachments), what=f"jam {jam.id}: posting the final piece"
                )
            except DISCORD_REQUEST_ERRORS as error:
                logger.error("jam %s: could not post the final piece: %s", jam.id, describe_fault(error))
            await self.archive(jam)

    async def archive(self, jam: Jam) -> None:
        """Archive the jam's thread (the bot created it, so it may without Manage Threads)."""
        try:
            thread = self.bot.get_channel(jam.thread_id) or await self.bot.fetch_channel(jam.thread_id)
            if isinstance(thread, discord.Thread) and not thread.archived:
                await thread.edit(archived=True, reason="the jam is over")
        except discord.HTTPException as error:
            logger.warning("jam %s: could not archive its thread: %s", jam.id, error)

    # -- posting -------------------------------------------------------------------------------------------
    def thread(self, jam: Jam) -> discord.PartialMessageable:
        return self.bot.get_partial_messageable(
            jam.thread_id, guild_id=jam.guild_id, type=discord.ChannelType.public_thread
        )

    def guild_upload_limit(self, jam: Jam) -> int:
        guild = self.bot.get_guild(jam.guild_id)
        return guild.filesize_limit if guild is not None else 10 * 1024 * 1024

    async def post_in_thread(self, jam: Jam, text: str) -> None:
        """A notice of the bot's own in the jam's thread (logged, not raised, if Discord refuses it)."""
        try:
            await self.thread(jam).send(text, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as error:
            logger.warning("jam %s: could not post in its thread: %s", jam.id, error)

    async def announce(self, jam: Jam, turn: JamTurn, text: str, answer: Answer | None) -> int | None:
        """Tell the member their turn's place (through `answer`, else in the thread): that message
        becomes the turn's status message. None if Discord refused it."""
        try:
            if answer is None:
                return (await self.thread(jam).send(text, allowed_mentions=NO_MENTIONS)).id
            return await answer(text)
        except discord.HTTPException as error:
            # The turn is in line all the same; its result is posted when it is played.
            logger.warning("jam %s: could not answer for turn %s: %s", jam.id, turn.id, error)
            return None

    async def notify(self, jam: Jam, turn: JamTurn, text: str) -> None:
        """Tell the turn's member `text`: a new message that pings them (an edit would notify nobody),
        and the same text on the turn's status message."""
        try:
            await self.thread(jam).send(
                text, allowed_mentions=discord.AllowedMentions(users=[discord.Object(turn.user_id)])
            )
            if turn.status_message_id is not None:
                await self.thread(jam).get_partial_message(turn.status_message_id).edit(content=text)
        except discord.HTTPException as error:
            logger.warning("jam %s: could not tell about turn %s: %s", jam.id, turn.id, error)


async def setup(bot: MusicGenBot) -> None:
    await bot.add_cog(JamCog(bot))
