"""Discord misbehaves while members make music: the music still arrives, once, or the member is told.

The fake Discord injects the faults a bot meets on the real network (connection resets, 429s per
route and global, 5xx answers, a dropped gateway), into the real bot running real jobs on the
tiny models. Each story asserts on what appears in the channel and in SQLite.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio

from bot.app import MusicGenBot
from bot.pipeline import discord_faults
from bot.pipeline.discord_faults import DiscordTimeouts
from tests.bot.fault_helpers import delivered_once, generate, results_of
from tests.bot.scenario_harness import (
    Server,
    add_server,
    status_reads,
    stuck_jobs,
    wait_for_status,
)
from tests.fake_discord import FakeDiscord
from tests.waiting import until

FOLLOWUPS = "/webhooks/*/*"  # POST: a followup (the result, while the token lives)
TOKEN_EDITS = "/webhooks/*/*/messages/*"  # PATCH: status edits through the token
CHANNEL_POSTS = "/channels/*/messages"  # POST: the result once the token is gone
TOKEN_EDIT_ROUTE = "/webhooks/{application_id}/{token}/messages/{message_id}"
# Short enough for a test, long enough for the fake's answers on a loaded machine.
SHORT_TIMEOUTS = DiscordTimeouts(call_s=1.0, upload_bytes_per_s=1e9)


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    return add_server(fake_discord, "Flaky Wi-Fi", ("alice", "bob"))


@pytest.fixture(scope="module")
def scenario_limits() -> dict[str, object]:
    return {"max_pending_per_user": 5}


@pytest.fixture(autouse=True)
def no_fault_left_armed(fake_discord: FakeDiscord) -> object:
    yield
    fake_discord.faults.clear()


async def test_progress_edits_that_meet_connection_resets_do_not_lose_the_music(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server
) -> None:
    fake = fake_discord
    resets = fake.inject_connection_drop("PATCH", TOKEN_EDITS, times=3)
    job_id, _ = await generate(fake, server, "rain on a tin roof", duration=2)
    await delivered_once(bot, fake, server, job_id)
    assert resets.served >= 1  # the status edits really were cut off
    assert await stuck_jobs(bot) == []


async def test_a_result_upload_that_is_reset_is_posted_again_once(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server
) -> None:
    fake = fake_discord
    reset = fake.inject_connection_drop("POST", FOLLOWUPS)
    job_id, _ = await generate(fake, server, "bossa nova")
    await delivered_once(bot, fake, server, job_id)
    assert reset.served == 1
    uploads = fake.requests_to("POST", "/webhooks/{application_id}/{token}")
    assert [(r.dropped, r.status) for r in uploads][-2:] == [(True, 0), (False, 200)]


async def test_a_channel_post_whose_answer_is_lost_is_not_posted_twice(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server
) -> None:
    fake = fake_discord
    bot.dispatcher.pause()
    try:
        job_id, interaction = await generate(fake, server, "midnight radio")
        fake.expire_interaction(interaction)  # the result goes to the channel
        lost = fake.inject_connection_drop("POST", CHANNEL_POSTS, after_handling=True)
    finally:
        bot.dispatcher.resume()
    result = await delivered_once(bot, fake, server, job_id)
    assert lost.served == 1 and result.interaction is None
    posts = [
        r
        for r in fake.requests_to("POST", "/channels/{channel_id}/messages")
        if r.payload and r.payload.get("nonce") == f"job-{job_id}"
    ]
    assert len(posts) == 2  # the retry got the first message back instead of making another


async def test_a_followup_whose_answer_is_lost_is_not_posted_twice(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server
) -> None:
    fake = fake_discord
    lost = fake.inject_connection_drop("POST", FOLLOWUPS, after_handling=True)
    job_id, interaction = await generate(fake, server, "a letter lost in the post")
    result = await delivered_once(bot, fake, server, job_id)  # the row names this message
    assert lost.served == 1
    assert result.interaction is interaction and result in interaction.followups  # the followup made it
    uploads = fake.requests_to("POST", "/webhooks/{application_id}/{token}")
    assert [(r.dropped, r.status) for r in uploads][-1] == (True, 200)  # and was not sent again


async def test_a_hung_status_edit_is_given_up_after_its_timeout_and_the_music_still_arrives(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_discord
    monkeypatch.setattr(discord_faults, "DISCORD_TIMEOUTS", SHORT_TIMEOUTS)  # status messages made from now
    hang = fake.inject_hang("PATCH", TOKEN_EDITS, hold_s=30)  # without a timeout: the lock held 30 s
    first_request = len(fake.requests)
    job_id, interaction = await generate(fake, server, "a line that went quiet")
    loop = asyncio.get_running_loop()
    await until(lambda: hang.served == 1, "the first status edit hangs", timeout=20)
    assert interaction.token in hang.served_paths[0]
    hung_at = loop.time()

    def edited_through_the_token() -> bool:
        return any(
            r.route == TOKEN_EDIT_ROUTE and r.method == "PATCH" and r.status == 200
            for r in fake.requests[first_request:]
        )

    # The token's lock was freed when the edit was given up: the next edit through it goes through.
    await until(edited_through_the_token, "an edit after the hung one goes through", timeout=20)
    assert loop.time() - hung_at < 10
    await asyncio.wait_for(delivered_once(bot, fake, server, job_id), 20)
    status = interaction.original_message
    assert status is not None
    await status_reads(fake, status, f"Job #{job_id} is done")
    assert hang.served == 1 and await stuck_jobs(bot) == []


async def test_a_result_upload_whose_answer_hangs_is_given_up_and_not_posted_twice(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_discord
    monkeypatch.setattr(bot.dispatcher.poster, "timeouts", SHORT_TIMEOUTS)
    monkeypatch.setattr(bot.dispatcher.poster, "retry_delays_s", (0.1, 0.1, 0.1))
    hang = fake.inject_hang("POST", FOLLOWUPS, after_handling=True, hold_s=30)
    job_id, interaction = await generate(fake, server, "posted, then silence")
    # Without a timeout the upload would wait for the answer that never comes (30 s here, 300 s live).
    result = await asyncio.wait_for(delivered_once(bot, fake, server, job_id), 20)
    assert hang.served_paths == [f"/webhooks/{fake.application_id}/{interaction.token}"]
    assert result in interaction.followups  # the message the hung upload made, found and kept


@pytest.mark.parametrize("is_global", [False, True], ids=["route", "global"])
async def test_a_rate_limited_result_upload_waits_and_is_delivered(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server, is_global: bool
) -> None:
    fake = fake_discord
    limited = fake.inject_rate_limit("POST", FOLLOWUPS, retry_after=0.3, is_global=is_global, times=2)
    job_id, _ = await generate(fake, server, f"slow jam {'global' if is_global else 'route'}")
    await delivered_once(bot, fake, server, job_id)
    assert limited.served == 2
    # The 429s were waited out, not hammered: the upload was refused twice, then went through.
    uploads = fake.requests_to("POST", "/webhooks/{application_id}/{token}")
    assert [r.status for r in uploads][-3:] == [429, 429, 200]


async def test_a_result_upload_rate_limited_past_discord_pys_five_tries_is_tried_again_later(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server
) -> None:
    fake = fake_discord
    bot.dispatcher.poster.retry_delays_s = (0.1, 0.1, 0.1)
    limited = fake.inject_rate_limit("POST", FOLLOWUPS, retry_after=0.05, times=7)
    job_id, _ = await generate(fake, server, "patience")
    await delivered_once(bot, fake, server, job_id)
    assert limited.served == 7  # discord.py gave up after five; the bot's next attempt waited out two more


async def test_a_result_upload_meeting_server_errors_is_retried_and_delivered(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server
) -> None:
    fake = fake_discord
    errors = fake.inject_server_error("POST", FOLLOWUPS, status=502, times=2)
    job_id, _ = await generate(fake, server, "dub techno")
    await delivered_once(bot, fake, server, job_id)
    assert errors.served == 2


async def test_a_gateway_dropped_mid_job_is_resumed_and_the_music_delivered(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server
) -> None:
    fake = fake_discord
    resumes = fake.gateway.resume_count
    job_id, _ = await generate(fake, server, "storm", duration=3)
    await wait_for_status(bot, job_id, "running")
    await fake.drop_gateway(code=4000)  # a resumable drop; waits until the bot has RESUMEd
    await delivered_once(bot, fake, server, job_id)
    assert fake.gateway.resume_count == resumes + 1
    # The bot is still fully there: a new command after the resume is answered and delivered.
    next_id, _ = await generate(fake, server, "after the storm")
    await delivered_once(bot, fake, server, next_id)


async def test_a_result_that_cannot_be_uploaded_at_all_is_reported_and_kept(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server
) -> None:
    fake = fake_discord
    bot.dispatcher.poster.retry_delays_s = (0.1, 0.1, 0.1)  # the same bounded retry, quicker
    outage = fake.inject_connection_drop("POST", FOLLOWUPS, times=1000)
    job_id, interaction = await generate(fake, server, "lost signal")
    row = await wait_for_status(bot, job_id, "failed")
    assert outage.served == 4  # the first try and three retries, then it gave up
    assert "could not post the result" in row["error"]
    assert Path(row["output_path"]).is_file()  # the music is kept
    status = interaction.original_message
    assert status is not None
    await status_reads(fake, status, f"Job #{job_id} is made, but I could not reach Discord")
    assert f"`/replay {job_id}`" in status.content
    assert results_of(fake, server, job_id) == []
    assert await stuck_jobs(bot) == []

    fake.faults.clear()
    next_id, _ = await generate(fake, server, "signal back")
    await delivered_once(bot, fake, server, next_id)


async def test_all_those_faults_kept_the_bot_far_below_discords_ban_line(fake_discord: FakeDiscord) -> None:
    assert fake_discord.invalid_requests_within(600) < 20  # Discord bans at 10,000 per 10 minutes
