"""Every way of asking for music passes the same gates and shows members' text the same way.

Each entry point (a slash command, a button, a form, the context menu, a reply, a jam command, a
mention in a jam thread) is run against each of the server's gates. A refusal is an answer only
the member sees (a reply, for the entry points that are messages: a reply cannot be private), and
it leaves nothing behind: no job row, no jam, no turn, no thread, no stored clip, no public message.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from bot.app import MusicGenBot
from tests.bot.scenario_harness import (
    Server,
    add_server,
    job_count,
    make_sine,
    posted_result,
    private_reply,
    queued_job_id,
    run_command,
    stuck_jobs,
    wait_for_status,
)
from tests.bot.test_jam_scenarios import take_turn
from tests.fake_discord import FakeChannel, FakeDiscord, FakeMessage, Permission

CONTEXT_MENU = "Continue with MusicGen"


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    server = add_server(fake_discord, "Gates", ("alice", "bob"))
    server.members["elsewhere"] = fake_discord.add_member(server.guild, "elsewhere-admin")
    fake_discord.add_channel(server.guild, "elsewhere")
    return server


@pytest.fixture(scope="module")
def scenario_limits() -> dict[str, object]:
    return {"max_pending_per_user": 3}


@dataclass
class World:
    """What the entry points act on: a result with its buttons, and an open jam with its piece."""

    result: FakeMessage
    job_id: int
    thread: FakeChannel


def elsewhere(server: Server) -> FakeChannel:
    return next(c for c in server.guild.channels.values() if c.name == "elsewhere")


@pytest_asyncio.fixture(scope="module")
async def world(fake_discord: FakeDiscord, server: Server, bot: MusicGenBot) -> World:
    fake, alice = fake_discord, server["alice"]
    asked = await run_command(fake, alice, server.channel, "generate", prompt="a tune", duration=1)
    job_id = await queued_job_id(asked)
    result = await posted_result(fake, server.channel, job_id)
    await wait_for_status(bot, job_id, "done")
    # Bob has made something today too, so that a quota can be used up for him (it is at least 1).
    bobs = await queued_job_id(await run_command(fake, server["bob"], server.channel, "generate", prompt="b"))
    await wait_for_status(bot, bobs, "done")
    started = await run_command(fake, alice, server.channel, "jam start", prompt="gates jam", turn_seconds=1)
    await started.wait_for_final(lambda m: not m.is_loading and "started a jam" in m.content)
    thread = next(c for c in fake.channels.values() if c.is_thread and c.name == "gates jam")
    await fake.wait_for_message(
        thread, lambda m: m.author is fake.bot_user and "**Turn 1 of" in m.content and bool(m.attachments), 90
    )
    return World(result, job_id, thread)


# -- the entry points: each returns what the member was told ------------------------------------------
EntryPoint = Callable[[FakeDiscord, Server, World], Awaitable[str]]


async def generate(fake: FakeDiscord, server: Server, world: World) -> str:
    return await private_reply(
        await run_command(fake, server["alice"], server.channel, "generate", prompt="more", duration=1)
    )


async def replay(fake: FakeDiscord, server: Server, world: World) -> str:
    return await private_reply(
        await run_command(fake, server["alice"], server.channel, "replay", job_id=world.job_id)
    )


def button(action: str) -> EntryPoint:
    async def press(fake: FakeDiscord, server: Server, world: World) -> str:
        pressed = await fake.click_button(server["alice"], world.result, f"musicgen:{action}:{world.job_id}")
        await pressed.wait_for_response()
        return await private_reply(pressed)

    press.__name__ = f"{action}_button"
    return press


async def context_menu(fake: FakeDiscord, server: Server, world: World) -> str:
    opened = await fake.invoke_message_command(server["alice"], world.result, CONTEXT_MENU)
    await opened.wait_for_response()
    return await private_reply(opened)


async def reply(fake: FakeDiscord, server: Server, world: World) -> str:
    asked = await fake.post_user_message(
        server["alice"], server.channel, f"{fake.bot_user.mention} 2s add brass", reply_to=world.result
    )
    return await reply_to(fake, server.channel, asked)


async def jam_start(fake: FakeDiscord, server: Server, world: World) -> str:
    return await private_reply(
        await run_command(fake, server["alice"], server.channel, "jam start", prompt="another jam")
    )


async def jam_add(fake: FakeDiscord, server: Server, world: World) -> str:
    return await private_reply(
        await run_command(fake, server["bob"], world.thread, "jam add", prompt="drums")
    )


async def jam_mention(fake: FakeDiscord, server: Server, world: World) -> str:
    asked = await fake.post_user_message(server["bob"], world.thread, f"{fake.bot_user.mention} 1s shaker")
    return await reply_to(fake, world.thread, asked)


async def reply_to(fake: FakeDiscord, channel: FakeChannel, asked: FakeMessage) -> str:
    answer = await fake.wait_for_message(
        channel, lambda m: m.author is fake.bot_user and m.reference is asked
    )
    assert "Job #" not in answer.content and not answer.attachments
    return answer.content


ENTRY_POINTS: dict[str, EntryPoint] = {
    "/generate": generate,
    "/replay": replay,
    "re-roll button": button("reroll"),
    "continue button": button("continue"),
    "use as melody button": button("melody"),
    "context menu": context_menu,
    "reply": reply,
    "/jam start": jam_start,
    "/jam add": jam_add,
    "mention in a jam thread": jam_mention,
}
# Who asks at each entry point: bob takes turns in alice's jam.
ACTOR = {"/jam add": "bob", "mention in a jam thread": "bob"}
FEATURE_OF = {"reply": "replies", "/jam start": "jams", "/jam add": "jams", "mention in a jam thread": "jams"}


# -- the gates: each closes, says what the member must read, and opens again -------------------------
@dataclass(frozen=True)
class Gate:
    close: Callable[[FakeDiscord, Server, MusicGenBot, str], Awaitable[None]]
    open: Callable[[FakeDiscord, Server, MusicGenBot, str], Awaitable[None]]
    refusal: str


async def allow_only_elsewhere(fake: FakeDiscord, server: Server, bot: MusicGenBot, entry: str) -> None:
    await bot.controls.set_channel(server.guild.id, elsewhere(server).id, True, by=server["elsewhere"].id)


async def allow_everywhere(fake: FakeDiscord, server: Server, bot: MusicGenBot, entry: str) -> None:
    await bot.controls.set_channel(server.guild.id, elsewhere(server).id, False, by=server["elsewhere"].id)


async def switch_off(fake: FakeDiscord, server: Server, bot: MusicGenBot, entry: str) -> None:
    await bot.controls.set_feature(server.guild.id, FEATURE_OF[entry], False, by=server["alice"].id)  # type: ignore[arg-type]


async def switch_on(fake: FakeDiscord, server: Server, bot: MusicGenBot, entry: str) -> None:
    await bot.controls.set_feature(server.guild.id, FEATURE_OF[entry], True, by=server["alice"].id)  # type: ignore[arg-type]


async def use_up_quota(fake: FakeDiscord, server: Server, bot: MusicGenBot, entry: str) -> None:
    actor = server[ACTOR.get(entry, "alice")]
    made = await bot.controls.jobs_today(server.guild.id, actor.id)
    await bot.controls.set_daily_quota(server.guild.id, made, by=server["elsewhere"].id)


async def lift_quota(fake: FakeDiscord, server: Server, bot: MusicGenBot, entry: str) -> None:
    await bot.controls.set_daily_quota(server.guild.id, None, by=server["alice"].id)


async def fill_queue(fake: FakeDiscord, server: Server, bot: MusicGenBot, entry: str) -> None:
    bot.scheduler.set_guild_limit(server.guild.id, 0)


async def empty_queue(fake: FakeDiscord, server: Server, bot: MusicGenBot, entry: str) -> None:
    bot.scheduler.set_guild_limit(server.guild.id, None)


async def deny_attach_files(fake: FakeDiscord, server: Server, bot: MusicGenBot, entry: str) -> None:
    await fake.set_bot_denied(server.channel, Permission.ATTACH_FILES)


async def allow_attach_files(fake: FakeDiscord, server: Server, bot: MusicGenBot, entry: str) -> None:
    await fake.set_bot_denied(server.channel, 0)


GATES = {
    "channel not allowed": Gate(allow_only_elsewhere, allow_everywhere, "I make music only in"),
    "switch off": Gate(switch_off, switch_on, "switched off on this server"),
    "quota used": Gate(use_up_quota, lift_quota, "this server's daily limit"),
    "queue full": Gate(fill_queue, empty_queue, "queue is full"),
    "missing permission": Gate(deny_attach_files, allow_attach_files, "**Attach Files**"),
}


@dataclass(frozen=True)
class Traces:
    """Everything a job, a jam or a clip leaves behind."""

    jobs: int
    jams: int
    turns: int
    threads: int
    uploads: int
    downloads: int
    public_messages: int

    @classmethod
    async def of(cls, fake: FakeDiscord, server: Server, bot: MusicGenBot) -> Traces:
        async def count(table: str) -> int:
            async with bot.database.connection.execute(f"SELECT COUNT(*) FROM {table}") as cursor:
                row = await cursor.fetchone()
            return int(row[0]) if row else 0

        channels = [c for c in fake.channels.values() if c.guild is server.guild]
        return cls(
            jobs=await job_count(bot),
            jams=await count("jams"),
            turns=await count("jam_turns"),
            threads=sum(c.is_thread for c in channels),
            uploads=len(list(Path(bot.uploads_dir).iterdir())),
            # A refusal comes before the clip is fetched from Discord's CDN.
            downloads=len(fake.cdn_downloads),
            public_messages=sum(len(fake.messages(c)) for c in channels),
        )


CASES = [
    pytest.param((entry, gate), id=f"{entry} | {gate}")
    for gate in GATES
    for entry in ENTRY_POINTS
    if gate != "switch off" or entry in FEATURE_OF
]


@pytest_asyncio.fixture
async def gated(
    request: pytest.FixtureRequest, fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, world: World
) -> AsyncIterator[tuple[str, Gate]]:
    entry, gate_name = request.param
    gate = GATES[gate_name]
    await gate.close(fake_discord, server, bot, entry)
    try:
        yield entry, gate
    finally:
        await gate.open(fake_discord, server, bot, entry)


@pytest.mark.parametrize("gated", CASES, indirect=True)
async def test_every_entry_point_is_refused_privately_by_every_gate_and_leaves_nothing_behind(
    gated: tuple[str, Gate], fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, world: World
) -> None:
    entry, gate = gated
    before = await Traces.of(fake_discord, server, bot)
    told = await ENTRY_POINTS[entry](fake_discord, server, world)
    assert gate.refusal in told
    after = await Traces.of(fake_discord, server, bot)
    # A message entry point's refusal is its one reply (plus the member's own message).
    expected_public = before.public_messages + (2 if entry in ("reply", "mention in a jam thread") else 0)
    assert after == Traces(
        before.jobs,
        before.jams,
        before.turns,
        before.threads,
        before.uploads,
        before.downloads,
        expected_public,
    ), entry


# -- hostile text ------------------------------------------------------------------------------------------
HOSTILE = "[Claim your free Nitro](https://evil.example/login) lofi @everyone"
HOSTILE_FILE = "[free](https://evil.example)@everyone.wav"
# A masked link to the member's address that Discord would render: `](https://evil...` unescaped.
# (The bot's own links, to a source message on discord.com, are meant to render.)
UNESCAPED_LINK = re.compile(r"(?<!\\)\]\(\s*<?https?://evil")
UNESCAPED_EVERYONE = re.compile(r"(?<!\\)@everyone")


def bot_texts(fake: FakeDiscord, server: Server) -> list[str]:
    """Everything the bot wrote in the server (contents, embeds, file names) and its channels' names."""
    channels = [c for c in fake.channels.values() if c.guild is server.guild]
    texts = []
    for channel in channels:
        for message in fake.messages(channel, include_ephemeral=True):
            if message.author is fake.bot_user:
                texts.append(message.text)
                texts.extend(a.filename for a in message.attachments)
        texts.append(channel.name)
    return texts


