"""Threads in the fake Discord, through the real discord.py client: what a bot may do, and what it may not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import discord
import pytest

from tests.fake_discord import (
    ChannelType,
    ErrorCode,
    FakeChannel,
    FakeDiscord,
    FakeGuild,
    FakeMember,
    Permission,
    running_bot,
)

pytestmark = pytest.mark.timeout(60)


class ThreadWatcher(discord.Client):
    """A client that records the thread events it receives."""

    def __init__(self) -> None:
        super().__init__(intents=discord.Intents.default())
        self.created: list[discord.Thread] = []
        self.updated: list[discord.Thread] = []

    async def on_thread_create(self, thread: discord.Thread) -> None:
        self.created.append(thread)

    async def on_thread_update(self, before: discord.Thread, after: discord.Thread) -> None:
        self.updated.append(after)


@dataclass
class World:
    fake: FakeDiscord
    guild: FakeGuild
    channel: FakeChannel
    alice: FakeMember
    bot: ThreadWatcher

    def text_channel(self) -> discord.TextChannel:
        channel = self.bot.get_channel(self.channel.id)
        assert isinstance(channel, discord.TextChannel)
        return channel


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with FakeDiscord() as fake:
        guild = fake.add_guild("Jam Club")
        channel = fake.add_channel(guild, "music")
        alice = fake.add_member(guild, "alice")
        client = ThreadWatcher()
        async with running_bot(fake, client):
            yield World(fake, guild, channel, alice, client)
        assert fake.unhandled_requests == []


async def _eventually(condition: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_a_public_thread_without_a_message_is_created_announced_and_postable(world: World) -> None:
    thread = await world.text_channel().create_thread(
        name="lofi piano", type=discord.ChannelType.public_thread
    )
    assert thread.type is discord.ChannelType.public_thread and thread.parent_id == world.channel.id
    fake_thread = world.fake.channels[thread.id]
    assert fake_thread.type == ChannelType.PUBLIC_THREAD and fake_thread.owner_id == world.fake.bot_user.id
    await _eventually(lambda: [t.id for t in world.bot.created] == [thread.id])
    await thread.send("turn 1")
    assert [m.content for m in world.fake.messages(fake_thread)] == ["turn 1"]
    post = world.fake.requests_to("POST", "/channels/{channel_id}/threads")[-1]
    assert post.payload is not None and post.payload["type"] == ChannelType.PUBLIC_THREAD


async def test_a_thread_name_must_be_1_to_100_characters(world: World) -> None:
    with pytest.raises(discord.HTTPException) as too_long:
        await world.text_channel().create_thread(name="x" * 101, type=discord.ChannelType.public_thread)
    assert too_long.value.status == 400 and too_long.value.code == ErrorCode.INVALID_FORM_BODY
    with pytest.raises(discord.HTTPException):
        await world.text_channel().create_thread(name="", type=discord.ChannelType.public_thread)
    assert not [c for c in world.fake.channels.values() if c.is_thread]


async def test_creating_a_thread_without_create_public_threads_is_missing_permissions() -> None:
    async with FakeDiscord() as fake:
        guild = fake.add_guild("Strict")
        channel = fake.add_channel(guild, "music", bot_denied=Permission.CREATE_PUBLIC_THREADS)
        client = ThreadWatcher()
        async with running_bot(fake, client):
            text = client.get_channel(channel.id)
            assert isinstance(text, discord.TextChannel)
            with pytest.raises(discord.Forbidden) as refused:
                await text.create_thread(name="jam", type=discord.ChannelType.public_thread)
            assert refused.value.code == ErrorCode.MISSING_PERMISSIONS
            assert not [c for c in fake.channels.values() if c.is_thread]


async def test_posting_in_a_thread_needs_send_messages_in_threads() -> None:
    async with FakeDiscord() as fake:
        guild = fake.add_guild("Strict")
        channel = fake.add_channel(guild, "music", bot_denied=Permission.SEND_MESSAGES_IN_THREADS)
        client = ThreadWatcher()
        async with running_bot(fake, client):
            text = client.get_channel(channel.id)
            assert isinstance(text, discord.TextChannel)
            thread = await text.create_thread(name="jam", type=discord.ChannelType.public_thread)
            await text.send("the parent channel is fine")
            with pytest.raises(discord.Forbidden) as refused:
                await thread.send("hello")
            assert refused.value.code == ErrorCode.MISSING_PERMISSIONS
            assert fake.messages(fake.channels[thread.id]) == []


async def test_archiving_makes_the_thread_read_only_and_a_new_post_unarchives_it(world: World) -> None:
    thread = await world.text_channel().create_thread(name="jam", type=discord.ChannelType.public_thread)
    first = await thread.send("turn 1")
    archived = await thread.edit(archived=True)
    fake_thread = world.fake.channels[thread.id]
    assert archived.archived and fake_thread.archived
    await _eventually(lambda: any(t.id == thread.id and t.archived for t in world.bot.updated))
    patch = world.fake.requests_to("PATCH", "/channels/{channel_id}")[-1]
    assert patch.payload == {"archived": True}
    # Read-only: no edits, deletions or reactions while archived.
    for attempt in (first.edit(content="changed"), first.add_reaction("👍"), first.delete()):
        with pytest.raises(discord.HTTPException) as refused:
            await attempt
        assert refused.value.status == 400 and refused.value.code == ErrorCode.THREAD_ARCHIVED
    with pytest.raises(discord.HTTPException) as rename:
        await thread.edit(name="renamed")
    assert rename.value.code == ErrorCode.THREAD_ARCHIVED
    # Sending a message unarchives an unlocked thread, as on Discord.
    await thread.send("after the end")
    assert not fake_thread.archived
    assert [m.content for m in world.fake.messages(fake_thread)] == ["turn 1", "after the end"]


async def test_locking_takes_manage_threads_and_a_locked_archived_thread_refuses_posts(world: World) -> None:
    thread = await world.text_channel().create_thread(name="jam", type=discord.ChannelType.public_thread)
    with pytest.raises(discord.Forbidden):
        await thread.edit(locked=True)  # the default bot role has no Manage Threads
    fake_thread = world.fake.channels[thread.id]
    fake_thread.locked = fake_thread.archived = True  # a moderator locked and archived it
    with pytest.raises(discord.Forbidden) as refused:
        await thread.send("still here?")
    assert refused.value.code == ErrorCode.MISSING_PERMISSIONS
    assert fake_thread.archived and world.fake.messages(fake_thread) == []


async def test_only_the_creator_or_manage_threads_may_archive_a_members_thread(world: World) -> None:
    members_thread = world.fake.channels[
        (await world.text_channel().create_thread(name="mine", type=discord.ChannelType.public_thread)).id
    ]
    members_thread.owner_id = world.alice.id  # as if alice had started it
    thread = world.bot.get_channel(members_thread.id)
    assert isinstance(thread, discord.Thread)
    with pytest.raises(discord.Forbidden):
        await thread.edit(archived=True)
    assert not members_thread.archived
