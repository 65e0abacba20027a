"""Jams keep the promises /generate keeps: posts are delivered once or kept, a waiting turn holds its
place, and a piece deleted from the disk is reported rather than failing with the internal error."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio

from bot.app import MusicGenBot
from tests.bot.scenario_harness import (
    Server,
    add_server,
    private_reply,
    queued_job_id,
    run_command,
    wait_for_status,
    wav_seconds,
)
from tests.bot.test_jam_scenarios import audio_named, rows, start_jam, take_turn, turn_result
from tests.fake_discord import FakeDiscord
from tests.waiting import until

THREAD_POSTS = "/channels/*/messages"  # POST: the bot's own posts (a jam's turns are posted in its thread)


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    return add_server(fake_discord, "Jam promises", ("alice", "bob"))


@pytest.fixture
def bot(fresh_bot: MusicGenBot) -> MusicGenBot:
    # Retries a test can wait for (the bot's own are 1, 4 and 10 s).
    fresh_bot.dispatcher.poster.retry_delays_s = (0.05, 0.05, 0.05)
    return fresh_bot


async def test_a_turn_post_whose_answer_is_lost_is_posted_once_and_the_turn_counts(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake = fake_discord
    thread = await start_jam(fake, server, "alice", "rainy lofi", turn_seconds=1)
    await turn_result(fake, thread, 1)
    lost = fake.inject_connection_drop("POST", THREAD_POSTS, after_handling=True)
    await take_turn(fake, server["bob"], thread, prompt="soft keys")
    second = await turn_result(fake, thread, 2)
    assert lost.served == 1
    assert [m for m in fake.bot_messages(thread) if "**Turn 2 of" in m.content] == [second]
    job = await wait_for_status(bot, await started_job_of_turn(bot, 2), "done")
    assert job["result_message_id"] == second.id
    turns = await rows(bot, "SELECT status FROM jam_turns ORDER BY id")
    assert [t["status"] for t in turns] == ["done", "done"]


async def test_a_turn_that_cannot_be_posted_keeps_its_audio_and_leaves_the_piece_as_members_heard_it(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake = fake_discord
    thread = await start_jam(fake, server, "alice", "desert blues", turn_seconds=1)
    first = await turn_result(fake, thread, 1)
    down = fake.inject_connection_drop("POST", THREAD_POSTS, times=4)
    await take_turn(fake, server["bob"], thread, prompt="slide guitar", seconds=2)
    job_id = await started_job_of_turn(bot, 2)
    job = await wait_for_status(bot, job_id, "failed")
    assert down.served == 4 and "could not post" in job["error"] and Path(job["output_path"]).is_file()
    await turns_are(bot, ["done", "failed"])

    # The piece is still the one members heard: the next turn continues it.
    await take_turn(fake, server["alice"], thread, prompt="handclaps", seconds=1)
    second = await turn_result(fake, thread, 2)
    assert wav_seconds(audio_named(second, "-piece.wav")) == pytest.approx(
        wav_seconds(audio_named(first, "-piece.wav")) + 1.0
    )


async def started_job_of_turn(bot: MusicGenBot, position: int) -> int:
    """The job of the jam's `position`-th turn asked for, once it has one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        turns = await rows(bot, "SELECT job_id FROM jam_turns ORDER BY id")
        if len(turns) >= position and turns[position - 1]["job_id"] is not None:
            return int(turns[position - 1]["job_id"])
        assert loop.time() < deadline, f"turn {position} never started"
        await asyncio.sleep(0.05)


async def turns_are(bot: MusicGenBot, statuses: list[str]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while [t["status"] for t in await rows(bot, "SELECT status FROM jam_turns ORDER BY id")] != statuses:
        assert loop.time() < deadline, f"the turns never became {statuses}"
        await asyncio.sleep(0.05)


async def test_a_waiting_turn_holds_its_place_in_the_caps_and_runs_when_the_queue_is_full(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake, bob = fake_discord, server["bob"]
    bot.dispatcher.pause()  # the opening turn stays queued: bob's turn waits behind it
    try:
        thread = await start_jam(fake, server, "alice", "city pop", turn_seconds=1)
        await take_turn(fake, bob, thread, prompt="slap bass")
        first = await run_command(fake, bob, server.channel, "generate", prompt="one", duration=1)
        first_job = await queued_job_id(first)
        # Bob's cap is 2: his job and his waiting turn.
        refused = await run_command(fake, bob, server.channel, "generate", prompt="two", duration=1)
        assert "already have 2 job(s) and jam turns" in await private_reply(refused)
        # The server's queue fills up before bob's turn comes: it keeps its place all the same.
        bot.scheduler.set_guild_limit(server.guild.id, 1)
    finally:
        bot.dispatcher.resume()
    try:
        second = await turn_result(fake, thread, 2)
    finally:
        bot.scheduler.set_guild_limit(server.guild.id, None)
    assert f"<@{bob.id}>" in second.content
    await wait_for_status(bot, first_job, "done")
    turns = await rows(bot, "SELECT status FROM jam_turns ORDER BY id")
    assert [t["status"] for t in turns] == ["done", "done"]


async def test_cancel_in_the_thread_takes_a_waiting_turn_out_of_the_line(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake, bob = fake_discord, server["bob"]
    bot.dispatcher.pause()
    try:
        thread = await start_jam(fake, server, "alice", "polka", turn_seconds=1)
        added = await take_turn(fake, bob, thread, prompt="tuba")
        cancelled = await run_command(fake, bob, thread, "cancel")
        assert "Your turn waiting in" in await private_reply(cancelled)
    finally:
        bot.dispatcher.resume()
    await turn_result(fake, thread, 1)
    await turns_are(bot, ["done", "failed"])  # the turn is recorded once its post exists
    turns = await rows(bot, "SELECT status, job_id FROM jam_turns ORDER BY id")
    assert [(t["status"], t["job_id"] is None) for t in turns] == [("done", False), ("failed", True)]
    status = added.original_message
    assert status is not None
    await fake.wait_for_message(thread, lambda m: m.id == status.id and "was cancelled" in m.content)


async def test_a_piece_deleted_from_the_disk_is_reported_and_end_still_ends_the_jam(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake, alice = fake_discord, server["alice"]
    thread = await start_jam(fake, server, "alice", "sea shanty", turn_seconds=1)
    await turn_result(fake, thread, 1)
    await turns_are(bot, ["done"])  # the turn is recorded once its post exists
    (piece,) = await rows(bot, "SELECT piece_path FROM jam_turns WHERE status = 'done'")
    Path(piece[0]).unlink()  # what an operator clearing the data dir by hand does

    export = await run_command(fake, alice, thread, "jam export")
    assert "missing from the bot's storage" in await private_reply(export)
    add = await run_command(fake, server["bob"], thread, "jam add", prompt="fiddle")
    assert "missing from the bot's storage" in await private_reply(add)
    ended = await run_command(fake, alice, thread, "jam end")
    final = await ended.wait_for_final(lambda m: not m.is_loading and "The jam is over" in m.content, 30)
    assert "only the credits are posted" in final.content and not final.attachments
    assert final.embeds and f"<@{alice.id}>" in final.text
    await until(lambda: thread.archived, "the thread is archived")
    jam = (await rows(bot, "SELECT status FROM jams"))[0]
    assert jam["status"] == "ended"
