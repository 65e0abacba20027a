"""The bot's own machinery fails while members make music: the queue holds, and every job completes.

The database is locked for real by another connection holding SQLite's write lock (as a backup
tool or a second process would), so the bot's writes get "database is locked" after its busy
timeout, exactly as in production.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_asyncio

from bot.app import MusicGenBot
from bot.pipeline.scheduler import ScheduledJob
from inference.backends.local import InferenceClient
from inference.settings import EngineSettings
from tests.bot.fault_helpers import delivered_once, generate
from tests.bot.scenario_harness import (
    Server,
    add_server,
    job_count,
    musicgen_bot,
    private_reply,
    queued_job_id,
    run_command,
    scenario_config,
    stuck_jobs,
    wait_for_status,
)
from tests.fake_discord import FakeDiscord
from tests.waiting import until


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    return add_server(fake_discord, "Old laptop", ("alice", "bob", "carol"))


@pytest_asyncio.fixture(scope="module")
async def bot(
    fake_discord: FakeDiscord,
    server: Server,
    inference_client: InferenceClient,
    engine_settings: EngineSettings,
    module_data_dir: Path,
) -> AsyncIterator[MusicGenBot]:
    config = scenario_config(module_data_dir, engine_settings)
    async with musicgen_bot(fake_discord, config, inference_client) as running:
        running.dispatcher.store.gate.delays_s = (0.2, 0.5)  # the same retries, sooner (busy wait is 5 s)
        yield running


@pytest.fixture(autouse=True)
def no_fault_left_armed(fake_discord: FakeDiscord) -> Iterator[None]:
    yield
    fake_discord.faults.clear()


@asynccontextmanager
async def database_locked(database: Path) -> AsyncIterator[sqlite3.Connection]:
    """Another process's connection holding the database's write lock until the block ends.

    Taken in a thread: the bot may be between a write and its commit, and must get to the commit.
    """
    locker = sqlite3.connect(database, timeout=10, isolation_level=None, check_same_thread=False)
    try:
        await asyncio.to_thread(locker.execute, "BEGIN EXCLUSIVE")
        yield locker
        locker.execute("COMMIT")
    finally:
        locker.close()


def logged(caplog: pytest.LogCaptureFixture, level: int, text: str) -> bool:
    return any(record.levelno == level and text in record.getMessage() for record in caplog.records)


@asynccontextmanager
async def members_wait(bot: MusicGenBot, *, patience_s: float) -> AsyncIterator[None]:
    """A member's command waits `patience_s` for the database, and SQLite's own busy wait is 0.2 s
    (not 5 s), so a try that meets the lock is refused sooner: the same steps, quicker."""
    gate, connection = bot.dispatcher.store.gate, bot.database.connection
    patience_before = gate.member_patience_s
    gate.member_patience_s = patience_s
    await connection.execute("PRAGMA busy_timeout = 200")
    try:
        yield
    finally:
        await connection.execute("PRAGMA busy_timeout = 5000")
        gate.member_patience_s = patience_before


async def test_a_locked_database_holds_the_queue_and_every_job_completes_once_it_is_free(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    fake, gate = fake_discord, bot.dispatcher.store.gate
    bot.dispatcher.pause()
    try:
        jobs = [
            (await generate(fake, server, f"{member}'s song", member=member))[0]
            for member in ("alice", "bob", "carol")
        ]
        async with database_locked(bot.config.database_path) as locker:
            bot.dispatcher.resume()
            await until(lambda: not gate.writable)
            assert logged(caplog, logging.ERROR, "STORAGE FAULT")
            await asyncio.sleep(6)  # more than one busy timeout: the write is refused again, and waits on
            statuses = locker.execute(f"SELECT status FROM jobs WHERE id IN {tuple(jobs)}").fetchall()
            assert statuses == [("queued",)] * 3  # nobody's job was failed or dropped
            # ... and each is still the scheduler's: in line, or in the batch waiting for its first write.
            assert all(bot.scheduler.contains(job) or bot.scheduler.is_running(job) for job in jobs)
    finally:
        bot.dispatcher.resume()

    for job_id in jobs:
        await delivered_once(bot, fake, server, job_id)
        row = await wait_for_status(bot, job_id, "done")
        assert row["attempts"] == 1
    assert gate.writable and logged(caplog, logging.WARNING, "storage recovered")
    assert await stuck_jobs(bot) == []


async def test_a_database_locked_when_the_music_is_posted_still_records_it_done_once(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    fake, gate = fake_discord, bot.dispatcher.store.gate
    # A 429 on the upload holds the job between the music being made and its row being marked done.
    fake.inject_rate_limit("POST", "/webhooks/*/*", retry_after=1.0)
    job_id, _ = await generate(fake, server, "made while the disk hiccups")
    uploads = "/webhooks/{application_id}/{token}"
    await until(lambda: any(r.status == 429 for r in fake.requests_to("POST", uploads)))
    async with database_locked(bot.config.database_path) as locker:
        await until(lambda: not gate.writable)  # marking it done met the lock
        (status,) = locker.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        assert status == "running"
    await delivered_once(bot, fake, server, job_id)
    assert logged(caplog, logging.ERROR, "STORAGE FAULT")
    assert await stuck_jobs(bot) == []


async def test_a_dispatcher_loop_that_dies_is_restarted_and_the_queue_goes_on(
    bot: MusicGenBot,
    fake_discord: FakeDiscord,
    server: Server,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, scheduler = fake_discord, bot.scheduler
    real_next_batch = scheduler.next_batch
    crashes: list[str] = []

    def next_batch_with_a_bug() -> list[ScheduledJob]:
        if not crashes:  # a bug in one iteration of the loop (here: the scheduler), once
            crashes.append("boom")
            raise RuntimeError("a bug in the scheduler")
        return real_next_batch()

    monkeypatch.setattr(scheduler, "next_batch", next_batch_with_a_bug)
    job_id, _ = await generate(fake, server, "after the bug")
    await delivered_once(bot, fake, server, job_id)
    assert crashes == ["boom"]
    assert logged(caplog, logging.ERROR, "the job dispatcher loop died; restarting it")


async def test_a_member_who_generates_while_the_database_stays_locked_is_told_privately_the_bot_is_busy(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    fake = fake_discord
    rows_before = await job_count(bot)
    async with members_wait(bot, patience_s=1.0), database_locked(bot.config.database_path):
        refused = await run_command(fake, server["alice"], server.channel, "generate", prompt="in the outage")
        # Answered privately, and the public "thinking…" message is gone (private_reply checks).
        text = await private_reply(refused)
    assert "too busy" in text and "try again in a minute" in text
    assert await job_count(bot) == rows_before
    assert logged(caplog, logging.WARNING, "the member was told the bot is busy")
    # Nothing waits on the database any more: the queue is not held, and the next job is made.
    assert bot.dispatcher.store.gate.writable
    job_id, _ = await generate(fake, server, "after the outage")
    await delivered_once(bot, fake, server, job_id)


async def test_a_member_who_generates_while_the_database_is_locked_for_a_moment_gets_the_job_made(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server
) -> None:
    fake, gate = fake_discord, bot.dispatcher.store.gate
    async with members_wait(bot, patience_s=30.0):
        async with database_locked(bot.config.database_path):
            asked = await run_command(fake, server["bob"], server.channel, "generate", prompt="in a blip")
            await until(lambda: not gate.writable, "inserting the job met the lock", timeout=10)
            refused = gate.faults_seen
            await until(lambda: gate.faults_seen > refused, "inserting the job was refused again", timeout=10)
        job_id = await queued_job_id(asked)
    await delivered_once(bot, fake, server, job_id)
