"""Commands sent moments apart still share a batch: a free worker waits briefly for companions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from bot.app import MusicGenBot
from bot.config import WorkerOptions
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
    wait_for_status,
)
from tests.fake_discord import FakeDiscord


@pytest_asyncio.fixture(scope="module")
async def servers(fake_discord: FakeDiscord) -> list[Server]:
    return [add_server(fake_discord, name, ("dana",)) for name in ("Attic", "Basement", "Cellar")]


@pytest_asyncio.fixture(scope="module")
async def bot(
    fake_discord: FakeDiscord,
    inference_client: InferenceClient,
    engine_settings: EngineSettings,
    module_data_dir: Path,
) -> AsyncIterator[MusicGenBot]:
    config = scenario_config(module_data_dir, engine_settings)
    # A wait far longer than the commands take, so the test does not depend on the machine's speed:
    # the batch starts as soon as it is full.
    config = config.model_copy(
        update={"worker": WorkerOptions(processes=1, job_retries=1, max_batch_size=3, batch_wait_s=600)}
    )
    async with musicgen_bot(fake_discord, config, inference_client) as running:
        yield running


async def test_jobs_sent_one_after_another_to_an_idle_worker_run_as_one_batch(
    bot: MusicGenBot, fake_discord: FakeDiscord, servers: list[Server]
) -> None:
    fake = fake_discord
    jobs: list[tuple[int, Server]] = []
    for server in servers:  # each command is queued before the next is sent; nothing is paused
        interaction = await run_command(
            fake, server["dana"], server.channel, "generate", prompt="hum", duration=1
        )
        jobs.append((await queued_job_id(interaction), server))
    for job_id, server in jobs:
        await posted_result(fake, server.channel, job_id)
    rows = [await wait_for_status(bot, job_id, "done") for job_id, _ in jobs]
    # The first job did not start alone: all three were running together.
    assert max(row["started_at"] for row in rows) < min(row["finished_at"] for row in rows)
