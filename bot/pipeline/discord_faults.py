"""Failures between the bot and Discord that are worth another try, and a bounded retry for them.

discord.py already waits out 429s and retries 5xx answers a few times, but a connection reset on
Linux (`aiohttp.ClientOSError`, errno 104: discord.py only retries the BSD and Windows numbers), a
server disconnect or a timeout reaches the caller as it is, and so does a 5xx or a 429 that
outlasted discord.py's own five tries. Those say nothing about the request itself: the same request may well
succeed a moment later. Anything else (403, 404, 413, a refused form) is Discord's answer and final.

A request that gets no answer at all is given up after a time that matches its size (`DiscordTimeouts`),
not aiohttp's 300 s: a hung edit would hold the interaction token's lock, and every later edit and the
result behind it, that long. Giving up is a transient fault like a reset.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import discord

logger = logging.getLogger(__name__)

T = TypeVar("T")

# aiohttp wraps socket errors (ClientOSError, ServerDisconnectedError, DNS failures); the builtins
# catch what escapes unwrapped (asyncio.TimeoutError is TimeoutError since Python 3.11). Not all of
# OSError: a missing file is no network fault.
NETWORK_ERRORS: tuple[type[Exception], ...] = (aiohttp.ClientError, ConnectionError, TimeoutError)
TRANSIENT_DISCORD_ERRORS: tuple[type[Exception], ...] = (*NETWORK_ERRORS, discord.DiscordServerError)
# How a request to Discord can end badly: Discord's answer (HTTPException) or no answer at all.
DISCORD_REQUEST_ERRORS: tuple[type[Exception], ...] = (discord.HTTPException, *NETWORK_ERRORS)


@dataclass(frozen=True)
class DiscordTimeouts:
    """How long the bot waits for Discord's answer to one request before it counts as lost."""

    call_s: float = 15.0  # an edit, a text message, a look-up: Discord answers these in well under a second
    # Uploads add their bytes' time on a slow uplink (2 Mbit/s): a 10 MiB result gets 55 s, 25 MiB 115 s.
    upload_bytes_per_s: float = 256 * 1024

    def for_upload(self, size_bytes: int) -> float:
        return self.call_s + size_bytes / self.upload_bytes_per_s


DISCORD_TIMEOUTS = DiscordTimeouts()


# Where discord.py waits, after Discord answered, for a rate-limit bucket to refill: the webhook
# client (interaction followups and edits) and the bot's own HTTP client.
_BUCKET_WAITS_AFTER_ANSWER = frozenset({"AsyncDeferredLock.__aexit__", "Ratelimit.__aexit__"})


class DiscordCallTimeout(TimeoutError):
    """Discord did not answer in time; the request may or may not have taken effect."""


async def answer_within(timeout_s: float, call: Callable[[], Awaitable[T]]) -> T:
    """Discord's answer to `call()`, or DiscordCallTimeout once `timeout_s` has passed without one.

    The request runs in a task of its own, so that at the deadline it can be left to finish when it
    already has its answer: discord.py's webhook client then sleeps out an exhausted rate-limit bucket
    while still holding the token's lock, and a cancellation in that sleep would leave the lock held
    for good. Otherwise it is cancelled, which closes the connection and frees the lock.
    """
    task: asyncio.Future[T] = asyncio.ensure_future(call())
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        await _stop(task)  # our caller gave up: so does the request, as it would without the task
        raise
    if not done and not await _stop(task):
        raise DiscordCallTimeout(f"Discord did not answer within {timeout_s:.0f} s")
    return task.result()


async def _stop(task: asyncio.Future[Any]) -> bool:
    """Cancel a request that has no answer yet (True when it finished after all), and wait for it."""
    if not _pacing_after_answer(task):
        task.cancel()
    try:
        await asyncio.wait({task})  # not cancellable by the same deadline again
    except asyncio.CancelledError:
        task.cancel()
        raise
    return not task.cancelled()


def _pacing_after_answer(task: asyncio.Future[Any]) -> bool:
    """The request has its answer and discord.py only waits out an exhausted rate-limit bucket."""
    awaiting = task.get_coro() if isinstance(task, asyncio.Task) else None
    while awaiting is not None:
        code = getattr(awaiting, "cr_code", None)
        if code is not None and code.co_qualname in _BUCKET_WAITS_AFTER_ANSWER:
            return True
        awaiting = getattr(awaiting, "cr_await", None)
    return False


def is_transient(error: BaseException) -> bool:
    """Worth another try: no answer, a 5xx, or a 429 that outlasted discord.py's own five tries.

    A 429 without a `Via` header comes from Cloudflare, not Discord (a ban in the making): never
    retried.
    """
    if isinstance(error, TRANSIENT_DISCORD_ERRORS):
        return True
    if isinstance(error, discord.HTTPException) and error.status == 429:
        headers = getattr(error.response, "headers", None) or {}
        return bool(headers.get("Via"))
    return False


def describe_fault(error: BaseException) -> str:
    """One line for the owner's log: the exception's type and text."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def retry_transient(attempt: Callable[[], Awaitable[T]], *, delays_s: Sequence[float], what: str) -> T:
    """Run `attempt`, again after each delay in `delays_s` while it fails transiently; then give up.

    The last transient error is raised once the delays are used up; any other error at once.
    """
    for number, delay in enumerate(delays_s, start=1):
        try:
            return await attempt()
        except DISCORD_REQUEST_ERRORS as error:
            if not is_transient(error):
                raise
            logger.warning(
                "%s: attempt %d failed (%s); trying again in %.0f s",
                what,
                number,
                describe_fault(error),
                delay,
            )
        await asyncio.sleep(delay)
    return await attempt()
