"""A bot big enough to need several gateway shards: members of servers on different shards each run
/generate and each gets their music posted in their own channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.app import MusicGenBot
from inference.backends.local import InferenceClient
from inference.settings import EngineSettings
from tests.bot.scenario_harness import (
    Server,
    add_server,
    musicgen_bot,
    posted_result,
    queued_job_id,
    run_command,
    scenario_config,
    stuck_jobs,
    wait_for_status,
    wav_seconds,
)
from tests.fake_discord import FakeDiscord

SHARDS = 3
SERVERS = 6


def shard_of(guild_id: int) -> int:
    """The shard Discord sends a guild's events to (its documented formula)."""
    return (guild_id >> 22) % SHARDS


@pytest_asyncio.fixture(scope="module")
async def sharded_discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(recommended_shards=SHARDS) as fake:
        yield fake


@pytest_asyncio.fixture(scope="module")
async def servers(sharded_discord: FakeDiscord) -> list[Server]:
    """Two servers on each shard. A guild's shard comes from its id's timestamp (milliseconds), so
    servers made in the same millisecond share a shard: more are made, a millisecond apart, until
    every shard has two (the others stay, as quiet servers)."""
    chosen: list[Server] = []
    for n in range(200):
        server = add_server(sharded_discord, f"Server {n}", ("ann",))
        if sum(shard_of(s.guild.id) == shard_of(server.guild.id) for s in chosen) < SERVERS // SHARDS:
            chosen.append(server)
        if len(chosen) == SERVERS:
            return chosen
        await asyncio.sleep(0.001)
    raise AssertionError("could not place two servers on every shard")


@pytest_asyncio.fixture(scope="module")
async def bot(
    sharded_discord: FakeDiscord,
    servers: list[Server],
    inference_client: InferenceClient,
    engine_settings: EngineSettings,
    module_data_dir: Path,
) -> AsyncIterator[MusicGenBot]:
    config = scenario_config(module_data_dir, engine_settings)
    async with musicgen_bot(sharded_discord, config, inference_client) as running:
        yield running


async def test_the_bot_runs_the_shards_discord_recommends_and_sees_every_server_on_its_shard(
    bot: MusicGenBot, sharded_discord: FakeDiscord, servers: list[Server]
) -> None:
    assert bot.shard_count == SHARDS
    sessions = sorted((s.shard_id, s.shard_count) for s in sharded_discord.gateway.live_sessions())
    assert sessions == [(shard, SHARDS) for shard in range(SHARDS)]
    # The servers of this test are spread over every shard.
    assert {shard_of(server.guild.id) for server in servers} == set(range(SHARDS))
    for server in servers:
        guild = bot.get_guild(server.guild.id)
        assert guild is not None and guild.shard_id == shard_of(server.guild.id)


async def test_members_on_every_shard_generate_and_each_gets_their_music_in_their_channel(
    bot: MusicGenBot, sharded_discord: FakeDiscord, servers: list[Server]
) -> None:
    fake = sharded_discord
    interactions = await asyncio.gather(
        *(
            run_command(
                fake,
                server["ann"],
                server.channel,
                "generate",
                prompt=f"{server.guild.name} theme",
                duration=1,
            )
            for server in servers
        )
    )
    job_ids = [await queued_job_id(interaction) for interaction in interactions]

    for job_id, interaction, server in zip(job_ids, interactions, servers, strict=True):
        result = await posted_result(fake, server.channel, job_id)
        assert wav_seconds(result.attachments[0].data) == pytest.approx(1.0, abs=0.05)
        assert result.embeds[0]["title"] == f"{server.guild.name} theme"
        status = await interaction.wait_for_final(lambda m: "is done" in m.content)
        assert f"Job #{job_id} is done" in status.content
        row = await wait_for_status(bot, job_id, "done")
        assert row["guild_id"] == server.guild.id and row["channel_id"] == server.channel.id
        assert row["result_message_id"] == result.id
    # Each server's channel holds its own result and no other server's.
    for job_id, server in zip(job_ids, servers, strict=True):
        footers = [
            e.get("footer", {}).get("text", "") for m in fake.messages(server.channel) for e in m.embeds
        ]
        assert [f.split()[1] for f in footers if f.startswith("Job #")] == [f"#{job_id}"]
    assert await stuck_jobs(bot) == []