async def test_a_hostile_prompt_and_file_name_are_shown_as_typed_by_every_entry_point(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, world: World, tmp_path: Path
) -> None:
    fake, alice, bob = fake_discord, server["alice"], server["bob"]
    clip = fake.add_attachment(
        HOSTILE_FILE, make_sine(tmp_path / "clip.wav", seconds=1.0), content_type="audio/wav"
    )

    asked = await run_command(
        fake,
        alice,
        server.channel,
        "generate",
        prompt=HOSTILE,
        duration=1,
        input_audio=clip,
        continuation=True,
    )
    job_id = await queued_job_id(asked)
    result = await posted_result(fake, server.channel, job_id)
    await all_done(bot)
    details = await fake.click_button(alice, result, f"musicgen:details:{job_id}")
    await details.wait_for_response()
    await queued_job_id(await run_command(fake, alice, server.channel, "replay", job_id=job_id))
    await all_done(bot)
    await queued_job_id(await fake.click_button(alice, result, f"musicgen:reroll:{job_id}"))
    await all_done(bot)
    opened = await fake.click_button(alice, result, f"musicgen:melody:{job_id}")
    await opened.wait_for_response()
    await queued_job_id(await fake.submit_modal(alice, opened, {"prompt": HOSTILE}))
    await all_done(bot)
    riff = fake.add_attachment(
        HOSTILE_FILE, make_sine(tmp_path / "riff.wav", seconds=1.0), content_type="audio/wav"
    )
    shared = await fake.post_user_message(alice, server.channel, "my riff", attachments=[riff])
    menu = await fake.invoke_message_command(bob, shared, CONTEXT_MENU)
    await menu.wait_for_response()
    await queued_job_id(await fake.submit_modal(bob, menu, {"prompt": HOSTILE, "seconds": "1"}))
    await all_done(bot)
    menu = await fake.invoke_message_command(alice, result, CONTEXT_MENU)
    await menu.wait_for_response()
    await queued_job_id(await fake.submit_modal(alice, menu, {"prompt": HOSTILE, "seconds": "1"}))
    await all_done(bot)
    by_reply = await fake.post_user_message(
        bob, server.channel, f"{fake.bot_user.mention} 1s {HOSTILE}", reply_to=result
    )
    await fake.wait_for_message(
        server.channel,
        lambda m: m.author is fake.bot_user and m.reference is by_reply and "Job #" in m.content,
    )
    await all_done(bot)
    started = await run_command(fake, bob, server.channel, "jam start", prompt=HOSTILE, turn_seconds=1)
    await started.wait_for_final(lambda m: not m.is_loading and "started a jam" in m.content)
    thread = next(c for c in fake.channels.values() if c.is_thread and "Claim your free Nitro" in c.name)
    await take_turn(fake, alice, thread, prompt=HOSTILE)
    await fake.post_user_message(bob, thread, f"{fake.bot_user.mention} 1s {HOSTILE}")
    await fake.wait_for_message(
        thread,
        lambda m: m.author is fake.bot_user and "**Turn 3 of" in m.content and bool(m.attachments),
        120,
    )
    listed = await run_command(fake, alice, server.channel, "jam list")
    assert "Claim your free Nitro" in listed.messages[0].content
    ended = await run_command(fake, bob, thread, "jam end")
    await ended.wait_for_final(lambda m: not m.is_loading and "The jam is over" in m.content, 60)

    texts = bot_texts(fake, server)
    shown_in = [text for text in texts if "Claim your free Nitro" in text]
    assert len(shown_in) >= 12, "the prompt appears in results, details, turns, credits, the list"
    assert not [text for text in texts if UNESCAPED_LINK.search(text)]
    assert not [text for text in texts if UNESCAPED_EVERYONE.search(text)]
    bots_files = [
        a.filename
        for c in fake.channels.values()
        for m in fake.messages(c, include_ephemeral=True)
        if m.author is fake.bot_user
        for a in m.attachments
    ]
    assert bots_files and not [name for name in bots_files if "evil" in name]


async def all_done(bot: MusicGenBot) -> None:
    """Wait until every job asked for so far has ended (so the next one is not refused by the cap)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while await stuck_jobs(bot):
        assert loop.time() < deadline, "the jobs asked for did not end"
        await asyncio.sleep(0.05)
