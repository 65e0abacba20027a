"""Jam sessions as members live them: a thread per jam, turns in order, a piece that keeps growing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest
import pytest_asyncio

from bot.app import MusicGenBot
from bot.config import BotConfig, JamOptions
from inference.backends.local import InferenceClient
from inference.settings import EngineSettings
from tests.bot.scenario_harness import (
    Server,
    add_server,
    musicgen_bot,
    private_reply,
    run_command,
    scenario_config,
    wav_seconds,
)
from tests.fake_discord import FakeChannel, FakeDiscord, FakeInteraction, FakeMember, FakeMessage, Permission


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    server = add_server(fake_discord, "Jam club", ("alice", "bob"))
    server.members["mod"] = fake_discord.add_member(
        server.guild, "mod", permissions=Permission.MANAGE_THREADS
    )
    # A channel bob cannot see (a member overwrite set before any bot connects).
    staff = fake_discord.add_channel(server.guild, "staff")
    staff.overwrites.append((server["bob"].id, 1, 0, Permission.VIEW_CHANNEL))
    return server


@pytest.fixture
def config(tmp_path: Path, engine_settings: EngineSettings, request: pytest.FixtureRequest) -> BotConfig:
    """A fresh database per test; `[jam]` options from the test's parameter, if any."""
    base = scenario_config(tmp_path / "data", engine_settings)
    jam_options = getattr(request, "param", None)
    return base.model_copy(update={"jam": JamOptions(**jam_options)}) if jam_options else base


@pytest_asyncio.fixture
async def bot(
    fake_discord: FakeDiscord, config: BotConfig, inference_client: InferenceClient
) -> AsyncIterator[MusicGenBot]:
    requests_before = len(fake_discord.requests)
    async with musicgen_bot(fake_discord, config, inference_client) as running:
        yield running
    assert_discord_accepted_everything(fake_discord, requests_before)


def assert_discord_accepted_everything(fake: FakeDiscord, since: int) -> None:
    refused = [(r.method, r.path, r.status) for r in fake.requests[since:] if r.status >= 400]
    assert refused == [] and fake.unhandled_requests == []


async def rows(bot: MusicGenBot, sql: str, *parameters: object) -> list[aiosqlite.Row]:
    async with bot.database.connection.execute(sql, parameters) as cursor:
        return list(await cursor.fetchall())


def jam_thread(fake: FakeDiscord, parent: FakeChannel, name: str) -> FakeChannel:
    threads = [
        c for c in fake.channels.values() if c.is_thread and c.parent_id == parent.id and c.name == name
    ]
    assert len(threads) == 1, f"one thread named {name!r} under #{parent.name}"
    return threads[0]


async def start_jam(
    fake: FakeDiscord, server: Server, member: str, prompt: str, **options: object
) -> FakeChannel:
    interaction = await run_command(
        fake, server[member], server.channel, "jam start", prompt=prompt, **options
    )
    announced = await interaction.wait_for_final(lambda m: not m.is_loading and "started a jam" in m.content)
    thread = jam_thread(fake, server.channel, prompt[:100])
    assert thread.mention in announced.content and not announced.is_ephemeral
    return thread


async def take_turn(
    fake: FakeDiscord, member: FakeMember, thread: FakeChannel, **options: object
) -> FakeInteraction:
    """`/jam add` in the thread, once the bot has answered with the turn's place."""
    interaction = await run_command(fake, member, thread, "jam add", **options)
    await interaction.wait_for_final(lambda m: not m.is_loading and "Turn " in m.content, 30)
    return interaction


async def turn_result(
    fake: FakeDiscord, thread: FakeChannel, number: int, timeout: float = 90
) -> FakeMessage:
    """The bot's message in the thread carrying turn `number`'s audio."""
    return await fake.wait_for_message(
        thread,
        lambda m: m.author is fake.bot_user and f"**Turn {number} of" in m.content and bool(m.attachments),
        timeout,
    )


def audio_named(message: FakeMessage, ending: str) -> bytes:
    found = [a for a in message.attachments if a.filename.endswith(ending)]
    assert len(found) == 1, [a.filename for a in message.attachments]
    return found[0].data


