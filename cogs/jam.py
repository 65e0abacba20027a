"""/jam: members grow one piece together in a thread, one turn at a time.

`/jam start` opens a public thread named after the prompt and queues the opening turn. Each later
turn (`/jam add`, or a message in the thread that mentions the bot) continues the tail of the whole
piece so far, so the piece grows well past the model's 30 s; the bot posts the new part and the
whole piece, with who added what. Turns of one jam run one at a time, in the order asked: a turn
becomes an ordinary job (queue, caps, row, /history, /cancel) when the turns before it are done,
since it continues the piece they leave. A jam ends at `max_turns`, at `[jam] max_seconds`, or by
`/jam end`, which posts the final piece with the credits and archives the thread.

Jams and turns are rows (bot/storage/jams.py), and a job's end moves its jam on (a dispatcher listener), so
a restart loses nothing: the queued turn runs and the next one follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import io
import logging
import re
import wave
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import discord
from discord import app_commands
from discord.app_commands import Choice, Range
from discord.ext import commands

from bot.admission import JobAsk
from bot.audio.editing import context_window, encode_to_fit, new_part_path_for
from bot.audio.waveform import MarkedPart, waveform_png_of_file
from bot.continuation import continuation_request, parse_mention_request
from bot.pipeline.delivery import EMBED_COLOUR, PostedResult
from bot.pipeline.discord_faults import DISCORD_REQUEST_ERRORS, describe_fault, retry_transient
from bot.replies import clip_text, defer_publicly, escape_member_text, reply_privately
from bot.storage.jams import Jam, JamState, JamTurn, TurnStatus
from bot.storage.jobs import ContinuationSource, Job, JobOrigin, JobStatus
from inference.protocol import GenerationResult
from inference.request import (
    MAX_DURATION_S,
    MAX_PROMPT_CHARS,
    MIN_DURATION_S,
    MODEL_VERSIONS,
    GenerationRequest,
    RequestError,
)

if TYPE_CHECKING:
    from bot.app import MusicGenBot

logger = logging.getLogger(__name__)

THREAD_NAME_LIMIT = 100  # Discord's limit on channel (thread) names
# A turn leaves the model room for at least one second of the piece to continue from.
MAX_TURN_SECONDS = MAX_DURATION_S - 1
DEFAULT_TURN_SECONDS = 8
DEFAULT_MAX_TURNS = 10
MAX_MAX_TURNS = 50
# Discord refuses a request over 25 MiB, whatever the per-file limit.
REQUEST_LIMIT_BYTES = 25 * 1024 * 1024
PICTURE_ALLOWANCE_BYTES = 256 * 1024
# How long /jam end waits for a turn it cancelled to stop before posting the final piece.
CANCEL_WAIT_S = 60.0
# How long a shutdown waits for a jam change in progress (adding a turn, posting one) to finish.
SHUTDOWN_WAIT_S = 30.0
# Versions that make music (encode-decode only re-encodes a clip).
JAM_MODELS = tuple(version for version in MODEL_VERSIONS if version != "encode-decode")
NO_MENTIONS = discord.AllowedMentions.none()
CREDITS_CHARS = 3500
# Characters that would turn a thread name into markup or a mention where it is quoted.
_NAME_MARKUP = re.compile(r"[\\*_~|`>#\[\]()<@:]")


def thread_name(prompt: str) -> str:
    """The prompt as a thread name: one line without markdown or mention syntax, cut to 100 characters.

    A name is shown as typed wherever Discord lists threads, so escaping would show backslashes:
    the characters that make links, mentions and markup are left out instead.
    """
    plain = _NAME_MARKUP.sub(" ", prompt)
    return " ".join(plain.split())[:THREAD_NAME_LIMIT] or "jam"


def shown(text: str, limit: int) -> str:
    """A member's text (a prompt) as the bot shows it in a message: escaped, so it renders as typed."""
    return clip_text(escape_member_text(text), limit)


def wav_seconds(path: str | Path) -> float:
    with wave.open(str(path)) as reader:
        return reader.getnframes() / reader.getframerate()


def clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


@dataclass(frozen=True)
class Attachment:
    """A file to post, kept as a path or bytes: a `discord.File` is consumed by one upload, so each
    try of a post builds fresh ones."""

    filename: str
    path: Path | None = None
    data: bytes | None = None

    def file(self) -> discord.File:
        if self.path is not None:
            return discord.File(self.path, filename=self.filename)
        assert self.data is not None
        return discord.File(io.BytesIO(self.data), filename=self.filename)


def post_nonce(jam: Jam, post: str) -> str:
    """A nonce for one of the jam's posts (Discord returns the message a nonce already made, so a
    retry whose answer was lost posts nothing twice). Discord keeps nonces per author, not per
    channel, and allows 25 characters: the thread's id makes it unique, hashed to fit."""
    return "jam-" + hashlib.blake2b(f"{jam.thread_id}:{post}".encode(), digest_size=8).hexdigest()


def picture_name(attachments: Sequence[Attachment]) -> str | None:
    return next((a.filename for a in attachments if a.filename.endswith(".png")), None)


def place_text(label: str, ahead: int) -> str:
    """What a member is told when their turn takes its place in the jam's line."""
    if not ahead:
        return f"🎼 {label}: starting…"
    turns = "turn" if ahead == 1 else f"{ahead} turns"
    verb = "is" if ahead == 1 else "are"
    return (
        f"⏳ {label}. Your turn is **#{ahead + 1}** in this jam's line: it starts when the {turns} before it "
        f"{verb} done."
    )


def credits_lines(state: JamState) -> list[str]:
    """One line per finished turn: who, what, and where it lies in the piece."""
    lines = []
    for turn in state.done:
        prompt = shown(turn.prompt or state.jam.prompt, 80)
        lines.append(
            f"{turn.number}. <@{turn.user_id}> · *{prompt}* · {clock(turn.start_s or 0)}–{clock(turn.end_s or 0)}"
        )
    return lines


def credits_embed(state: JamState, title: str, *, footer: str, picture_name: str | None) -> discord.Embed:
    """The jam's prompt, who added what, the length so far, and the picture of the piece."""
    jam = state.jam
    embed = discord.Embed(title=clip_text(title, 256), colour=EMBED_COLOUR)
    lines = credits_lines(state)
    # The latest turns that fit, well inside Discord's 4096 characters (and 6000 for the whole embed).
    shown: list[str] = []
    for line in reversed(lines):
        if sum(len(kept) + 1 for kept in shown) + len(line) > CREDITS_CHARS:
            shown.append("…")
            break
        shown.append(line)
    embed.description = "\n".join(reversed(shown)) or "No turn has been played yet."
    embed.add_field(
        name="Piece", value=f"{state.piece_seconds:.1f} s · {len(lines)} of {jam.max_turns} turns"
    )
    embed.add_field(name="Model", value=jam.model_version)
    embed.add_field(name="Started by", value=f"<@{jam.starter_id}>")
    if picture_name is not None:
        embed.set_image(url=f"attachment://{picture_name}")
    embed.set_footer(text=footer[:2048])
    return embed


P = ParamSpec("P")
T = TypeVar("T")


