"""A job that runs past its deadline, or stops making progress, has its worker really killed; it is
retried, and failed with "took too long" if it misses again; the queue goes on."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.app import MusicGenBot
from bot.config import WorkerOptions
from bot.pipeline.deadlines import DeadlinePolicy, JobWatchdog
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
from tests.fake_discord import FakeDiscord, FakeInteraction
from tests.waiting import until

# Jobs past their deadline get their worker killed.

# So short that every real job misses it (loading the model alone takes longer).
TINY_DEADLINE = DeadlinePolicy(base_s=0.5, per_audio_second_s=0, stall_s=300)


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    return add_server(fake_discord, "Deadlines", ("ann", "ben"))


@pytest_asyncio.fixture(scope="module")
async def bot(
    fake_discord: FakeDiscord,
    server: Server,
    inference_client: InferenceClient,
    engine_settings: EngineSettings,
    module_data_dir: Path,
) -> AsyncIterator[MusicGenBot]:
    worker = WorkerOptions(
        processes=1,
        job_retries=1,
        job_deadline_base_s=TINY_DEADLINE.base_s,
        job_deadline_per_audio_s=TINY_DEADLINE.per_audio_second_s,
    )
    config = scenario_config(module_data_dir, engine_settings).model_copy(update={"worker": worker})
    async with musicgen_bot(fake_discord, config, inference_client) as running:
        yield running


def watchdog_of(bot: MusicGenBot) -> JobWatchdog:
    watchdog = bot.dispatcher.watchdog
    assert watchdog is not None
    return watchdog


def logged(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and text in r.getMessage()]


def status_texts(interaction: FakeInteraction) -> list[str]:
    """Every text the job's public status message showed, oldest first."""
    status = interaction.original_message
    assert status is not None and not status.is_ephemeral
    return [version.content for version in status.history] + [status.content]


