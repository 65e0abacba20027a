"""A jam's storage: its piece outlives every sweep while the jam is open, and a turn that ends while
the database is locked waits for it instead of being failed."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiosqlite
import pytest
import pytest_asyncio

from bot.app import MusicGenBot
from bot.storage.database import Database
from bot.storage.jams import JamStore
from bot.storage.jobs import Job
from bot.storage.retention import RetentionPolicy
from inference.protocol import GenerationResult
from tests.bot.scenario_harness import (
    Server,
    add_server,
    job_row,
    run_command,
    wav_seconds,
)
from tests.bot.test_jam_scenarios import take_turn
from tests.fake_discord import FakeChannel, FakeDiscord, FakeMessage
from tests.waiting import until

# A sweep that keeps nothing it may delete: every file is past its age and over the size budget.
KEEP_NOTHING = RetentionPolicy(keep_days=0, max_bytes=0)


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    return add_server(fake_discord, "Jam storage", ("alice", "bob"))


@pytest_asyncio.fixture
async def bot(fresh_bot: MusicGenBot) -> MusicGenBot:
    # The same waits, sooner: SQLite's busy wait (5 s) and the gate's pauses between tries.
    await fresh_bot.database.connection.execute("PRAGMA busy_timeout = 200")
    fresh_bot.dispatcher.store.gate.delays_s = (0.1, 0.3)
    return fresh_bot


async def rows(bot: MusicGenBot, sql: str, *parameters: object) -> list[aiosqlite.Row]:
    async with bot.database.connection.execute(sql, parameters) as cursor:
        return list(await cursor.fetchall())


async def start_jam(fake: FakeDiscord, server: Server, prompt: str) -> FakeChannel:
    interaction = await run_command(
        fake, server["alice"], server.channel, "jam start", prompt=prompt, turn_seconds=2, max_turns=4
    )
    await interaction.wait_for_final(lambda m: not m.is_loading and "started a jam" in m.content)
    (thread,) = [c for c in fake.channels.values() if c.is_thread and c.name == prompt]
    return thread


async def turn_result(fake: FakeDiscord, thread: FakeChannel, number: int) -> FakeMessage:
    return await fake.wait_for_message(
        thread,
        lambda m: m.author is fake.bot_user and f"**Turn {number} of" in m.content and bool(m.attachments),
        90,
    )


def piece_of(message: FakeMessage) -> bytes:
    """The whole piece a message carries (a turn's also carries its new part alone)."""
    (piece,) = [
        a for a in message.attachments if a.filename.endswith((".wav", ".mp3")) and "-new" not in a.filename
    ]
    return piece.data


async def until_ended(bot: MusicGenBot, job_id: int) -> None:
    while (await job_row(bot, job_id))["status"] in ("queued", "running"):
        await asyncio.sleep(0.05)


async def pieces(bot: MusicGenBot) -> list[Path]:
    """Each finished turn's whole piece, in turn order."""
    done = await rows(bot, "SELECT piece_path FROM jam_turns WHERE status = 'done' ORDER BY number")
    return [Path(row["piece_path"]) for row in done]


async def test_an_open_jams_piece_survives_every_sweep_and_the_export_and_next_turn_use_it(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake = fake_discord
    thread = await start_jam(fake, server, "dub techno")
    first = await turn_result(fake, thread, 1)
    bot.janitor.policy = KEEP_NOTHING
    await bot.janitor.sweep()
    (opening_piece,) = await pieces(bot)
    assert opening_piece.is_file()

    export = await run_command(fake, server["bob"], thread, "jam export")
    exported = await export.wait_for_final(lambda m: not m.is_loading and bool(m.attachments))
    assert piece_of(exported) == piece_of(first)

    await take_turn(fake, server["bob"], thread, prompt="add a bassline", seconds=3)
    second = await turn_result(fake, thread, 2)
    assert wav_seconds(piece_of(second)) == pytest.approx(5.0)
    # The second turn asked for; it gets its number once its post exists, its job as it starts.
    second_job = (await rows(bot, "SELECT job_id FROM jam_turns ORDER BY id"))[1]
    await until_ended(bot, second_job[0])  # until then its job needs the opening piece it continues
    await bot.janitor.sweep()
    _, latest = await pieces(bot)
    # The latest piece and its new part stay; the opening piece, now the start of it, goes.
    assert latest.is_file() and latest.with_name(latest.name.replace("-piece", "-new")).is_file()
    assert not opening_piece.exists()

    ending = await run_command(fake, server["alice"], thread, "jam end")
    final = await ending.wait_for_final(lambda m: not m.is_loading and bool(m.attachments))
    assert piece_of(final) == piece_of(second)
    # Once the jam is over its files are like any others.
    await bot.janitor.sweep()
    assert not latest.exists()


async def test_a_turn_that_ends_while_the_database_is_locked_is_posted_and_done_once_it_is_free(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, gate = fake_discord, bot.dispatcher.store.gate
    locker = sqlite3.connect(bot.config.database_path, isolation_level=None, check_same_thread=False)
    locked = asyncio.Event()
    make_whole_piece = bot.dispatcher.prepare_result
    assert make_whole_piece is not None

    async def lock_as_the_music_is_made(job: Job, result: GenerationResult) -> GenerationResult:
        prepared = await make_whole_piece(job, result)
        if not locked.is_set():
            # Another process (a backup, a second bot) takes the database's write lock right now.
            await asyncio.to_thread(locker.execute, "BEGIN EXCLUSIVE")
            locked.set()
        return prepared

    monkeypatch.setattr(bot.dispatcher, "prepare_result", lock_as_the_music_is_made)
    try:
        thread = await start_jam(fake, server, "tape loops")
        await locked.wait()
        await until(lambda: not gate.writable, "recording the turn met the lock", timeout=30)
        refused = gate.faults_seen
        await until(lambda: gate.faults_seen >= refused + 2, "several refused tries", timeout=30)
        # The turn waits to be recorded, and its job is not failed meanwhile.
        (turn,) = locker.execute("SELECT status, job_id FROM jam_turns").fetchall()
        assert turn[0] == "started"
        assert locker.execute("SELECT status FROM jobs WHERE id = ?", (turn[1],)).fetchone() == ("running",)
    finally:
        if locked.is_set():
            locker.execute("COMMIT")
        locker.close()

    await until_ended(bot, turn[1])
    job = await job_row(bot, turn[1])
    assert (job["status"], job["error"]) == ("done", None)  # the music made is not lost
    posted = await turn_result(fake, thread, 1)
    assert wav_seconds(piece_of(posted)) == pytest.approx(2.0) and job["result_message_id"] == posted.id
    assert [m for m in fake.bot_messages(thread) if "**Turn 1 of" in m.content] == [posted]
    (recorded,) = await rows(bot, "SELECT status, number, end_s FROM jam_turns")
    assert tuple(recorded) == ("done", 1, pytest.approx(2.0))
    assert gate.writable


async def test_waiting_turns_are_counted_from_a_restart_on_and_as_turns_are_added_or_leave_the_line(
    tmp_path: Path,
) -> None:
    # The store learns at start-up which guilds have turns waiting, and answers for the others
    # without a query; these counts are the caps and quota admission applies to jam turns.
    database = await Database.open(tmp_path / "bot.db")
    try:
        jams = JamStore(database)
        await jams.load()
        jam = await jams.create(
            guild_id=1, channel_id=10, thread_id=11, starter_id=7, prompt="dusk",
            model_version="small", turn_seconds=5, max_turns=4,
        )  # fmt: skip
        assert await jams.waiting_turn_counts(1, 7) == (0, 0)
        turn = await jams.add_turn(jam, user_id=7, user_name="ann", prompt=None, seconds=5)
        assert [await jams.waiting_turn_counts(1, user) for user in (7, 8)] == [(1, 1), (0, 1)]
        assert await jams.waiting_turn_counts(2, 7) == (0, 0)

        restarted = JamStore(database)
        await restarted.load()
        assert await restarted.waiting_turn_counts(1, 8) == (0, 1)
        assert await restarted.waiting_turn_counts(2, 7) == (0, 0)
        assert await restarted.mark_failed(turn.id)
        assert await restarted.waiting_turn_counts(1, 7) == (0, 0)
        await restarted.add_turn(jam, user_id=8, user_name="ben", prompt="drums", seconds=5)
        assert await restarted.waiting_turn_counts(1, 8) == (1, 1)
    finally:
        await database.close()
