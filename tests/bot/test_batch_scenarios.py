"""Members of several servers generate at once: their jobs share batches on the worker, each gets its
own music, and a worker crash under a batch costs nobody their retry."""

from __future__ import annotations

import asyncio
import os
import signal
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
    job_row,
    musicgen_bot,
    posted_result,
    queued_job_id,
    run_command,
    scenario_config,
    stuck_jobs,
    wait_for_status,
    wav_seconds,
)
from tests.fake_discord import FakeDiscord, FakeInteraction
from tests.waiting import until

# A worker is killed under a batch, and the worker's batch counts are read.

SERVER_NAMES = ("North", "South", "East", "West")
MEMBER_NAMES = ("ann", "ben")


@pytest_asyncio.fixture(scope="module")
async def servers(fake_discord: FakeDiscord) -> list[Server]:
    return [add_server(fake_discord, name, MEMBER_NAMES) for name in SERVER_NAMES]


@pytest_asyncio.fixture(scope="module")
async def bot(
    fake_discord: FakeDiscord,
    servers: list[Server],
    inference_client: InferenceClient,
    engine_settings: EngineSettings,
    module_data_dir: Path,
) -> AsyncIterator[MusicGenBot]:
    config = scenario_config(module_data_dir, engine_settings)
    assert config.worker.max_batch_size == 4  # the default
    async with musicgen_bot(fake_discord, config, inference_client) as running:
        yield running


async def everyone_generates(
    fake: FakeDiscord, servers: list[Server], *, duration: int
) -> list[tuple[int, FakeInteraction, Server]]:
    """Every member of every server runs /generate at the same moment; returns (job id, interaction, server)."""
    asked = [(server, member) for member in MEMBER_NAMES for server in servers]
    interactions = await asyncio.gather(
        *(
            run_command(
                fake,
                server[member],
                server.channel,
                "generate",
                prompt=f"{server.guild.name} {member}",
                duration=duration,
                seed=index,
            )
            for index, (server, member) in enumerate(asked)
        )
    )
    return [
        (await queued_job_id(interaction), interaction, server)
        for interaction, (server, _) in zip(interactions, asked, strict=True)
    ]


async def test_members_of_four_servers_generate_at_once_and_everyone_gets_their_own_music(
    bot: MusicGenBot, fake_discord: FakeDiscord, servers: list[Server], inference_client: InferenceClient
) -> None:
    fake = fake_discord
    (worker_before,) = inference_client.workers
    bot.dispatcher.pause()  # everyone's command is queued before the first batch forms
    try:
        jobs = await everyone_generates(fake, servers, duration=1)
    finally:
        bot.dispatcher.resume()

    for job_id, interaction, server in jobs:
        result = await posted_result(fake, server.channel, job_id)
        assert wav_seconds(result.attachments[0].data) == pytest.approx(1.0, abs=0.05)
        assert result.embeds[0]["title"] == (await job_row(bot, job_id))["prompt"]
        status = await interaction.wait_for_final(lambda m: "is done" in m.content)
        assert f"Job #{job_id} is done" in status.content
    rows = [await wait_for_status(bot, job_id, "done") for job_id, _, _ in jobs]
    assert all(row["attempts"] == 1 and row["error"] is None for row in rows)
    assert len({Path(row["output_path"]).read_bytes() for row in rows}) == len(rows)  # each its own music
    assert await stuck_jobs(bot) == []

    # Eight jobs, batches of four: the first batch is one job of every server (the round-robin),
    # all running together (each started before any of them finished), then the second four. The
    # first four end in the same step, so the second four cannot join them: they are a batch of their own.
    by_start = sorted(rows, key=lambda row: row["started_at"])
    first, second = by_start[:4], by_start[4:]
    assert {row["guild_id"] for row in first} == {s.guild.id for s in servers}
    assert max(row["started_at"] for row in first) < min(row["finished_at"] for row in first)
    assert max(row["started_at"] for row in second) < min(row["finished_at"] for row in second)
    (worker_after,) = inference_client.workers
    assert (worker_after.batches_run, worker_after.jobs_run) == (
        worker_before.batches_run + 2,
        worker_before.jobs_run + 8,
    )


