"""The public message under a /generate: its place in line, then a live progress bar with an ETA.

Edits go through one `StatusMessage` per job. The newest text always wins and intermediate texts
are dropped, and edits are throttled (asyncio-throttle) to one per `interval_s`, so a 1500-step
generation costs a handful of requests and never trips Discord's rate limits.

An edit is cosmetic: one that fails (Discord's refusal, a connection reset, no answer within
`DiscordTimeouts.call_s`) is logged and the next text is tried later; it never stops the job or the
delivery of its result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import discord
from asyncio_throttle import Throttler

from bot.pipeline import discord_faults
from bot.pipeline.discord_faults import NETWORK_ERRORS, DiscordTimeouts, answer_within, describe_fault

logger = logging.getLogger(__name__)

PROGRESS_BAR_CELLS = 16
# Pauses before trying a job's final status text again when the edit did not go through.
FINAL_EDIT_RETRY_DELAYS_S = (1.0, 3.0)
# How often a waiting edit asks the throttler again, per edit interval. asyncio-throttle waits by
# polling (every 10 ms unless told otherwise), and every queued job has an edit waiting: a burst of
# 120 jobs woke the event loop 12,000 times a second, and the acknowledgements of the commands still
# arriving waited behind those wake-ups (3.7x the fake Discord's floor at p99). A progress edit may
# well go out a tenth of an interval late.
THROTTLE_POLLS_PER_INTERVAL = 10


def progress_bar(fraction: float, cells: int = PROGRESS_BAR_CELLS) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * cells)
    return "▰" * filled + "▱" * (cells - filled)


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class ProgressClock:
    """Turns (steps_done, steps_total) into a percentage and an ETA from the observed step rate."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._first: tuple[float, int] | None = None

    def describe(self, steps_done: int, steps_total: int) -> str:
        now = self._clock()
        fraction = steps_done / steps_total if steps_total else 0.0
        text = f"`{progress_bar(fraction)}` {fraction:.0%}"
        if self._first is None:
            # The first report comes after model loading; rate is measured from here on.
            self._first = (now, steps_done)
            return text
        started_at, started_steps = self._first
        elapsed, steps = now - started_at, steps_done - started_steps
        if steps > 0 and elapsed > 0:
            text += f" · about {format_seconds((steps_total - steps_done) * elapsed / steps)} left"
        return text


def is_dead_token_error(error: discord.HTTPException) -> bool:
    """The interaction token can no longer be used: expired (401/50027) or unknown (10015/10062/10008)."""
    return error.status == 401 or error.code in (50027, 10015, 10062, 10008)