async def test_three_turns_by_two_members_grow_one_piece_and_the_export_is_the_sum_of_the_turns(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake, alice, bob = fake_discord, server["alice"], server["bob"]
    thread = await start_jam(fake, server, "alice", "lofi piano, rain", turn_seconds=2, max_turns=4)
    welcome = fake.messages(thread)[0]
    assert "Jam: lofi piano, rain" in welcome.content and "/jam add" in welcome.content

    first = await turn_result(fake, thread, 1)
    assert f"<@{alice.id}>" in first.content and [u.id for u in first.mentions] == [alice.id]
    assert wav_seconds(audio_named(first, "-piece.wav")) == pytest.approx(2.0)
    picture = [a for a in first.attachments if a.filename.endswith(".png")]
    assert len(picture) == 1 and first.embeds[0]["image"]["url"] == picture[0].url  # the jam's picture

    adding = await take_turn(fake, bob, thread, prompt="add brass", seconds=3)
    assert "Turn 2 of 4" in adding.original_message.content  # type: ignore[union-attr]
    second = await turn_result(fake, thread, 2)
    assert wav_seconds(audio_named(second, "-new.wav")) == pytest.approx(3.0)
    assert wav_seconds(audio_named(second, "-piece.wav")) == pytest.approx(5.0)
    assert (
        f"<@{alice.id}>" in second.embeds[0]["description"]
        and f"<@{bob.id}>" in second.embeds[0]["description"]
    )

    # The third turn: alice replies to bob's part and mentions the bot.
    await fake.post_user_message(
        alice, thread, f"{fake.bot_user.mention} 2s softer, with strings", reply_to=second
    )
    third = await turn_result(fake, thread, 3)
    turn_lengths = [
        wav_seconds(audio_named(first, "-piece.wav")),
        wav_seconds(audio_named(second, "-new.wav")),
        wav_seconds(audio_named(third, "-new.wav")),
    ]

    export = await run_command(fake, bob, thread, "jam export")
    exported = await export.wait_for_final(lambda m: not m.is_loading and bool(m.attachments))
    exported_seconds = wav_seconds(audio_named(exported, "-piece.wav"))
    assert turn_lengths == pytest.approx([2.0, 3.0, 2.0])
    assert exported_seconds == pytest.approx(sum(turn_lengths)) == pytest.approx(7.0)
    print(f"jam lengths: turns {turn_lengths} s, export {exported_seconds} s")

    jam = (await rows(bot, "SELECT * FROM jams"))[0]
    assert (jam["thread_id"], jam["starter_id"], jam["status"]) == (thread.id, alice.id, "open")
    turns = await rows(bot, "SELECT * FROM jam_turns JOIN jobs ON jobs.id = jam_turns.job_id ORDER BY number")
    assert [(t["number"], t["user_id"], t["seconds"], t["start_s"], t["end_s"]) for t in turns] == [
        (1, alice.id, 2, 0.0, 2.0),
        (2, bob.id, 3, 2.0, 5.0),
        (3, alice.id, 2, 5.0, 7.0),
    ]
    # Every turn is an ordinary job posted in the thread; the later ones continue the piece so far.
    assert all(t["channel_id"] == thread.id and t["status"] == "done" for t in turns)
    assert [t["continuation"] for t in turns] == [0, 1, 1]
    assert turns[2]["prompt"] == "softer, with strings" and turns[2]["source_message_id"] == second.id
    contributors = await rows(bot, "SELECT user_id, turns, seconds FROM jam_contributors ORDER BY first_turn")
    assert [tuple(c) for c in contributors] == [(alice.id, 2, 4.0), (bob.id, 1, 3.0)]
    # Everything of the jam is in its thread; the channel only has the announcement.
    assert [m for m in fake.bot_messages(server.channel) if m.interaction is None] == []


async def test_a_second_add_while_a_turn_is_running_waits_in_order_and_is_told_its_place(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake, alice, bob = fake_discord, server["alice"], server["bob"]
    bot.dispatcher.pause()  # the opening turn stays queued while the others ask
    thread = await start_jam(fake, server, "alice", "slow jazz", turn_seconds=1)
    bobs = await take_turn(fake, bob, thread, prompt="walking bass")
    alices = await take_turn(fake, alice, thread, prompt="brushes", seconds=2)
    assert "Your turn is **#2** in this jam's line" in bobs.original_message.content  # type: ignore[union-attr]
    assert "Your turn is **#3** in this jam's line" in alices.original_message.content  # type: ignore[union-attr]
    waiting = await rows(bot, "SELECT user_id, status, job_id FROM jam_turns ORDER BY id")
    assert [(w["user_id"], w["status"]) for w in waiting] == [
        (alice.id, "started"),
        (bob.id, "waiting"),
        (alice.id, "waiting"),
    ]
    assert waiting[1]["job_id"] is None and waiting[2]["job_id"] is None

    bot.dispatcher.resume()
    await turn_result(fake, thread, 3)
    turns = await rows(
        bot,
        "SELECT number, jam_turns.user_id, started_at FROM jam_turns JOIN jobs ON jobs.id = job_id ORDER BY jam_turns.id",
    )
    assert [(t["number"], t["user_id"]) for t in turns] == [(1, alice.id), (2, bob.id), (3, alice.id)]
    assert [t["started_at"] for t in turns] == sorted(t["started_at"] for t in turns)
    # The waiting answers became the turns' status messages and followed them to the end.
    assert (await rows(bot, "SELECT status_message_id FROM jam_turns WHERE user_id = ? ORDER BY id", bob.id))[
        0
    ][0] == bobs.original_message.id  # type: ignore[union-attr]


async def test_a_restart_mid_jam_runs_the_queued_turn_and_the_jam_goes_on(
    fake_discord: FakeDiscord, server: Server, config: BotConfig, inference_client: InferenceClient
) -> None:
    fake, bob = fake_discord, server["bob"]
    requests_before = len(fake.requests)
    async with musicgen_bot(fake, config, inference_client) as first_run:
        first_run.dispatcher.pause()
        thread = await start_jam(fake, server, "alice", "night drive", turn_seconds=1)
        await take_turn(fake, bob, thread, prompt="synth arps")
    async with musicgen_bot(fake, config, inference_client) as second_run:
        await turn_result(fake, thread, 1)
        second = await turn_result(fake, thread, 2)
        assert wav_seconds(audio_named(second, "-piece.wav")) == pytest.approx(2.0)
        # The jam goes on: a new turn after the restart.
        await take_turn(fake, bob, thread, prompt="drums in")
        third = await turn_result(fake, thread, 3)
        assert wav_seconds(audio_named(third, "-piece.wav")) == pytest.approx(3.0)
        turns = await rows(second_run, "SELECT status FROM jam_turns ORDER BY id")
        assert [t["status"] for t in turns] == ["done", "done", "done"]
    assert_discord_accepted_everything(fake, requests_before)


async def test_only_the_starter_or_manage_threads_ends_a_jam_and_the_end_archives_the_thread(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake, alice, bob = fake_discord, server["alice"], server["bob"]
    thread = await start_jam(fake, server, "alice", "ambient drones", turn_seconds=1)
    await turn_result(fake, thread, 1)
    refused = await private_reply(await run_command(fake, bob, thread, "jam end"))
    assert f"<@{alice.id}>" in refused and "Manage Threads" in refused
    assert not thread.archived

    ending = await run_command(fake, server["mod"], thread, "jam end")
    final = await ending.wait_for_final(lambda m: not m.is_loading and bool(m.attachments))
    assert "The jam is over" in final.content and f"<@{alice.id}>" in final.content
    assert wav_seconds(audio_named(final, "-final.wav")) == pytest.approx(1.0)
    await fake.wait_for_message(thread, lambda m: thread.archived, 10)
    jam = (await rows(bot, "SELECT status, end_reason FROM jams"))[0]
    assert jam["status"] == "ended" and f"<@{server['mod'].id}>" in jam["end_reason"]
    late = await private_reply(await run_command(fake, bob, thread, "jam add", prompt="one more"))
    assert "ended" in late
    assert thread.archived  # nothing was posted in the thread after its end


async def test_without_permission_to_create_threads_the_member_is_told_what_to_grant(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake = fake_discord
    closed = fake.add_channel(server.guild, "no-threads", bot_denied=Permission.CREATE_PUBLIC_THREADS)
    interaction = await run_command(fake, server["alice"], closed, "jam start", prompt="lofi")
    text = await private_reply(interaction)
    assert "Create Public Threads" in text
    assert not [c for c in fake.channels.values() if c.is_thread and c.parent_id == closed.id]
    assert await rows(bot, "SELECT * FROM jams") == [] and await rows(bot, "SELECT * FROM jobs") == []


@pytest.mark.parametrize("config", [{"max_seconds": 4}], indirect=True)
async def test_max_turns_and_the_longest_piece_end_the_jam_with_a_clear_message(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake, bob = fake_discord, server["bob"]
    assert bot.config.jam.max_seconds == 4
    thread = await start_jam(fake, server, "alice", "chiptune", turn_seconds=2, max_turns=2)
    too_long = await private_reply(
        await run_command(fake, bob, thread, "jam add", prompt="faster", seconds=3)
    )
    assert "Only 2 more seconds fit" in too_long
    await take_turn(fake, bob, thread, prompt="faster")
    full = await private_reply(await run_command(fake, server["mod"], thread, "jam add", prompt="more"))
    assert "All 2 turns of this jam are taken" in full
    final = await fake.wait_for_message(thread, lambda m: "The jam is over" in m.content, 90)
    assert "all 2 turns are played" in final.content
    assert wav_seconds(audio_named(final, "-final.wav")) == pytest.approx(4.0)
    await fake.wait_for_message(thread, lambda m: thread.archived, 10)
    jam = (await rows(bot, "SELECT status FROM jams"))[0]
    assert jam["status"] == "ended"


async def test_jam_list_shows_the_open_jams_a_member_can_see(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake = fake_discord
    bot.dispatcher.pause()  # listing needs no music
    staff = next(c for c in server.guild.channels.values() if c.name == "staff")
    public = await start_jam(fake, server, "alice", "open to all")
    interaction = await run_command(fake, server["alice"], staff, "jam start", prompt="staff only")
    await interaction.wait_for_final(lambda m: not m.is_loading and "started a jam" in m.content)
    hidden = jam_thread(fake, staff, "staff only")

    bobs = await private_reply(await run_command(fake, server["bob"], server.channel, "jam list"))
    assert public.mention in bobs and "open to all" in bobs and hidden.mention not in bobs
    alices = await private_reply(await run_command(fake, server["alice"], server.channel, "jam list"))
    assert public.mention in alices and hidden.mention in alices


async def test_ending_a_jam_cancels_the_queued_turn_drops_the_waiting_one_and_keeps_the_piece(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake, alice = fake_discord, server["alice"]
    thread = await start_jam(fake, server, "alice", "dub techno", turn_seconds=1)
    await turn_result(fake, thread, 1)
    bot.dispatcher.pause()
    await take_turn(fake, server["bob"], thread, prompt="delay chords")
    await take_turn(fake, server["mod"], thread, prompt="vinyl crackle")
    ending = await run_command(fake, alice, thread, "jam end")
    final = await ending.wait_for_final(lambda m: not m.is_loading and bool(m.attachments))
    assert "1 turn, 1.0 s" in final.content
    assert wav_seconds(audio_named(final, "-final.wav")) == pytest.approx(1.0)
    await fake.wait_for_message(thread, lambda m: thread.archived, 10)
    turns = await rows(
        bot,
        "SELECT jam_turns.status, jobs.status AS job FROM jam_turns LEFT JOIN jobs ON jobs.id = job_id ORDER BY jam_turns.id",
    )
    assert [(t["status"], t["job"]) for t in turns] == [
        ("done", "done"),
        ("failed", "cancelled"),
        ("dropped", None),
    ]
    assert thread.archived  # the cancelled turn's last status edit came before the archive