async def _kill_worker_while_generating(
    bot: MusicGenBot, client: InferenceClient, job_ids: list[int]
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while all(bot.dispatcher.progress_of(job_id) is None for job_id in job_ids):
        assert loop.time() < deadline, "the batch never started generating"
        await asyncio.sleep(0.01)
    for pid in client.worker_pids:
        os.kill(pid, signal.SIGKILL)


async def test_a_worker_killed_under_a_batch_retries_each_job_alone_and_all_are_delivered(
    bot: MusicGenBot, fake_discord: FakeDiscord, servers: list[Server], inference_client: InferenceClient
) -> None:
    fake = fake_discord
    bot.dispatcher.pause()
    try:
        jobs = [
            (
                await queued_job_id(
                    interaction := await run_command(
                        fake, server["ann"], server.channel, "generate", prompt="night drive", duration=10
                    )
                ),
                interaction,
            )
            for server in servers[:3]
        ]
    finally:
        bot.dispatcher.resume()
    job_ids = [job_id for job_id, _ in jobs]
    await _kill_worker_while_generating(bot, inference_client, job_ids)

    for (job_id, interaction), server in zip(jobs, servers[:3], strict=True):
        result = await posted_result(fake, server.channel, job_id)
        assert wav_seconds(result.attachments[0].data) == pytest.approx(10.0, abs=0.05)
        status = await interaction.wait_for_final(lambda m: "is done" in m.content)
        # The member was told why their job started over.
        assert any(
            "trying again on its own" in version.content or "running alone now" in version.content
            for version in status.history
        )
    rows = [await wait_for_status(bot, job_id, "done") for job_id in job_ids]
    # The crash under the batch is not counted against anyone (each keeps its retry), and the jobs
    # ran again one at a time: three batches of one on the new worker, nobody joining them.
    assert [row["attempts"] for row in rows] == [1, 1, 1]
    (replacement,) = inference_client.workers
    assert (replacement.batches_run, replacement.jobs_run) == (3, 3)
    assert await stuck_jobs(bot) == []


async def _generate(
    fake: FakeDiscord, server: Server, member: str, prompt: str, duration: int
) -> tuple[int, FakeInteraction]:
    interaction = await run_command(
        fake, server[member], server.channel, "generate", prompt=prompt, duration=duration
    )
    return await queued_job_id(interaction), interaction


async def test_a_job_sent_while_a_batch_runs_joins_it_and_is_posted_as_soon_as_it_is_made(
    bot: MusicGenBot, fake_discord: FakeDiscord, servers: list[Server], inference_client: InferenceClient
) -> None:
    fake, north, south = fake_discord, servers[0], servers[1]
    (before,) = inference_client.workers
    long_id, _ = await _generate(fake, north, "ann", "slow river at dusk", duration=10)
    await until(lambda: bot.dispatcher.progress_of(long_id) is not None, "the long job is decoding")
    short_id, short_interaction = await _generate(fake, south, "ben", "a bird call", duration=1)

    short_result = await posted_result(fake, south.channel, short_id)
    assert wav_seconds(short_result.attachments[0].data) == pytest.approx(1.0, abs=0.05)
    status = await short_interaction.wait_for_final(lambda m: "is done" in m.content)
    assert f"Job #{short_id} is done" in status.content
    long_result = await posted_result(fake, north.channel, long_id)
    assert wav_seconds(long_result.attachments[0].data) == pytest.approx(10.0, abs=0.05)
    rows = [await wait_for_status(bot, job_id, "done") for job_id in (long_id, short_id)]
    assert [row["attempts"] for row in rows] == [1, 1]
    # One batch on the one worker: the short job joined the long one's and left it at its own end.
    (after,) = inference_client.workers
    assert (after.batches_run, after.jobs_run) == (before.batches_run + 1, before.jobs_run + 2)

    # With continuous batching off, the same sequence is two batches on the one worker: the short
    # job waits until the long one is made.
    bot.dispatcher.continuous_batching = False
    try:
        long_id, _ = await _generate(fake, north, "ann", "slow river at night", duration=10)
        await until(lambda: bot.dispatcher.progress_of(long_id) is not None, "the long job is decoding")
        short_id, _ = await _generate(fake, south, "ben", "another bird call", duration=1)
        for job_id in (long_id, short_id):
            await wait_for_status(bot, job_id, "done")
    finally:
        bot.dispatcher.continuous_batching = True
    (last,) = inference_client.workers
    assert (last.batches_run, last.jobs_run) == (after.batches_run + 2, after.jobs_run + 2)
    assert await stuck_jobs(bot) == []


async def _busy_database(bot: MusicGenBot) -> int:
    """A query that keeps the bot's database connection busy for a while (seconds), as a long
    history lookup or a slow disk would."""
    sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000000) SELECT count(*) FROM c"
    async with bot.database.connection.execute(sql) as cursor:
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_generate_is_acknowledged_without_waiting_for_the_database(
    bot: MusicGenBot, fake_discord: FakeDiscord, servers: list[Server]
) -> None:
    server = servers[0]
    busy = asyncio.create_task(_busy_database(bot))
    await asyncio.sleep(0)  # the query is on the connection before the command arrives
    interaction = await run_command(
        fake_discord, server["ben"], server.channel, "generate", prompt="busy evening", duration=1
    )
    # Before the acknowledgement: the default model and the caps are in memory, and the gates read on
    # their own connection, which never waits behind another query.
    assert interaction.response_type == 5
    assert not busy.done(), "the acknowledgement waited behind the database"
    assert await busy == 10_000_000
    job_id = await queued_job_id(interaction)
    row = await wait_for_status(bot, job_id, "done")
    assert row["model_version"] == "small"
