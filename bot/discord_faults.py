"""Failures between the bot and Discord that are worth another try, and a bounded retry for them.

discord.py already waits out 429s and retries 5xx answers a few times, but a connection reset on
Linux (`aiohttp.ClientOSError`, errno 104: discord.py only retries the BSD and Windows numbers), a
server disconnect or a timeout reaches the caller as it is, and so does a 5xx or a 429 that
outlasted discord.py's own five tries. Those say nothing about the request itself: the same request may well
succeed a moment later. Anything else (403, 404, 413, a refused form) is Discord's answer and final.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

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
