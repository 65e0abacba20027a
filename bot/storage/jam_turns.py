"""A jam's turns, one at a time in the order asked: the state machine behind /jam (cogs/jam.py).

A turn takes its place in the jam's line (a row in `JamStore` that counts towards the caps and the
quota from then on), becomes an ordinary job when the turns before it are done (it continues the
piece they leave), and is in the piece once its post exists. A job's end moves its jam on (the
`job_ended` bot event), and after a restart every open jam is moved on once, so nothing is lost: the
queued turn runs and the next one follows. A jam is complete at `max_turns` or at `[jam]
max_seconds`; `/jam end` ends it sooner.

What members see (a turn's place, a turn that could not start, the final piece) is posted by the
jam cog, through `JamPosts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import discord

from bot.admission import JobAsk
from bot.audio.editing import context_window, wav_seconds
from bot.continuation import continuation_request
from bot.replies import shown_member_text
from bot.storage.jams import Jam, JamState, JamTurn, TurnStatus
from bot.storage.jobs import ContinuationSource, JobOrigin, JobStatus
from inference.request import MIN_DURATION_S, GenerationRequest, RequestError

if TYPE_CHECKING:
    from bot.app import MusicGenBot

logger = logging.getLogger(__name__)

# How long /jam end waits for a turn it cancelled to stop before posting the final piece.
CANCEL_WAIT_S = 60.0

# Posts the public answer to a member's turn and returns its message id (None: nothing was posted).
Answer = Callable[[str], Awaitable[int | None]]


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


def check_piece_present(state: JamState) -> None:
    """Refuse to go on from a piece whose audio is gone from the disk (an operator deleted it)."""
    if state.piece_missing:
        raise RequestError(
            "This jam's piece is missing from the bot's storage, so it cannot be continued or exported. "
            "`/jam end` ends the jam with the credits."
        )


class JamPosts(Protocol):
    """What the turns need posted in a jam's thread (the jam cog posts it)."""

    async def announce(self, jam: Jam, turn: JamTurn, text: str, answer: Answer | None) -> int | None:
        """Tell the member their turn's place (through `answer`, else in the thread); the id of the
        message that says so, None if none could be posted."""

    async def notify(self, jam: Jam, turn: JamTurn, text: str) -> None:
        """Tell the turn's member `text` (their turn could not start)."""

    async def finish(self, jam: Jam, reason: str) -> None:
        """Post the final piece with the credits and archive the thread."""