class StatusMessage:
    """Coalesced, throttled edits of a job's public status message.

    The status message is the interaction's original response (the public "thinking…" of the defer).
    While the interaction token lives, edits go through it. Once the token is gone (15 minutes old, or
    never known again after a restart: tokens are not stored) the bot edits the same message through
    the channel, `PATCH /channels/{channel}/messages/{message}`: Discord lets a bot edit any
    non-ephemeral message it authored, and the author of an interaction response is the bot user.
    (Ephemeral responses could not be edited that way; status messages are public.)
    """

    def __init__(
        self,
        channel: discord.PartialMessageable,
        *,
        interaction: discord.Interaction | None = None,
        message_id: int | None = None,
        interval_s: float,
        on_first_edit: Callable[[int], object] | None = None,
        timeouts: DiscordTimeouts | None = None,
    ) -> None:
        self._channel = channel
        # How long one edit may go unanswered: a hung one holds the token's lock, and the result waits
        # on it. None: the bot-wide setting, read now rather than at import so that a test can shorten it.
        self.timeouts = timeouts or discord_faults.DISCORD_TIMEOUTS
        self._interaction = interaction
        self._throttler = (
            Throttler(
                rate_limit=1, period=interval_s, retry_interval=interval_s / THROTTLE_POLLS_PER_INTERVAL
            )
            if interval_s > 0
            else None
        )
        self._on_first_edit = on_first_edit
        self._latest: str | None = None
        self._shown: str | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._editing = False
        self._closing = False
        self.message_id = message_id
        # False once the message cannot be edited at all (deleted, or no token and no id): we stop trying.
        self.usable = interaction is not None or message_id is not None

    @property
    def via_token(self) -> bool:
        """Edits still go through the interaction token (so ephemeral followups to the member work too)."""
        return self._interaction is not None and not self._interaction.is_expired()

    def show(self, text: str) -> None:
        """Ask for the message to read `text` soon (replacing any edit not yet sent)."""
        if not self.usable:
            return
        if text == self._latest and (text == self._shown or self._changed.is_set() or self._editing):
            # Shown, or on its way. Every queued job is told its place whenever one joins the queue:
            # in a burst of commands, waking each job's edit loop for nothing would hold up the
            # acknowledgements of the commands still arriving.
            return
        self._latest = text
        self._changed.set()
        if self._task is None:
            self._task = asyncio.create_task(self._edit_loop(), name="status-message-edits")

    async def finish(self, text: str) -> None:
        """Stop the throttled edits and show a final text at once (best effort: never raises).

        The final text is the job's outcome (done, failed and why), so an edit that does not go
        through is tried again a couple of times; a progress edit is not worth that.
        """
        await self.close()
        for delay in (*FINAL_EDIT_RETRY_DELAYS_S, None):
            if not self.usable or text == self._shown:
                return
            try:
                await self._edit(text)
            except Exception:
                logger.exception("status message %s: the final edit failed", self.message_id)
            if delay is not None and self.usable and text != self._shown:
                await asyncio.sleep(delay)

    async def close(self) -> None:
        """Stop the edit loop, letting an edit already in flight complete; never raises."""
        task, self._task = self._task, None
        if task is None:
            return
        self._closing = True
        self._changed.set()
        if not self._editing:
            task.cancel()
        # Never cancel a request in flight: discord.py's webhook client sleeps out a rate limit
        # while holding the token's lock, and a cancellation there leaves that lock held for good.
        # (A hung one ends at its own timeout, which lets that sleep finish.)
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # it is our caller being cancelled, not the edit loop
        except Exception:
            logger.exception("status message %s: the edit loop failed", self.message_id)
        self._closing = False

    async def _edit_loop(self) -> None:
        while self.usable and not self._closing:
            await self._changed.wait()
            if self._throttler is not None:
                async with self._throttler:
                    pass
            if self._closing:
                return
            self._changed.clear()
            text = self._latest
            if text is not None and text != self._shown:
                self._editing = True
                try:
                    await self._edit(text)
                except Exception:
                    # Whatever broke this edit, the next text gets its chance.
                    logger.exception("status message %s: an edit failed", self.message_id)
                finally:
                    self._editing = False

    async def _edit(self, text: str) -> None:
        if self.via_token and await self._edit_through_token(text):
            return
        self._interaction = None  # expired or refused: the channel from now on
        if self.message_id is None:
            self.usable = False  # the token died before the message was ever edited: its id is unknown
            return
        try:
            message = self._channel.get_partial_message(self.message_id)
            await answer_within(self.timeouts.call_s, lambda: message.edit(content=text))
        except (discord.NotFound, discord.Forbidden) as error:
            # Deleted by a moderator, or the bot lost access to the channel: nothing left to update.
            logger.info("status message %s can no longer be edited: %s", self.message_id, error)
            self.usable = False
            return
        except discord.HTTPException as error:
            logger.warning("could not edit the status message: %s", error)
            return
        except NETWORK_ERRORS as error:
            logger.warning(
                "could not reach Discord to edit status message %s: %s",
                self.message_id,
                describe_fault(error),
            )
            return
        self._shown = text

    async def _edit_through_token(self, text: str) -> bool:
        """Edit the original response; False when the token can no longer be used."""
        assert self._interaction is not None
        try:
            interaction = self._interaction
            message = await answer_within(
                self.timeouts.call_s, lambda: interaction.edit_original_response(content=text)
            )
        except discord.HTTPException as error:
            if is_dead_token_error(error):
                return False
            logger.warning("could not edit the status message: %s", error)
            return True
        except NETWORK_ERRORS as error:
            # The token still works: the next edit tries it again.
            logger.warning("could not reach Discord to edit a status message: %s", describe_fault(error))
            return True
        self._shown = text
        if self.message_id is None:
            self.message_id = message.id
            if self._on_first_edit is not None:
                await self._record_message_id(message.id)
        return True

    async def _record_message_id(self, message_id: int) -> None:
        assert self._on_first_edit is not None
        try:
            outcome = self._on_first_edit(message_id)
            if asyncio.iscoroutine(outcome):
                await outcome
        except Exception:
            # Only a restart needs the id (to keep editing through the channel): not worth the job.
            logger.exception("status message %s: could not record its id", message_id)