def in_flight(
    method: Callable[Concatenate[JamCog, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[JamCog, P], Coroutine[Any, Any, T]]:
    """Count the call as work in progress, which the cog lets finish when the bot shuts down."""

    @functools.wraps(method)
    async def counted(self: JamCog, *args: P.args, **kwargs: P.kwargs) -> T:
        self._busy += 1
        self._idle.clear()
        try:
            return await method(self, *args, **kwargs)
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    return counted


class JamCog(commands.Cog):
    """Jam sessions: /jam start, add, export, end, list, and turns asked by mentioning the bot in a jam thread."""

    jam = app_commands.Group(
        name="jam", description="Grow one piece together, a turn each, in a thread.", guild_only=True
    )

    def __init__(self, bot: MusicGenBot) -> None:
        self.bot = bot
        self.store = bot.jam_store
        # One change at a time per jam: adding a turn, starting the next, recording a finished one.
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._resume_task: asyncio.Task[None] | None = None
        # Jam changes in progress: a shutdown waits for them, so none is cut off halfway.
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def cog_load(self) -> None:
        self.bot.dispatcher.job_ended_listeners.append(self.on_job_ended)
        self.bot.dispatcher.poster.custom_posts.append(self.post_turn)
        # After a restart, jams move on once the dispatcher has queued the jobs left pending.
        self._resume_task = asyncio.create_task(self.resume_open_jams(), name="jam-resume")

    async def cog_unload(self) -> None:
        if self.on_job_ended in self.bot.dispatcher.job_ended_listeners:
            self.bot.dispatcher.job_ended_listeners.remove(self.on_job_ended)
        if self.post_turn in self.bot.dispatcher.poster.custom_posts:
            self.bot.dispatcher.poster.custom_posts.remove(self.post_turn)
        if self._resume_task is not None:
            self._resume_task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), SHUTDOWN_WAIT_S)

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
        turn_seconds: Range[int, MIN_DURATION_S, MAX_TURN_SECONDS] = DEFAULT_TURN_SECONDS,
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
        request = GenerationRequest(model_version=model, prompt=prompt, duration=turn_seconds).validate()  # type: ignore[arg-type]
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
            raise RequestError(self.permission_text(["Create Public Threads"], channel)) from error
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
        await self.post_in_thread(jam, self.welcome_text(jam))
        await self.queue_turn(jam, interaction.user, prompt, turn_seconds, answer=None, gates_passed=True)
        await interaction.followup.send(
            f"🎶 {interaction.user.mention} started a jam: {thread.mention} · **{shown(thread.name, 100)}**. "
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
        seconds: Range[int, MIN_DURATION_S, MAX_TURN_SECONDS] | None = None,
    ) -> None:
        jam = await self.open_jam_here(interaction)
        state = await self.store.state(jam.id)
        self.check_piece_present(state)
        self.check_room(state, seconds or jam.turn_seconds)
        await self.bot.admission.check(JobAsk.of_interaction(interaction, feature="jams"))
        # Taking the place writes to the database, which may make the member wait past Discord's 3 s.
        await defer_publicly(interaction)

        async def answer(text: str) -> int | None:
            message = await interaction.followup.send(text, allowed_mentions=NO_MENTIONS, wait=True)
            return message.id

        await self.queue_turn(jam, interaction.user, prompt, seconds or jam.turn_seconds, answer=answer)

    @jam.command(name="export", description="Post the whole piece so far.")
    @app_commands.describe(output_format="wav (MP3 anyway when a WAV would be too large) or mp3.")
    @app_commands.choices(output_format=[Choice(name="wav", value="wav"), Choice(name="mp3", value="mp3")])
    async def export(self, interaction: discord.Interaction[MusicGenBot], output_format: str = "wav") -> None:
        jam = await self.open_jam_here(interaction)
        state = await self.store.state(jam.id)
        if state.piece_path is None:
            raise RequestError("There is nothing to export yet: the opening turn is still being made.")
        self.check_piece_present(state)
        await defer_publicly(interaction)
        attachments, note = await self.piece_attachments(
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
                f"Jam: {shown(jam.prompt, 250)}",
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
                f"🎶 <#{jam.thread_id}> · **{shown(thread_name(jam.prompt), 60)}** by <@{jam.starter_id}> · "
                f"{len(state.done)}/{jam.max_turns} turns · {state.piece_seconds:.0f} s"
            )
        text = (
            "\n".join(["**Open jams here:**", *lines])
            if lines
            else "There is no open jam here: `/jam start` opens one."
        )
        await interaction.response.send_message(text[:2000], ephemeral=True)

    # -- a turn asked for by mentioning the bot in a jam thread (see cogs/continue_audio.py) ----------
    async def take_turn_from_message(self, message: discord.Message) -> bool:
        """Queue a turn when `message` (which mentions the bot) is in a jam thread; False if it is not."""
        assert self.bot.user is not None
        jam = await self.store.in_thread(message.channel.id)
        if jam is None:
            return False
        if not jam.is_open:
            raise RequestError("This jam has ended; `/jam start` opens a new one.")
        self.check_piece_present(await self.store.state(jam.id))
        await self.bot.admission.check(JobAsk.of_message(message, feature="jams"))
        wanted = parse_mention_request(message.content, self.bot.user.id)
        seconds = wanted.seconds_or(jam.turn_seconds)

        async def answer(text: str) -> int | None:
            reply = await message.reply(text, allowed_mentions=NO_MENTIONS)
            return reply.id

        await self.queue_turn(jam, message.author, wanted.prompt or jam.prompt, seconds, answer=answer)
        return True

    # -- turns ---------------------------------------------------------------------------------------
    async def open_jam_here(self, interaction: discord.Interaction[MusicGenBot]) -> Jam:
        jam = await self.store.in_thread(interaction.channel_id or 0)
        if jam is None:
            raise RequestError(
                "Use this in a jam's thread. `/jam list` shows the open jams; `/jam start` opens one."
            )
        if not jam.is_open:
            raise RequestError("This jam has ended (its final piece is above). `/jam start` opens a new one.")
        return jam

    @staticmethod
    def check_piece_present(state: JamState) -> None:
        """Refuse to go on from a piece whose audio is gone from the disk (an operator deleted it)."""
        if state.piece_missing:
            raise RequestError(
                "This jam's piece is missing from the bot's storage, so it cannot be continued or exported. "
                "`/jam end` ends the jam with the credits."
            )

    @in_flight
    async def queue_turn(
        self,
        jam: Jam,
        member: discord.abc.User,
        prompt: str,
        seconds: int,
        *,
        answer: Callable[[str], Awaitable[int | None]] | None,
        gates_passed: bool = False,
    ) -> JamTurn:
        """Put a turn in the jam's line and tell the member their place; it starts when the line reaches it.

        `answer(text)` posts the public answer and returns its message id (it becomes the turn's status
        message); without one, the answer is posted in the thread. `gates_passed`: the opening turn,
        whose gates `/jam start` checked before it opened the thread.
        """
        if not MIN_DURATION_S <= seconds <= MAX_TURN_SECONDS:
            raise RequestError(
                f"A turn adds {MIN_DURATION_S} to {MAX_TURN_SECONDS} s (the model keeps a little of the piece "
                "to continue from)."
            )
        async with self._locks[jam.id]:
            state = await self.store.state(jam.id)
            self.check_room(state, seconds)
            turn = await self.take_place(jam, member, prompt, seconds, gates_passed=gates_passed)
            ahead = sum(t.status in (TurnStatus.WAITING, TurnStatus.STARTED) for t in state.turns)
            label = (
                f"Turn {state.turns_in_play + 1} of {jam.max_turns} by {member.mention}: "
                f"*{shown(prompt, 200)}* (+{seconds} s)"
            )
            await self.announce_turn(jam, turn, place_text(label, ahead), answer)
        await self.advance(jam.id)
        return turn

    def check_room(self, state: JamState, seconds: int) -> None:
        """The jam is open and has a turn and `seconds` left for one more turn."""
        jam, max_seconds = state.jam, self.bot.config.jam.max_seconds
        if not jam.is_open:
            raise RequestError("This jam has just ended.")
        if state.turns_in_play >= jam.max_turns:
            raise RequestError(
                f"All {jam.max_turns} turns of this jam are taken. `/jam export` posts the piece so far."
            )
        room = max_seconds - state.seconds_in_play
        if seconds <= room:
            return
        if room < MIN_DURATION_S:
            raise RequestError(
                f"This jam's piece will reach {max_seconds:g} s, the longest it may be here, with the turns "
                "already in line: there is no room for another."
            )
        raise RequestError(
            f"Only {int(room)} more seconds fit in this jam (it may grow to {max_seconds:g} s): "
            f"ask for at most {int(room)}."
        )

    async def take_place(
        self, jam: Jam, member: discord.abc.User, prompt: str, seconds: int, *, gates_passed: bool
    ) -> JamTurn:
        """The turn's row: from now on it counts towards the member's and the server's caps.

        The quota and the caps are checked once more under the admission lock (the member passed
        them when asking; another command may have taken the last place since).
        """
        async with self.bot.admission_lock:
            if not gates_passed:
                ask = JobAsk(guild_id=jam.guild_id, channel_id=jam.thread_id, user_id=member.id)
                await self.bot.admission.check_quota(ask)
                await self.bot.admission.check_caps(ask)
            return await self.store.add_turn(
                jam.id, user_id=member.id, user_name=member.display_name, prompt=prompt, seconds=seconds
            )

    async def announce_turn(
        self, jam: Jam, turn: JamTurn, text: str, answer: Callable[[str], Awaitable[int | None]] | None
    ) -> None:
        """Tell the member their place; that message becomes the turn's status message."""
        message_id: int | None = None
        try:
            if answer is None:
                message_id = (await self.thread(jam).send(text, allowed_mentions=NO_MENTIONS)).id
            else:
                message_id = await answer(text)
        except discord.HTTPException as error:
            # The turn is in line all the same; its result is posted when it is played.
            logger.warning("jam %s: could not answer for turn %s: %s", jam.id, turn.id, error)
        if message_id is not None:
            await self.store.set_turn_message(turn.id, message_id)

    @in_flight
    async def advance(self, jam_id: int) -> None:
        """Move a jam on: settle its started turn, end it when it is complete, else start the next turn."""
        async with self._locks[jam_id]:
            state = await self.store.state(jam_id)
            started = state.started
            if started is not None:
                job = await self.bot.jobs.get(started.job_id) if started.job_id is not None else None
                if job is not None and job.is_pending:
                    return  # one turn at a time: the next waits for this one
                if job is not None and job.status is JobStatus.DONE and job.output_path:
                    await self.record_turn(state, started, job.output_path)
                else:
                    await self.store.mark_failed(started.id)
                state = await self.store.state(jam_id)
            if not state.jam.is_open or not self.bot.accepting_jobs:
                return  # while the bot shuts down, waiting turns keep their place for after the restart
            while state.waiting:
                if await self.start_turn(state, state.waiting[0]):
                    return
                state = await self.store.state(jam_id)
            reason = self.completion_reason(state)
            if reason is not None:
                await self.finish(state.jam, reason, interaction=None)

    def completion_reason(self, state: JamState) -> str | None:
        """Why a jam with no turn in line is complete, or None while it may grow."""
        jam, max_seconds = state.jam, self.bot.config.jam.max_seconds
        if len(state.done) >= jam.max_turns:
            return f"all {jam.max_turns} turns are played"
        if state.piece_seconds + MIN_DURATION_S > max_seconds:
            return f"the piece reached {state.piece_seconds:.0f} s, the longest a jam may grow here ({max_seconds:g} s)"
        return None

    async def start_turn(self, state: JamState, turn: JamTurn) -> bool:
        """Make the turn a job continuing the piece so far; False if it cannot run (the member is told).

        The turn held its place in the caps and the quota since it was asked for, so it is not
        refused by them now: only a piece or a request that cannot be used stops it.
        """
        jam = state.jam
        try:
            request, continues = await self.turn_request(state, turn)
            job = await self.bot.admission.admit_and_queue(
                JobOrigin(guild_id=jam.guild_id, channel_id=jam.thread_id, user_id=turn.user_id),
                request,
                interaction=None,
                input_audio_filename=None,
                continues=continues,
                status_message_id=turn.status_message_id,
                holds_place=True,
            )
        except RequestError as error:
            await self.store.mark_failed(turn.id)
            await self.notify(
                jam, turn, f"❌ <@{turn.user_id}>, your turn could not start: {error} The jam goes on."
            )
            return False
        await self.store.mark_started(turn.id, job.id)
        return True

    async def turn_request(
        self, state: JamState, turn: JamTurn
    ) -> tuple[GenerationRequest, ContinuationSource | None]:
        """The opening turn is a text job; every later one continues the tail of the piece so far."""
        jam = state.jam
        prompt = turn.prompt or jam.prompt
        if state.piece_path is None:
            request = GenerationRequest(
                model_version=jam.model_version,  # type: ignore[arg-type]
                prompt=prompt,
                duration=turn.seconds,
            ).validate()
            return request, None
        self.check_piece_present(state)
        window = context_window(
            state.piece_seconds, turn.seconds, self.bot.config.limits.continuation_context_s
        )
        request = continuation_request(
            model_version=jam.model_version,
            prompt=prompt,
            source_path=Path(state.piece_path),
            seconds=turn.seconds,
            window=window,
        )
        previous = await self.bot.jobs.get(state.done[-1].job_id or 0)
        continues = ContinuationSource(
            message_id=previous.result_message_id if previous is not None else None,
            channel_id=jam.thread_id,
            source_seconds=window.source_seconds,
            context_start_s=window.start_s,
            context_s=window.seconds,
        )
        return request, continues

    async def played(self, state: JamState, turn: JamTurn, piece_path: str) -> JamTurn:
        """The turn as done: its number, where its part lies, and the whole piece after it."""
        earlier = [t for t in state.done if t.id != turn.id and (t.number or 0) < (turn.number or 1 << 30)]
        return dataclasses.replace(
            turn,
            status=TurnStatus.DONE,
            number=turn.number or len(earlier) + 1,
            start_s=(earlier[-1].end_s or 0.0) if earlier else 0.0,
            end_s=await asyncio.to_thread(wav_seconds, piece_path),
            piece_path=piece_path,
        )

    async def record_turn(self, state: JamState, turn: JamTurn, piece_path: str) -> None:
        """The turn's part is in the piece (its post exists: a job that ended done was delivered)."""
        played = await self.played(state, turn, piece_path)
        await self.store.mark_done(
            turn.id,
            number=played.number or 1,
            start_s=played.start_s or 0.0,
            end_s=played.end_s or 0.0,
            piece_path=piece_path,
        )

    # -- hooks into the dispatcher ---------------------------------------------------------------------
    async def on_job_ended(self, job_id: int) -> None:
        try:
            turn = await self.store.turn_of_job(job_id)
            if turn is not None:
                await self.advance(turn.jam_id)
        except Exception:
            logger.exception("jam: could not move on after job %s", job_id)

    @in_flight
    async def post_turn(
        self, job: Job, result: GenerationResult, interaction: discord.Interaction | None
    ) -> PostedResult | None:
        """A finished turn, in its thread: the new part, the whole piece so far and who added what.

        The turn is recorded as done only once its post exists: if the post cannot be made, the
        job takes the "could not deliver" path (its audio kept), the turn fails, and the piece stays
        what the members have heard.
        """
        turn = await self.store.turn_of_job(job.id)
        if turn is None:
            return None
        async with self._locks[turn.jam_id]:
            state = await self.store.state(turn.jam_id)
            played = await self.played(state, turn, result.output_path)
            after = JamState(state.jam, [played if t.id == turn.id else t for t in state.turns])
        posted = await self.send_turn_post(job, after, played, result)
        async with self._locks[turn.jam_id]:
            await self.store.mark_done(
                played.id,
                number=played.number or 1,
                start_s=played.start_s or 0.0,
                end_s=played.end_s or 0.0,
                piece_path=result.output_path,
            )
        return posted

    async def send_turn_post(
        self, job: Job, state: JamState, turn: JamTurn, result: GenerationResult
    ) -> PostedResult:
        """Post the turn through the delivery path: retried on network faults, with a nonce against doubles."""
        jam = state.jam
        limit = self.bot.dispatcher.poster.upload_limit(job, None)
        attachments: list[Attachment] = []
        new_part = new_part_path_for(result.output_path)
        if turn.number != 1 and new_part.is_file():
            attachments.append(Attachment(f"jam-{jam.id}-turn-{turn.number}-new.wav", path=new_part))
        used = new_part.stat().st_size if attachments else 0
        piece, note = await self.piece_attachments(
            state,
            f"jam-{jam.id}-turn-{turn.number}-piece",
            min(limit, REQUEST_LIMIT_BYTES - used - PICTURE_ALLOWANCE_BYTES),
        )
        attachments += piece
        content = (
            f"🎶 **Turn {turn.number} of {jam.max_turns}** by <@{turn.user_id}>: "
            f"*{shown(turn.prompt or jam.prompt, 200)}* (+{turn.seconds} s). "
            f"The piece is now **{state.piece_seconds:.1f} s**."
        )
        if not state.waiting and self.completion_reason(state) is None:
            content += " `/jam add` takes the next turn."
        embed = credits_embed(
            state,
            f"Jam: {shown(jam.prompt, 250)}",
            footer=f"Job #{job.id} · jam #{jam.id}, turn {turn.number} · /jam export posts the whole piece",
            picture_name=picture_name(attachments),
        )
        sent = await retry_transient(
            lambda: self.thread(jam).send(
                "\n".join(part for part in (content, note) if part),
                files=[attachment.file() for attachment in attachments],
                embed=embed,
                allowed_mentions=discord.AllowedMentions(users=[discord.Object(turn.user_id)]),
                nonce=post_nonce(jam, f"job-{job.id}"),
            ),
            delays_s=self.bot.dispatcher.poster.retry_delays_s,
            what=f"jam {jam.id}: posting turn {turn.number} (job {job.id})",
        )
        posted_format = "mp3" if any(a.filename.endswith(".mp3") for a in attachments) else "wav"
        return PostedResult(sent.id, posted_format)

    async def resume_open_jams(self) -> None:
        """After a restart: settle turns that ended while the bot was away and start the next ones."""
        await self.bot.wait_until_ready()
        for jam in await self.store.open_jams():
            try:
                await self.advance(jam.id)
            except Exception:
                logger.exception("jam %s: could not resume", jam.id)

    # -- the end ---------------------------------------------------------------------------------------
    @in_flight
    async def end_jam(self, jam: Jam, reason: str, *, interaction: discord.Interaction[MusicGenBot]) -> None:
        """/jam end: stop the turn being made, drop the waiting ones, post the final piece, archive."""
        async with self._locks[jam.id]:
            state = await self.store.state(jam.id)
            if not await self.store.end(jam.id, reason):
                await reply_privately(interaction, "This jam has just ended.")
                return
        started = state.started
        if started is not None and started.job_id is not None:
            await self.bot.dispatcher.cancel(started.job_id)
            await self.wait_until_settled(started)
        await self.finish(jam, reason, interaction=interaction)

    async def wait_until_settled(self, turn: JamTurn) -> None:
        """Wait for a cancelled turn's job to end and be settled (done if it finished first, else failed).

        The dispatcher tells its listeners last, after its own edits of the turn's status message,
        so once the turn is settled nothing more is posted about it and the thread can be archived.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCEL_WAIT_S
        while loop.time() < deadline:
            settled = await self.store.turn(turn.id)
            if settled is None or settled.status is not TurnStatus.STARTED:
                return
            await asyncio.sleep(0.1)
        await self.advance(turn.jam_id)

    @in_flight
    async def finish(
        self, jam: Jam, reason: str, *, interaction: discord.Interaction[MusicGenBot] | None
    ) -> None:
        """Post the final piece with the credits (the credits alone if its audio is gone), then archive."""
        await self.store.end(jam.id, reason)
        state = await self.store.state(jam.id)
        contributors = await self.store.contributors(jam.id)
        limit = interaction.filesize_limit if interaction is not None else self.guild_upload_limit(jam)
        attachments, note = await self.final_attachments(state, limit)
        summary = (
            f"{len(state.done)} turn{'s' if len(state.done) != 1 else ''}, {state.piece_seconds:.1f} s, by "
            + ", ".join(f"<@{c.user_id}> ({c.seconds:.0f} s)" for c in contributors)
            if contributors
            else "no turn was played"
        )
        content = clip_text(
            "\n".join(part for part in (f"🏁 **The jam is over**: {reason}. {summary}.", note) if part), 2000
        )
        embed = credits_embed(
            state,
            f"Jam: {shown(jam.prompt, 250)}",
            footer=f"Jam #{jam.id} · final piece",
            picture_name=picture_name(attachments),
        )

        async def send() -> object:
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
            await retry_transient(
                send,
                delays_s=self.bot.dispatcher.poster.retry_delays_s,
                what=f"jam {jam.id}: posting the final piece",
            )
        except DISCORD_REQUEST_ERRORS as error:
            logger.error("jam %s: could not post the final piece: %s", jam.id, describe_fault(error))
        await self.archive(jam)

    async def final_attachments(self, state: JamState, limit: int) -> tuple[list[Attachment], str]:
        """The final piece and its picture, or a note saying why there is none."""
        if state.piece_path is None:
            return [], ""
        if state.piece_missing:
            return [], "The piece's audio is missing from the bot's storage, so only the credits are posted."
        return await self.piece_attachments(state, f"jam-{state.jam.id}-final", limit)

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

    @staticmethod
    def permission_text(missing: Sequence[str], channel: discord.abc.GuildChannel) -> str:
        names = " and ".join(f"**{name}**" for name in missing)
        return (
            f"I can't run a jam in #{channel.name}: a jam lives in its own thread, and I need the {names} "
            f"permission{'s' if len(missing) > 1 else ''} there. Someone with Manage Channels can grant "
            "them to my role in the channel's settings → Permissions."
        )

    def welcome_text(self, jam: Jam) -> str:
        return (
            f"🎶 **Jam: {shown(jam.prompt, 300)}** · started by <@{jam.starter_id}> · model {jam.model_version} · "
            f"{jam.turn_seconds} s a turn · up to {jam.max_turns} turns or {self.bot.config.jam.max_seconds:g} s.\n"
            "Take a turn with `/jam add prompt` here (or mention me with your prompt); each turn continues the "
            "piece so far, one at a time, in order. `/jam export` posts the whole piece; the starter (or Manage "
            "Threads) ends the jam with `/jam end`."
        )

    async def piece_attachments(
        self, state: JamState, stem: str, limit: int, *, output_format: str = "wav"
    ) -> tuple[list[Attachment], str]:
        """The whole piece (MP3 when asked, or when a WAV is too large) and its picture, with a note."""
        assert state.piece_path is not None
        piece = Path(state.piece_path)
        if output_format == "mp3":
            # Under the WAV's own size, so that the MP3 is made (at the best bitrate that fits).
            limit = min(limit, piece.stat().st_size - 1)
        fitted = await asyncio.to_thread(encode_to_fit, piece, limit)
        attachments: list[Attachment] = []
        note = ""
        if fitted is None:
            note = f"The whole piece ({state.piece_seconds:.0f} s) is too large for this server's uploads even as MP3."
        else:
            attachments.append(Attachment(f"{stem}.{fitted.format}", path=fitted.path))
            if output_format == "wav" and fitted.format == "mp3":
                note = f"The WAV would be over this server's upload limit, so the piece is MP3 ({fitted.bitrate_kbps} kbit/s)."
        picture = await self.picture(state)
        if picture is not None:
            attachments.append(Attachment(f"{stem}.png", data=picture))
        return attachments, note

    async def picture(self, state: JamState) -> bytes | None:
        """The whole piece with each member's part marked (None if it cannot be drawn)."""
        if state.piece_path is None:
            return None
        parts = [
            MarkedPart(t.start_s or 0.0, t.end_s or 0.0, f"{t.number}. {t.user_name}") for t in state.done
        ]
        try:
            return await asyncio.to_thread(waveform_png_of_file, state.piece_path, parts=parts)
        except Exception:
            logger.warning("jam %s: could not draw the piece", state.jam.id, exc_info=True)
            return None


async def setup(bot: MusicGenBot) -> None:
    await bot.add_cog(JamCog(bot))
