"""A soak: 100 jobs from four servers while the worker is killed and Discord throws 429s, 5xx and resets.

Afterwards every job is done (its music in the channel) or failed with a notice its requester can
see; none is stuck or lost. The counts are printed (`pytest -s` shows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections import Counter
from pathlib import Path

import pytest

from bot.app import MusicGenBot
from inference.backends.local import InferenceClient
from inference.settings import EngineSettings
from tests.bot.fault_helpers import results_of
from tests.bot.scenario_harness import (
    Server,
    add_server,
    musicgen_bot,
    run_command,
    scenario_config,
)
from tests.fake_discord import FakeDiscord, FakeInteraction

# The worker is killed five times.
pytestmark = pytest.mark.timeout(900)

JOBS = 100
WORKER_KILLS = 5


async def kill_the_worker_now_and_then(client: InferenceClient, kills: list[int], rng: random.Random) -> None:
    """SIGKILL the worker while it runs a job, `WORKER_KILLS` times, at random moments."""
    while len(kills) < WORKER_KILLS:
        await asyncio.sleep(rng.uniform(1.0, 4.0))
        while client.busy_workers == 0:
            await asyncio.sleep(0.02)
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        if client.busy_workers == 1:
            (pid,) = client.worker_pids
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                kills.append(pid)


def arm_discord_faults(fake: FakeDiscord) -> None:
    fake.inject_rate_limit("POST", "/webhooks/*/*", retry_after=0.2, times=10)  # result uploads
    fake.inject_rate_limit("*", "/webhooks/*", retry_after=0.1, is_global=True, times=5)
    fake.inject_server_error("POST", "/webhooks/*/*", status=502, times=3)
    fake.inject_connection_drop("POST", "/webhooks/*/*", times=8)
    fake.inject_connection_drop("PATCH", "/webhooks/*/*/messages/*", times=15)  # progress edits
    fake.inject_connection_drop("POST", "/webhooks/*/*", times=3, after_handling=True)


async def test_a_hundred_jobs_through_worker_kills_and_discord_faults_all_end_done_or_told(
    fake_discord: FakeDiscord,
    inference_client: InferenceClient,
    engine_settings: EngineSettings,
    tmp_path: Path,
) -> None:
    fake, rng = fake_discord, random.Random(8)
    servers: list[Server] = [
        add_server(fake, f"Soak {s}", tuple(f"member{s}{m}" for m in range(5))) for s in range(4)
    ]
    members = [(server, name) for server in servers for name in server.members]
    config = scenario_config(
        tmp_path / "data",
        engine_settings,
        max_pending_per_user=5,
        max_pending_per_guild=JOBS,
        progress_interval_s=1.0,
    )
    kills: list[int] = []
    async with musicgen_bot(fake, config, inference_client) as bot:
        bot.dispatcher.poster.retry_delays_s = (0.2, 0.5, 1.0)
        arm_discord_faults(fake)
        killer = asyncio.create_task(kill_the_worker_now_and_then(inference_client, kills, rng))
        interactions: dict[int, FakeInteraction] = {}
        try:
            for number in range(JOBS):
                server, name = members[number % len(members)]
                interaction = await run_command(
                    fake, server[name], server.channel, "generate", prompt=f"soak {number}", duration=1
                )
                interactions[await job_of(bot, interaction)] = interaction
            await until_no_job_is_pending(bot, timeout_s=720)
        finally:
            killer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await killer
        statuses = await job_statuses(bot)

        counts = Counter(statuses.values())
        async with bot.database.connection.execute(
            "SELECT id, error FROM jobs WHERE status = 'failed'"
        ) as cursor:
            errors: dict[int, str] = {row[0]: row[1] for row in await cursor.fetchall()}
        duplicates = 0
        for job_id, status in statuses.items():
            server = next(s for s in servers if s.channel is interactions[job_id].channel)
            posted = results_of(fake, server, job_id)
            duplicates += max(0, len(posted) - 1)
            if status == "done":
                assert len(posted) >= 1, f"job {job_id} is done but its music is not in the channel"
                continue
            assert status == "failed"
            if posted:  # only when an upload's answer was lost after Discord had made the message
                assert errors[job_id].startswith("could not post the result"), errors[job_id]
            status_message = interactions[job_id].original_message
            assert status_message is not None and status_message.content.startswith("❌"), (
                f"job {job_id} failed without telling its requester: {status_message!r}"
            )
        for job_id, error in errors.items():
            print(f"\nsoak: job {job_id} failed: {error}")
        print(
            f"\nsoak: {JOBS} jobs, {counts['done']} done, {counts['failed']} failed with a notice, "
            f"{duplicates} posted twice; worker killed {len(kills)} times; faults served "
            f"{sum(f.served for f in fake.faults.armed)}; invalid requests in 10 min "
            f"{fake.invalid_requests_within(600)}"
        )
    assert len(statuses) == JOBS and set(counts) <= {"done", "failed"}
    assert len(kills) == WORKER_KILLS
    # A job fails when its worker is killed twice, or when all four of its upload attempts fail: by
    # 5 429s in a row (discord.py's five tries), or one reset each. 15 429s and 11 resets are armed.
    assert counts["failed"] <= WORKER_KILLS // 2 + (15 // 5 + 11) // 4
    # A response lost after Discord made the followup is the one case a retry can post twice
    # (webhooks take no nonce): at most the three injected ones.
    assert duplicates <= 3
    assert fake.invalid_requests_within(600) < 500  # Discord bans at 10,000 per 10 minutes


async def job_of(bot: MusicGenBot, interaction: FakeInteraction, timeout_s: float = 20) -> int:
    """The job a /generate created (read from SQLite: its status message may not have said yet)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        async with bot.database.connection.execute(
            "SELECT id FROM jobs WHERE interaction_id = ?", (interaction.id,)
        ) as cursor:
            row = await cursor.fetchone()
        if row is not None:
            return int(row[0])
        assert loop.time() < deadline, f"no job for interaction {interaction.id}"
        await asyncio.sleep(0.05)


async def job_statuses(bot: MusicGenBot) -> dict[int, str]:
    async with bot.database.connection.execute("SELECT id, status FROM jobs") as cursor:
        return {row[0]: row[1] for row in await cursor.fetchall()}


async def until_no_job_is_pending(bot: MusicGenBot, *, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while any(status in ("queued", "running") for status in (await job_statuses(bot)).values()):
        assert loop.time() < deadline, f"jobs still pending: {await job_statuses(bot)}"
        await asyncio.sleep(0.5)