async def test_a_job_past_its_deadline_is_killed_retried_then_failed_and_the_queue_goes_on(
    bot: MusicGenBot,
    fake_discord: FakeDiscord,
    server: Server,
    inference_client: InferenceClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    first_pids = inference_client.worker_pids
    assert watchdog_of(bot).policy == TINY_DEADLINE  # from the bot's [worker] settings
    interaction = await run_command(
        fake_discord, server["ann"], server.channel, "generate", prompt="endless drone", duration=30
    )
    job_id = await queued_job_id(interaction)

    row = await wait_for_status(bot, job_id, "failed", timeout=180)
    assert row["attempts"] == 2 and "took too long" in row["error"]
    final = await interaction.wait_for_final(lambda m: f"Job #{job_id} failed" in m.content)
    assert "took too long" in final.content and "shorter duration" in final.content
    texts = status_texts(interaction)
    assert any("taking too long; trying once more" in t or "the first took too long" in t for t in texts)

    # Both tries had their worker really killed: two processes, neither alive, each replaced.
    kills = logged(caplog, logging.ERROR, f"which runs job {job_id}")
    killed_pids = [int(line.split("(pid ", 1)[1].split(")")[0]) for line in kills]
    assert len(killed_pids) == 2 and len(set(killed_pids)) == 2
    assert killed_pids[0] in first_pids
    await until(lambda: inference_client.idle_workers == 1, "a replacement worker is ready")
    assert not set(killed_pids) & set(inference_client.worker_pids)
    # What the owner reads: the deadline, how long it ran, and the job.
    assert (
        len(logged(caplog, logging.ERROR, f"JOB DEADLINE: job {job_id} ran past its deadline of 0.5 s")) == 2
    )
    assert not [m for m in fake_discord.messages(server.channel) if m.attachments]  # nothing was posted

    # The owner's deadline comes back: the next job runs on the fresh worker and is delivered.
    watchdog_of(bot).policy = DeadlinePolicy()
    next_one = await run_command(
        fake_discord, server["ben"], server.channel, "generate", prompt="short and sweet", duration=1
    )
    next_id = await queued_job_id(next_one)
    result = await posted_result(fake_discord, server.channel, next_id)
    assert wav_seconds(result.attachments[0].data) == pytest.approx(1.0, abs=0.05)
    assert (await wait_for_status(bot, next_id, "done"))["attempts"] == 1
    assert await stuck_jobs(bot) == []
    assert watchdog_of(bot).watching == 0


async def test_a_batch_past_its_deadline_runs_again_job_by_job_without_using_up_a_retry(
    bot: MusicGenBot,
    fake_discord: FakeDiscord,
    server: Server,
    inference_client: InferenceClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    # Alone, the 10 s job's deadline would be 0.3 s and the 20 s job's 0.4 s; in one batch both step
    # as fast as the batch, so both get the longest one's 0.4 s. (Neither can end before it: a job
    # that ends first leaves the batch and is posted, and could not be blamed for the hang.)
    watchdog_of(bot).policy = DeadlinePolicy(base_s=0.2, per_audio_second_s=0.01, stall_s=300)
    bot.dispatcher.pause()  # both commands are queued before the batch forms
    try:
        jobs = [
            (await queued_job_id(interaction), interaction)
            for interaction in [
                await run_command(
                    fake_discord, server[member], server.channel, "generate", prompt=prompt, duration=duration
                )
                for member, prompt, duration in (("ann", "a long night", 20), ("ben", "a shorter day", 10))
            ]
        ]
    finally:
        bot.dispatcher.resume()
    job_ids = [job_id for job_id, _ in jobs]
    await until(
        lambda: any(f"which runs job {job_ids[0]}" in line or f"which runs job {job_ids[1]}" in line
                    for line in logged(caplog, logging.ERROR, "killing inference-worker")),
        "the watchdog kills the batch's worker",
    )  # fmt: skip
    watchdog_of(bot).policy = DeadlinePolicy()  # each job alone now has all the time it needs

    for (job_id, interaction), seconds in zip(jobs, (20, 10), strict=True):
        result = await posted_result(fake_discord, server.channel, job_id)
        assert wav_seconds(result.attachments[0].data) == pytest.approx(seconds, abs=0.05)
        row = await wait_for_status(bot, job_id, "done")
        # The batch's miss is not counted against either job: nobody can tell which one hung.
        assert row["attempts"] == 1
        texts = status_texts(interaction)
        assert any("trying again on its own" in t or "its batch took too long" in t for t in texts)
    # The shorter job had the batch's deadline, not its own; the worker was killed once for both.
    missed = logged(caplog, logging.ERROR, "JOB DEADLINE")
    assert missed and all("ran past its deadline of 0.4 s" in line for line in missed)
    assert len(logged(caplog, logging.ERROR, "killing inference-worker")) == 1
    assert logged(caplog, logging.ERROR, "its worker was killed because it ran past its deadline of 0.4 s")
    assert await stuck_jobs(bot) == []


async def test_a_worker_that_stops_making_progress_is_killed_and_the_job_retried(
    bot: MusicGenBot,
    fake_discord: FakeDiscord,
    server: Server,
    inference_client: InferenceClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    # A deadline far away: only the stall limit can catch it.
    watchdog_of(bot).policy = DeadlinePolicy(base_s=600, per_audio_second_s=60, stall_s=2)
    await until(lambda: inference_client.idle_workers == 1, "the worker is ready")
    interaction = await run_command(
        fake_discord, server["ann"], server.channel, "generate", prompt="frozen lake", duration=30
    )
    job_id = await queued_job_id(interaction)
    await until(lambda: bot.dispatcher.progress_of(job_id) is not None, "the job makes progress")
    (frozen_pid,) = inference_client.worker_pids
    os.kill(frozen_pid, signal.SIGSTOP)  # hung, as on a stuck GPU: alive, silent
    try:
        await until(
            lambda: frozen_pid not in inference_client.worker_pids, "the stalled worker is killed", 60
        )
    finally:
        if frozen_pid in inference_client.worker_pids:  # not killed: let the module's teardown stop it
            os.kill(frozen_pid, signal.SIGCONT)
    watchdog_of(bot).policy = DeadlinePolicy()

    result = await posted_result(fake_discord, server.channel, job_id, timeout=120)
    assert wav_seconds(result.attachments[0].data) == pytest.approx(30.0, abs=0.05)
    row = await wait_for_status(bot, job_id, "done")
    assert row["attempts"] == 2
    assert any("taking too long; trying once more" in t or "the first took too long" in t
               for t in status_texts(interaction))  # fmt: skip
    assert logged(caplog, logging.ERROR, f"JOB DEADLINE: job {job_id} made no progress for 2 s")
    assert logged(caplog, logging.ERROR, f"(pid {frozen_pid}), which runs job {job_id}")
    assert await stuck_jobs(bot) == []
