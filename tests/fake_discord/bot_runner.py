"""Running a real discord.py client against a FakeDiscord inside a test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import discord

    from .server import FakeDiscord

ClientT = TypeVar("ClientT", bound="discord.Client")


async def _no_identify_delay(shard_id: int | None, *, initial: bool = False) -> None:
    """discord.py sleeps 5 s before every non-initial IDENTIFY; the fake has no identify rate limit."""


@contextlib.asynccontextmanager
async def running_bot(
    fake: FakeDiscord,
    client: ClientT,
    *,
    ready_timeout: float = 20.0,
    guild_ready_timeout: float = 0.05,
    skip_identify_delay: bool = True,
) -> AsyncIterator[ClientT]:
    """Start ``client`` (Client/Bot/AutoShardedBot) against ``fake``, wait for ``on_ready``, close it on exit.

    discord.py waits ``guild_ready_timeout`` (2 s) after the last GUILD_CREATE before ``on_ready``; the
    fake sends them all at once, so it is lowered. ``setup_hook`` runs as usual (after login, before
    the gateway connects), so a bot that syncs its command tree there has done so when this yields.
    """
    client._connection.guild_ready_timeout = min(client._connection.guild_ready_timeout, guild_ready_timeout)
    if skip_identify_delay:
        client.before_identify_hook = _no_identify_delay  # type: ignore[method-assign]
    with fake.patched_discord():
        task: asyncio.Task[Any] = asyncio.create_task(client.start(fake.bot_token), name="fake-discord-bot")
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + ready_timeout
            while not client.is_ready():
                if task.done():
                    task.result()  # re-raise why the bot stopped
                    raise RuntimeError("the bot stopped before it became ready")
                if loop.time() > deadline:
                    raise TimeoutError(f"the bot was not ready within {ready_timeout}s")
                await asyncio.sleep(0.01)
            yield client
        except BaseException:
            await _stop(client, task, quiet=True)
            raise
        await _stop(client, task, quiet=False)


async def _stop(client: discord.Client, task: asyncio.Task[Any], *, quiet: bool) -> None:
    """Close the client cleanly (gateway close 1000) and collect its task; ``quiet`` hides its errors."""
    try:
        if not client.is_closed():
            await client.close()
        await asyncio.wait_for(task, 10)
    except asyncio.CancelledError:
        pass
    except Exception:
        if not quiet:
            raise
