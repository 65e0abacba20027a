"""Attached clips are fetched under limits before any job exists: one at a time per member, a few
at a time for the whole bot, streamed to disk as they arrive."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from bot.app import MusicGenBot
from tests.bot.scenario_harness import (
    Server,
    add_server,
    job_count,
    private_reply,
    queued_job_id,
    run_command,
    wait_for_status,
)
from tests.fake_discord import FakeDiscord


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    return add_server(fake_discord, "Slow network", ("alice", "bob", "carol"))


@pytest.fixture(scope="module")
def scenario_limits() -> dict[str, object]:
    return {"max_concurrent_downloads_per_member": 1, "max_concurrent_downloads": 2}


async def _until(condition: object, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_downloads_are_streamed_to_disk_one_per_member_and_two_for_the_bot(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server, audio_clips: dict[str, bytes]
) -> None:
    clip_bytes = audio_clips["tune.wav"]
    clips = {
        name: fake_discord.add_attachment(f"{name}.wav", clip_bytes)
        for name in ("alice", "alice2", "bob", "carol")
    }
    fake_discord.hold_cdn_downloads()
    try:

        def generate(member: str, clip: str) -> asyncio.Task:
            return asyncio.ensure_future(
                run_command(
                    fake_discord,
                    server[member],
                    server.channel,
                    "generate",
                    prompt="x",
                    model_version="melody",
                    input_audio=clips[clip],
                    duration=1,
                )
            )

        alice_first = await generate("alice", "alice")
        # The first KiB is on disk while the rest is still on its way: streamed, not held in memory.
        await _until(lambda: any(p.stat().st_size >= 1024 for p in bot.uploads_dir.iterdir()))
        (partial,) = list(bot.uploads_dir.iterdir())
        assert partial.stat().st_size < len(clip_bytes)

        rows_before = await job_count(bot)
        alice_second = await generate("alice", "alice2")
        assert "still checking the clip you sent" in await private_reply(alice_second)
        assert clips["alice2"] not in fake_discord.cdn_downloads
        assert await job_count(bot) == rows_before

        bob = await generate("bob", "bob")
        carol = await generate("carol", "carol")
        await _until(lambda: clips["bob"] in fake_discord.cdn_downloads)
        await asyncio.sleep(0.3)
        assert clips["carol"] not in fake_discord.cdn_downloads, "a third download started beside two"
    finally:
        fake_discord.release_cdn_downloads()
    for interaction in (alice_first, bob, carol):
        await wait_for_status(bot, await queued_job_id(interaction), "done")
    assert bot.clip_intake.in_flight(server["alice"].id) == 0
