"""Jobs survive restarts and crashes: the queue is in SQLite, and nobody's request is dropped."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest_asyncio

from bot.app import MusicGenBot
from bot.config import BotConfig
from bot.storage.database import Database
from bot.storage.jobs import JobOrigin, JobStore
from inference.backends.local import InferenceClient
from inference.request import GenerationRequest
from tests.bot.scenario_harness import (
    Server,
    add_server,
    channel_edits_of,
    job_row,
    musicgen_bot,
    posted_result,
    private_reply,
    queued_job_id,
    run_command,
    status_reads,
    stuck_jobs,
    wait_for_status,
)
from tests.fake_discord import FakeDiscord, FakeMessage, Permission

# The worker is killed mid-job.


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    return add_server(fake_discord, "Night shift", ("alice", "bob"))


def mentions(message: FakeMessage, member_id: int) -> bool:
    return f"<@{member_id}>" in message.content and any(user.id == member_id for user in message.mentions)


async def test_jobs_queued_when_the_bot_stops_are_made_and_posted_after_it_starts_again(
    fake_discord: FakeDiscord, server: Server, fresh_config: BotConfig, inference_client: InferenceClient
) -> None:
    fake, alice = fake_discord, server["alice"]
    async with musicgen_bot(fake, fresh_config, inference_client) as first_run:
        first_run.dispatcher.pause()  # a busy evening: nothing gets to run before the restart
        first_interaction = await run_command(
            fake, alice, server.channel, "generate", prompt="first", duration=1
        )
        first = await queued_job_id(first_interaction)
        second_interaction = await run_command(
            fake, alice, server.channel, "generate", prompt="second", duration=1
        )
        second = await queued_job_id(second_interaction)
        await second_interaction.wait_for_final(lambda m: "position 2 in line" in m.content)
    command_syncs = len(fake.requests_to("PUT", "/applications/{application_id}/commands"))

    async with musicgen_bot(fake, fresh_config, inference_client) as second_run:
        for job_id, interaction in ((first, first_interaction), (second, second_interaction)):
            result = await posted_result(fake, server.channel, job_id)
            assert result.interaction is None and mentions(result, alice.id)  # the old token is gone
            assert result.attachments[0].filename == f"musicgen-{job_id}.wav"
            row = await wait_for_status(second_run, job_id, "done")
            assert row["attempts"] == 1
            # The status messages from before the restart follow their jobs to the end, edited with
            # the bot's own permissions since the token is gone.
            status = interaction.original_message
            assert status is not None and row["status_message_id"] == status.id
            await status_reads(fake, status, f"Job #{job_id} is done (seed `{row['seed']}`)")
            assert channel_edits_of(fake, status) >= 1
        # While it waited its turn, the second one said so (without an edit per place gained).
        assert second_interaction.original_message is not None
        assert any(
            "is queued; `/queue` shows its place" in version.content
            for version in second_interaction.original_message.history
        )
        assert await stuck_jobs(second_run) == []
    # The commands did not change, so the restart did not spend any of the daily command creates.
    assert len(fake.requests_to("PUT", "/applications/{application_id}/commands")) == command_syncs


async def test_the_controls_an_admin_set_before_a_restart_hold_from_the_first_command_after_it(
    fake_discord: FakeDiscord, server: Server, fresh_config: BotConfig, inference_client: InferenceClient
) -> None:
    # The bot reads every server's controls once as it starts (no query before an acknowledgement).
    fake, alice = fake_discord, server["alice"]
    admin = fake.add_member(server.guild, "night manager", permissions=Permission.MANAGE_GUILD)
    elsewhere = fake.add_channel(server.guild, "break room")
    async with musicgen_bot(fake, fresh_config, inference_client):
        await run_command(fake, admin, server.channel, "musicgen-settings daily_quota", limit=1)
        await run_command(fake, admin, server.channel, "musicgen-settings jams", enabled=False)
        allow = await fake.invoke_slash_command(
            admin, server.channel, "musicgen-settings channel", {"channel": server.channel, "allowed": True}
        )
        assert "now works in" in await private_reply(allow)

    async with musicgen_bot(fake, fresh_config, inference_client) as second_run:
        refused = await run_command(fake, alice, elsewhere, "generate", prompt="here?", duration=1)
        assert f"only in <#{server.channel.id}>" in await private_reply(refused)
        jam = await run_command(fake, alice, server.channel, "jam start", prompt="late jam")
        assert "Jams are switched off" in await private_reply(jam)
        first = await run_command(fake, alice, server.channel, "generate", prompt="one", duration=1)
        await wait_for_status(second_run, await queued_job_id(first), "done")
        over = await run_command(fake, alice, server.channel, "generate", prompt="two", duration=1)
        assert "this server's daily limit" in await private_reply(over)
        # A change made after the start is read again, not taken from what was loaded.
        await run_command(fake, admin, server.channel, "musicgen-settings daily_quota")
        again = await run_command(fake, alice, server.channel, "generate", prompt="two", duration=1)
        await wait_for_status(second_run, await queued_job_id(again), "done")


async def test_a_job_interrupted_by_a_clean_shutdown_runs_again_without_using_its_retry(
    fake_discord: FakeDiscord, server: Server, fresh_config: BotConfig, inference_client: InferenceClient
) -> None:
    fake, bob = fake_discord, server["bob"]
    async with musicgen_bot(fake, fresh_config, inference_client) as first_run:
        interaction = await run_command(fake, bob, server.channel, "generate", prompt="long", duration=30)
        job_id = await queued_job_id(interaction)
        await wait_for_status(first_run, job_id, "running")
    # Stopped even if the stop came before the job reached the worker: back in the queue, unfinished.
    database = await Database.open(fresh_config.database_path)
    interrupted = await JobStore(database).get(job_id)
    await database.close()
    assert interrupted is not None and (interrupted.status.value, interrupted.error) == (
        "queued",
        "interrupted by a shutdown",
    )
    status = interaction.original_message
    assert status is not None and "the bot is restarting; it will run when it is back" in status.content
    async with musicgen_bot(fake, fresh_config, inference_client) as second_run:
        await posted_result(fake, server.channel, job_id)
        row = await wait_for_status(second_run, job_id, "done")
        assert row["attempts"] == 1
        await status_reads(fake, status, f"Job #{job_id} is done")


async def test_after_a_crash_a_running_job_is_retried_once_and_then_reported_failed(
    fake_discord: FakeDiscord, server: Server, fresh_config: BotConfig, inference_client: InferenceClient
) -> None:
    fake, alice, bob = fake_discord, server["alice"], server["bob"]
    # The previous bot process was killed mid-job: rows are left 'running', one already on its retry.
    database = await Database.open(fresh_config.database_path)
    store = JobStore(database)
    origin = JobOrigin(guild_id=server.guild.id, channel_id=server.channel.id, user_id=alice.id)
    once = await store.create(
        origin,
        GenerationRequest(model_version="small", prompt="once", duration=1, seed=1),
        seed_was_random=False,
    )
    await store.mark_running(once.id)
    twice = await store.create(
        JobOrigin(server.guild.id, server.channel.id, bob.id),
        GenerationRequest(model_version="small", prompt="twice", duration=1, seed=2),
        seed_was_random=False,
    )
    await store.mark_running(twice.id)
    await store.requeue(twice.id, error="worker crashed")
    await store.mark_running(twice.id)
    await database.close()

    async with musicgen_bot(fake, fresh_config, inference_client) as bot:
        result = await posted_result(fake, server.channel, once.id)
        assert mentions(result, alice.id)
        assert (await wait_for_status(bot, once.id, "done"))["attempts"] == 2
        failed = await wait_for_status(bot, twice.id, "failed")
        assert "restarted while this was being made" in failed["error"]
        notice = await fake.wait_for_message(server.channel, lambda m: f"job #{twice.id}:" in m.content)
        assert mentions(notice, bob.id)


async def _kill_worker_while_generating(bot: MusicGenBot, client: InferenceClient, job_id: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while bot.dispatcher.progress_of(job_id) is None:  # steps are being generated now
        assert loop.time() < deadline, "the job never started generating"
        await asyncio.sleep(0.01)
    for pid in client.worker_pids:
        os.kill(pid, signal.SIGKILL)


async def _wait_for_attempt(bot: MusicGenBot, job_id: int, attempt: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while (await job_row(bot, job_id))["attempts"] < attempt:
        assert loop.time() < deadline, f"job {job_id} never started attempt {attempt}"
        await asyncio.sleep(0.01)


async def test_a_worker_crash_is_retried_once_then_the_member_is_told_and_the_queue_goes_on(
    fake_discord: FakeDiscord, server: Server, fresh_config: BotConfig, inference_client: InferenceClient
) -> None:
    fake, alice = fake_discord, server["alice"]
    async with musicgen_bot(fake, fresh_config, inference_client) as bot:
        survivor_interaction = await run_command(
            fake, alice, server.channel, "generate", prompt="survivor", duration=30
        )
        survivor = await queued_job_id(survivor_interaction)
        await _kill_worker_while_generating(bot, inference_client, survivor)

        await survivor_interaction.wait_for_final(lambda m: "second try: the generator crashed" in m.content)
        await posted_result(fake, server.channel, survivor)
        assert (await wait_for_status(bot, survivor, "done"))["attempts"] == 2

        doomed_interaction = await run_command(
            fake, alice, server.channel, "generate", prompt="doomed", duration=30
        )
        doomed = await queued_job_id(doomed_interaction)
        await _kill_worker_while_generating(bot, inference_client, doomed)
        await _wait_for_attempt(bot, doomed, 2)
        await _kill_worker_while_generating(bot, inference_client, doomed)
        failed = await wait_for_status(bot, doomed, "failed")
        assert failed["attempts"] == 2 and "crashed while making this, twice" in failed["error"]
        await doomed_interaction.wait_for_final(lambda m: "crashed while making this, twice" in m.content)

        after = await run_command(fake, alice, server.channel, "generate", prompt="after", duration=1)
        await wait_for_status(bot, await queued_job_id(after), "done")
        assert await stuck_jobs(bot) == []
        assert (await job_row(bot, survivor))["error"] is None
