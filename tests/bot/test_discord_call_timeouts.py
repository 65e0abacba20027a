"""Requests to Discord that get no answer are given up after a time that matches their size.

Real discord.py against the fake Discord: a hung edit through an interaction token is given up and
frees the token's lock, and an edit that has its answer but waits out a rate-limit bucket is let
finish (cancelling it there would leave the token's lock held for good).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import discord
import pytest
from discord.ext import commands

from bot.pipeline.discord_faults import DiscordCallTimeout, DiscordTimeouts, answer_within, is_transient
from tests.fake_discord import FakeDiscord, FakeInteraction, running_bot

pytestmark = pytest.mark.timeout(60)

TOKEN_EDITS = "/webhooks/*/*/messages/*"


class DeferringBot(commands.Bot):
    """Defers /work publicly and keeps the interaction, as the bot does for a job's status message."""

    def __init__(self) -> None:
        super().__init__(command_prefix=commands.when_mentioned, intents=discord.Intents.default())
        self.deferred: asyncio.Queue[discord.Interaction] = asyncio.Queue()

        @self.tree.command(description="Start some work")
        async def work(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True)
            await self.deferred.put(interaction)


@dataclass
class Deferred:
    fake: FakeDiscord
    seen_by_member: FakeInteraction
    interaction: discord.Interaction

    async def edit(self, text: str, timeout_s: float) -> discord.InteractionMessage:
        interaction = self.interaction
        return await answer_within(timeout_s, lambda: interaction.edit_original_response(content=text))


@pytest.fixture
async def deferred() -> AsyncIterator[Deferred]:
    async with FakeDiscord() as fake:
        guild = fake.add_guild("Slow Line")
        channel = fake.add_channel(guild, "music")
        alice = fake.add_member(guild, "alice")
        bot = DeferringBot()
        async with running_bot(fake, bot):
            await bot.tree.sync()
            seen = await fake.invoke_slash_command(alice, channel, "work")
            interaction = await asyncio.wait_for(bot.deferred.get(), 10)
            yield Deferred(fake, seen, interaction)
        assert fake.unhandled_requests == []


def test_an_upload_gets_the_time_its_bytes_need_on_a_slow_uplink() -> None:
    timeouts = DiscordTimeouts()
    assert timeouts.call_s == pytest.approx(15)
    assert timeouts.for_upload(10 * 1024 * 1024) == pytest.approx(55)  # a 10 MiB result
    assert timeouts.for_upload(25 * 1024 * 1024) == pytest.approx(115)


async def test_a_hung_edit_is_given_up_and_the_next_edit_through_the_token_goes_through(
    deferred: Deferred,
) -> None:
    hang = deferred.fake.inject_hang("PATCH", TOKEN_EDITS)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DiscordCallTimeout) as given_up:
        await deferred.edit("queued", timeout_s=0.5)
    assert hang.served == 1 and loop.time() - started < 3
    assert is_transient(given_up.value)  # retried like a reset
    edited = await deferred.edit("running", timeout_s=5)  # the token's lock is free: no wait
    assert edited.content == "running"
    assert loop.time() - started < 5
    message = deferred.seen_by_member.original_message
    assert message is not None and message.content == "running"


async def test_an_edit_waiting_out_the_rate_limit_after_its_answer_is_let_finish(deferred: Deferred) -> None:
    # The fake, like Discord, lets a token make 5 edits in 2 s; discord.py sleeps out the rest of the
    # window after the fifth answer, holding the token's lock.
    for number in range(1, 5):
        await deferred.edit(f"edit {number}", timeout_s=5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    fifth = asyncio.create_task(deferred.edit("edit 5", timeout_s=0.8))
    sixth = asyncio.create_task(deferred.edit("edit 6", timeout_s=5))  # waits for the token's lock
    assert (await fifth).content == "edit 5"
    assert loop.time() - started > 0.8  # it outlived its deadline, waiting for the bucket
    assert (await sixth).content == "edit 6"  # the lock was released after the wait
