"""The bot with `[worker] backend = "ray"`: it starts its own Ray-backed inference client from the
config, members' /generate results are posted as with local workers, and a replica lost mid-job
costs the member nothing but a retry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import ray

from bot.app import MusicGenBot
from bot.config import WorkerOptions
from inference.backends.ray import RayInferenceClient
from inference.settings import EngineSettings
from tests.bot.scenario_harness import (
    Server,
    add_server,
    posted_result,
    queued_job_id,
    run_command,
    scenario_config,
    stuck_jobs,
    wait_for_status,
    wav_seconds,
)
from tests.fake_discord import FakeDiscord, running_bot
from tests.waiting import until

# Starting the replica (a Ray worker that imports torch) is part of the bot's start-up here.
BOT_READY_TIMEOUT_S = 240.0


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    return add_server(fake_discord, "Cluster", ("ann", "ben"))


@pytest_asyncio.fixture(scope="module")
async def bot(
    ray_cluster: None,
    fake_discord: FakeDiscord,
    server: Server,
    engine_settings: EngineSettings,
    module_data_dir: Path,
) -> AsyncIterator[MusicGenBot]:
    config = scenario_config(module_data_dir, engine_settings)
    worker = WorkerOptions(
        processes=1, job_retries=1, backend="ray", ray_address="", ray_num_gpus="auto", ray_num_cpus=1
    )
    config = config.model_copy(update={"worker": worker})
    # No client handed in: the bot builds the one its config names, and closes it.
    async with running_bot(fake_discord, MusicGenBot(config), ready_timeout=BOT_READY_TIMEOUT_S) as running:
        yield running


async def test_members_generate_on_ray_replicas_and_their_music_is_posted(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server
) -> None:
    assert isinstance(bot.inference, RayInferenceClient)
    interactions = await asyncio.gather(
        *(
            run_command(
                fake_discord,
                server[name],
                server.channel,
                "generate",
                prompt=f"{name}'s tune",
                duration=1,
                seed=seed,
            )
            for seed, name in enumerate(("ann", "ben"))
        )
    )
    job_ids = [await queued_job_id(interaction) for interaction in interactions]

    for job_id, interaction in zip(job_ids, interactions, strict=True):
        result = await posted_result(fake_discord, server.channel, job_id, timeout=120)
        assert wav_seconds(result.attachments[0].data) == pytest.approx(1.0, abs=0.05)
        status = await interaction.wait_for_final(lambda m: "is done" in m.content, 60)
        assert f"Job #{job_id} is done" in status.content
        row = await wait_for_status(bot, job_id, "done")
        # The replica sent the bytes back; the file lives in the bot's own data folder.
        assert Path(row["output_path"]).parent == bot.outputs_dir
        assert Path(row["output_path"]).read_bytes()
    assert await stuck_jobs(bot) == []


async def test_a_job_sent_while_a_replica_runs_a_batch_joins_it(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server
) -> None:
    assert isinstance(bot.inference, RayInferenceClient) and bot.dispatcher.continuous_batching
    long = await run_command(
        fake_discord, server["ann"], server.channel, "generate", prompt="tide", duration=20
    )
    long_id = await queued_job_id(long)
    await until(lambda: bot.dispatcher.progress_of(long_id) is not None, "the long job is decoding")
    short = await run_command(
        fake_discord, server["ben"], server.channel, "generate", prompt="gull", duration=1
    )
    short_id = await queued_job_id(short)

    short_result = await posted_result(fake_discord, server.channel, short_id, timeout=120)
    # Posted while the long job was still decoding: it ran inside the long one's batch (one replica)
    # and left it at its own end. Waiting for the batch to end, it would have started after 100 %.
    long_progress = bot.dispatcher.progress_of(long_id)
    assert long_progress is not None and "100%" not in long_progress, long_progress
    assert wav_seconds(short_result.attachments[0].data) == pytest.approx(1.0, abs=0.05)
    long_result = await posted_result(fake_discord, server.channel, long_id, timeout=120)
    assert wav_seconds(long_result.attachments[0].data) == pytest.approx(20.0, abs=0.05)
    rows = [await wait_for_status(bot, job_id, "done") for job_id in (long_id, short_id)]
    assert [row["attempts"] for row in rows] == [1, 1]
    assert await stuck_jobs(bot) == []


async def test_a_replica_lost_mid_job_is_replaced_and_the_job_is_retried_and_delivered(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server
) -> None:
    assert isinstance(bot.inference, RayInferenceClient)
    (old_replica,) = bot.inference.replica_actors
    interaction = await run_command(
        fake_discord, server["ann"], server.channel, "generate", prompt="night drive", duration=10
    )
    job_id = await queued_job_id(interaction)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while bot.dispatcher.progress_of(job_id) is None:
        assert loop.time() < deadline, "the job never started generating"
        await asyncio.sleep(0.01)
    ray.kill(old_replica)  # a node lost, or the OOM killer

    result = await posted_result(fake_discord, server.channel, job_id, timeout=180)
    assert wav_seconds(result.attachments[0].data) == pytest.approx(10.0, abs=0.05)
    row = await wait_for_status(bot, job_id, "done", timeout=60)
    assert row["attempts"] == 2  # the crash used the job's one retry
    assert bot.inference.replica_actors != [old_replica]
    assert await stuck_jobs(bot) == []
