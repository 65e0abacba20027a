"""A member continues a 10-minute stereo MP3 through the context menu: the bot posts the whole piece,
in stereo, without holding the clip in its memory (one request, and four at once)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import pytest_asyncio

from bot.app import MusicGenBot
from bot.audio.editing import SAMPLE_RATE
from inference.media.ffmpeg import read_wav_layout
from tests.bot.long_clip_memory import MIB, can_measure_peak_memory, continue_at_once, make_long_stereo_mp3
from tests.bot.scenario_harness import Server, add_server, wait_for_status
from tests.fake_discord import FakeDiscord

pytestmark = [
    pytest.mark.skipif(not can_measure_peak_memory(), reason="needs Linux's /proc/self/clear_refs"),
]

CLIP_SECONDS = 600
# The targets: what one continuation, and four at once, may add to the bot's peak memory.
ONE_REQUEST_LIMIT = 100 * MIB
FOUR_REQUESTS_LIMIT = 300 * MIB


@pytest.fixture(scope="module")
def long_take(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    # 32 kbit/s: 2.4 MB, within the server's upload limit for members too.
    path = tmp_path_factory.mktemp("long") / "long-take.mp3"
    return make_long_stereo_mp3(path, seconds=CLIP_SECONDS, bitrate="32k")


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    # A 3 MiB upload limit: the 77 MB piece goes out as a 32 kbit/s MP3 (2.4 MB), so the fake
    # Discord, which keeps what it is sent in this same process, adds little to the measurement.
    return add_server(
        fake_discord, "Long takes", ("alice", "bob", "carol", "dave"), attachment_size_limit=3 * MIB
    )


@pytest.fixture(scope="module")
def scenario_limits() -> dict[str, object]:
    return {"max_attachment_mb": 10, "max_concurrent_downloads": 4}


async def test_a_ten_minute_stereo_clip_is_continued_in_stereo_without_the_bot_holding_it(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, long_take: bytes
) -> None:
    fake, alice = fake_discord, server["alice"]
    clip = fake.add_attachment("long-take.mp3", long_take)
    posted = await fake.post_user_message(alice, server.channel, attachments=[clip])

    started = time.monotonic()
    continued = await continue_at_once(fake, server.channel, [alice], posted)
    print(f"one continuation: +{continued.peak_increase_mib:.1f} MiB, {time.monotonic() - started:.1f} s")

    row = await wait_for_status(bot, continued.job_ids[0], "done")
    piece = read_wav_layout(row["output_path"])
    assert (piece.channels, piece.frames) == (2, (CLIP_SECONDS + 1) * SAMPLE_RATE)
    assert continued.results[0].attachments[0].filename.endswith(".mp3")
    assert continued.peak_increase_bytes < ONE_REQUEST_LIMIT, f"+{continued.peak_increase_mib:.0f} MiB"


async def test_four_members_continuing_it_at_once_stay_within_the_memory_budget(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, long_take: bytes
) -> None:
    fake = fake_discord
    members = [server[name] for name in ("alice", "bob", "carol", "dave")]
    clip = fake.add_attachment("long-take.mp3", long_take)
    posted = await fake.post_user_message(members[0], server.channel, attachments=[clip])

    started = time.monotonic()
    continued = await continue_at_once(fake, server.channel, members, posted)
    print(f"four continuations: +{continued.peak_increase_mib:.1f} MiB, {time.monotonic() - started:.1f} s")

    for job_id in continued.job_ids:
        row = await wait_for_status(bot, job_id, "done")
        assert read_wav_layout(Path(row["output_path"])).frames == (CLIP_SECONDS + 1) * SAMPLE_RATE
    assert continued.peak_increase_bytes < FOUR_REQUESTS_LIMIT, f"+{continued.peak_increase_mib:.0f} MiB"
