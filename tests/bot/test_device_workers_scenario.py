"""A bot configured with two worker devices starts a worker on each and runs jobs on both at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.app import MusicGenBot
from bot.config import WorkerOptions
from inference.backends.local import InferenceClient
from inference.settings import EngineSettings
from tests.bot.scenario_harness import (
    add_server,
    posted_result,
    queued_job_id,
    run_command,
    scenario_config,
    stuck_jobs,
    wait_for_status,
)
from tests.fake_discord import FakeDiscord, running_bot


async def test_two_cpu_workers_from_the_config_each_run_a_job_of_two_servers_at_once(
    fake_discord: FakeDiscord, engine_settings: EngineSettings, tmp_path: Path
) -> None:
    config = scenario_config(tmp_path, engine_settings).model_copy(
        update={"worker": WorkerOptions(devices=["cpu", "cpu"], max_batch_size=1, batch_wait_s=0)}
    )
    servers = [add_server(fake_discord, name, ("ann",)) for name in ("Left", "Right")]
    async with running_bot(fake_discord, MusicGenBot(config)) as bot:
        assert isinstance(bot.inference, InferenceClient)
        workers = bot.inference.workers
        assert [(w.device, w.ready_device) for w in workers] == [("cpu", "cpu"), ("cpu", "cpu")]
        assert bot.dispatcher.worker_slots == 2

        bot.dispatcher.pause()  # both commands are queued before either starts
        try:
            interactions = await asyncio.gather(
                *(
                    run_command(
                        fake_discord, s["ann"], s.channel, "generate", prompt=s.guild.name, duration=1
                    )
                    for s in servers
                )
            )
            job_ids = [await queued_job_id(interaction) for interaction in interactions]
        finally:
            bot.dispatcher.resume()

        for job_id, server in zip(job_ids, servers, strict=True):
            await posted_result(fake_discord, server.channel, job_id)
        rows = [await wait_for_status(bot, job_id, "done") for job_id in job_ids]
        # Batches of one, two workers: both jobs ran at the same time, one on each worker.
        assert max(row["started_at"] for row in rows) < min(row["finished_at"] for row in rows)
        assert [w.jobs_run for w in bot.inference.workers] == [1, 1]
        assert await stuck_jobs(bot) == []