class WorkInProgress:
    """Jam changes in progress (adding a turn, starting the next, posting one): a shutdown waits for
    them, so none is cut off halfway."""

    def __init__(self) -> None:
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.asynccontextmanager
    async def counted(self) -> AsyncIterator[None]:
        self._busy += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    async def settle(self, timeout_s: float) -> None:
        """Wait until no change is in progress, for at most `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)


class JamTurns:
    """Every jam's line of turns: taking a place, starting the next turn, recording played ones, ending."""

    def __init__(self, bot: MusicGenBot, posts: JamPosts) -> None:
        self.bot = bot
        self.store = bot.jam_store
        self.posts = posts
        # One change at a time per jam: adding a turn, starting the next, recording a finished one.
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.work = WorkInProgress()

    # -- a turn takes its place ------------------------------------------------------------------------
    async def queue_turn(
        self,
        jam: Jam,
        member: discord.abc.User,
        prompt: str,
        seconds: int,
        *,
        answer: Answer | None,
        gates_passed: bool = False,
    ) -> JamTurn:
        """Put a turn in the jam's line and tell the member their place; it starts when the line reaches it.

        `answer(text)` posts the public answer and returns its message id (it becomes the turn's status
        message); without one, the answer is posted in the thread. `gates_passed`: the opening turn,
        whose gates `/jam start` checked before it opened the thread.
        """
        async with self.work.counted():
            # Like any continuation, a turn adds up to `[limits] max_duration_s` (past the model's
            # window, window by window); the jam's own limit is the room left in its piece.
            most = self.bot.config.limits.max_duration_s
            if not MIN_DURATION_S <= seconds <= most:
                raise RequestError(f"A turn adds {MIN_DURATION_S} to {most} s.")
            async with self._locks[jam.id]:
                state = await self.store.state(jam.id)
                self.check_room(state, seconds)
                turn = await self.take_place(jam, member, prompt, seconds, gates_passed=gates_passed)
                ahead = sum(t.status in (TurnStatus.WAITING, TurnStatus.STARTED) for t in state.turns)
                label = (
                    f"Turn {state.turns_in_play + 1} of {jam.max_turns} by {member.mention}: "
                    f"*{shown_member_text(prompt, 200)}* (+{seconds} s)"
                )
                message_id = await self.posts.announce(jam, turn, place_text(label, ahead), answer)
                if message_id is not None:
                    await self.store.set_turn_message(turn.id, message_id)
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
                jam, user_id=member.id, user_name=member.display_name, prompt=prompt, seconds=seconds
            )

    # -- the line moves on -----------------------------------------------------------------------------
    async def job_ended(self, job_id: int) -> None:
        """A job has ended: if it was a turn, its jam moves on."""
        async with self.work.counted():
            try:
                turn = await self.store.turn_of_job(job_id)
                if turn is not None:
                    await self.advance(turn.jam_id)
            except Exception:
                logger.exception("jam: could not move on after job %s", job_id)

    async def resume_open_jams(self) -> None:
        """After a restart: settle turns that ended while the bot was away and start the next ones."""
        for jam in await self.store.open_jams():
            try:
                await self.advance(jam.id)
            except Exception:
                logger.exception("jam %s: could not resume", jam.id)

    async def advance(self, jam_id: int) -> None:
        """Move a jam on: settle its started turn, end it when it is complete, else start the next turn."""
        async with self.work.counted(), self._locks[jam_id]:
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
                await self.posts.finish(state.jam, reason)

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
            await self.posts.notify(
                jam, turn, f"❌ <@{turn.user_id}>, your turn could not start: {error} The jam goes on."
            )
            return False
        await self.store.mark_started(turn.id, job.id)
        return True

    async def turn_request(
        self, state: JamState, turn: JamTurn
    ) -> tuple[GenerationRequest, ContinuationSource | None]:
        """The opening turn is a text job; every later one continues the tail of the piece so far."""
        jam, limits = state.jam, self.bot.config.limits
        prompt = turn.prompt or jam.prompt
        if state.piece_path is None:
            request = GenerationRequest(
                model_version=jam.model_version,  # type: ignore[arg-type]
                prompt=prompt,
                duration=turn.seconds,
            ).validate(max_duration_s=limits.max_duration_s)
            return request, None
        check_piece_present(state)
        window = context_window(state.piece_seconds, limits.continuation_context_s)
        request = continuation_request(
            model_version=jam.model_version,
            prompt=prompt,
            source_path=Path(state.piece_path),
            seconds=turn.seconds,
            window=window,
            max_seconds=limits.max_duration_s,
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

    # -- a played turn ---------------------------------------------------------------------------------
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
        await self._mark_played(await self.played(state, turn, piece_path))

    async def playing(self, job_id: int, piece_path: str) -> tuple[JamState, JamTurn] | None:
        """For posting a finished turn: the jam as it is with job `job_id`'s turn played (the piece now
        `piece_path`), and that turn; None when the job is no jam's turn."""
        turn = await self.store.turn_of_job(job_id)
        if turn is None:
            return None
        async with self._locks[turn.jam_id]:
            state = await self.store.state(turn.jam_id)
            played = await self.played(state, turn, piece_path)
            return JamState(state.jam, [played if t.id == turn.id else t for t in state.turns]), played

    async def posted(self, played: JamTurn) -> None:
        """The played turn's post exists: its part is in the piece from now on."""
        async with self._locks[played.jam_id]:
            await self._mark_played(played)

    async def _mark_played(self, played: JamTurn) -> None:
        assert played.piece_path is not None
        await self.store.mark_done(
            played.id,
            number=played.number or 1,
            start_s=played.start_s or 0.0,
            end_s=played.end_s or 0.0,
            piece_path=played.piece_path,
        )

    # -- the end ---------------------------------------------------------------------------------------
    async def end(self, jam: Jam, reason: str) -> bool:
        """/jam end: drop the waiting turns and stop the one being made (once it is settled nothing
        more is posted about it); False if the jam had already ended."""
        async with self.work.counted():
            async with self._locks[jam.id]:
                state = await self.store.state(jam.id)
                if not await self.store.end(jam.id, reason):
                    return False
            started = state.started
            if started is not None and started.job_id is not None:
                await self.bot.dispatcher.cancel(started.job_id)
                await self.wait_until_settled(started)
            return True

    async def wait_until_settled(self, turn: JamTurn) -> None:
        """Wait for a cancelled turn's job to end and be settled (done if it finished first, else failed).

        The dispatcher announces a job's end last, after its own edits of the turn's status message,
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
