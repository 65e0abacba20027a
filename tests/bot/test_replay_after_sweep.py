"""/replay of a job whose upload was swept by the retention policy: the bot posts again the audio it
posted for that job (downloaded back from Discord), or says why it cannot."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest_asyncio

from bot.app import MusicGenBot
from tests.bot.scenario_harness import (
    Server,
    add_server,
    job_count,
    job_row,
    posted_result,
    private_reply,
    queued_job_id,
    run_command,
    wait_for_status,
)
from tests.fake_discord import FakeDiscord


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    return add_server(fake_discord, "Old jobs", ("alice", "bob"))


async def test_a_replay_whose_clip_was_swept_reposts_the_audio_from_discord(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server, audio_clips: dict[str, bytes]
) -> None:
    tune = fake_discord.add_attachment("tune.mp3", audio_clips["tune.mp3"])
    made = await run_command(
        fake_discord, server["bob"], server.channel, "generate",
        prompt="harp", model_version="melody", input_audio=tune, duration=1,
    )  # fmt: skip
    job_id = await queued_job_id(made)
    original = await posted_result(fake_discord, server.channel, job_id)
    row = await wait_for_status(bot, job_id, "done")

    # Forty days later the hourly sweep removes the upload (and the output) of this finished job.
    long_ago = time.time() - 40 * 86400
    for stored in (row["input_audio"], row["output_path"]):
        os.utime(stored, (long_ago, long_ago))
    swept = await bot.janitor.sweep()
    assert Path(row["input_audio"]) in swept and not Path(row["input_audio"]).exists()

    rows_before = await job_count(bot)
    replay = await run_command(fake_discord, server["alice"], server.channel, "replay", job_id=job_id)
    again = await replay.wait_for_final(lambda m: not m.is_ephemeral and bool(m.attachments), timeout=30)
    assert again.attachments[0].data == original.attachments[0].data
    assert "no longer stored" in again.content and server["alice"].user in again.mentions
    assert original.attachments[0] in fake_discord.cdn_downloads  # fetched back from Discord's CDN
    assert await job_count(bot) == rows_before  # nothing to generate: no job
    assert list(bot.uploads_dir.iterdir()) == []  # the downloaded copy is not kept

    # A moderator deletes the result message: now there is nothing left to replay.
    original.deleted = True
    gone = await private_reply(
        await run_command(fake_discord, server["alice"], server.channel, "replay", job_id=job_id)
    )
    assert f"Job #{job_id}'s input audio is no longer stored and its result is not on Discord" in gone
    assert (await job_row(bot, job_id))["status"] == "done"
