"""The fake Discord's injected faults, met by the real discord.py client as it would meet them on Discord.

429s must be retried by discord.py (so they carry everything Discord sends), 5xx answers are retried
a few times, a reset connection surfaces as errno 104 with nothing done on Discord's side (or, after
handling, with the message created and only the answer lost), and invalid requests are counted the
way Discord counts them towards its ban.
"""

from __future__ import annotations

import asyncio
import errno
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import discord
import pytest

from tests.fake_discord import FakeChannel, FakeDiscord, FakeGuild, running_bot

pytestmark = pytest.mark.timeout(60)

MESSAGES_ROUTE = "/channels/{channel_id}/messages"


@dataclass
class Connected:
    fake: FakeDiscord
    guild: FakeGuild
    channel: FakeChannel
    bot: discord.Client

    @property
    def text_channel(self) -> discord.TextChannel:
        channel = self.bot.get_channel(self.channel.id)
        assert isinstance(channel, discord.TextChannel)
        return channel

    def statuses(self, method: str = "POST", route: str = MESSAGES_ROUTE) -> list[int]:
        return [record.status for record in self.fake.requests_to(method, route)]


@pytest.fixture
async def connected() -> AsyncIterator[Connected]:
    async with FakeDiscord() as fake:
        guild = fake.add_guild("Faulty Club")
        channel = fake.add_channel(guild, "music")
        client = discord.Client(intents=discord.Intents.default())
        async with running_bot(fake, client):
            yield Connected(fake, guild, channel, client)
        assert fake.unhandled_requests == []


def a_file() -> discord.File:
    return discord.File(io.BytesIO(b"R" * 200_000), filename="music.wav")


async def test_a_route_429_is_waited_out_and_counted_as_an_invalid_request(connected: Connected) -> None:
    fake = connected.fake
    fault = fake.inject_rate_limit("POST", "/channels/*/messages", retry_after=0.1, times=2)
    sent = await connected.text_channel.send("after two 429s", file=a_file())
    assert connected.statuses() == [429, 429, 200]
    assert fault.served == 2 and fake.faults.pending == 0
    assert [m.content for m in fake.bot_messages(connected.channel)] == ["after two 429s"]
    assert sent.attachments[0].size == 200_000  # the file was sent again in full on the retry
    assert fake.invalid_request_count == 2 and fake.invalid_requests_within(600) == 2


async def test_a_global_429_holds_every_route_until_retry_after(connected: Connected) -> None:
    fake = connected.fake
    fake.inject_rate_limit("*", "/channels/*", retry_after=0.2, is_global=True)
    sent = await connected.text_channel.send("after the global limit")
    assert sent.content == "after the global limit"
    (limited,) = [r for r in fake.requests if r.status == 429]
    assert limited.route == MESSAGES_ROUTE
    assert connected.statuses() == [429, 200]


async def test_a_429_without_via_would_be_a_ban_so_the_fake_always_sends_it(connected: Connected) -> None:
    fake = connected.fake
    fake.inject_rate_limit("GET", "/channels/*", retry_after=0.05)
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{fake.api_base}/channels/{connected.channel.id}",
            headers={"Authorization": f"Bot {fake.bot_token}"},
        ) as response:
            body = await response.json()
            assert response.status == 429 and response.headers["Content-Type"] == "application/json"
            assert response.headers["Via"] and response.headers["X-RateLimit-Remaining"] == "0"
            assert float(response.headers["X-RateLimit-Reset-After"]) == pytest.approx(0.05)
            assert body["retry_after"] == 0.05 and body["global"] is False


async def test_a_bucket_is_whole_again_at_its_reset_as_its_headers_announce(connected: Connected) -> None:
    """Discord's windows are fixed: a burst released at the announced reset gets every slot (a
    sliding window would free only the slot of the window's first request then)."""
    fake = connected.fake
    # Deleting messages: 5 a second in a channel. Unknown messages are answered 404, after the bucket.
    url = f"{fake.api_base}/channels/{connected.channel.id}/messages/{{}}"
    headers = {"Authorization": f"Bot {fake.bot_token}"}
    async with aiohttp.ClientSession() as session:

        async def delete(message_id: int) -> aiohttp.ClientResponse:
            async with session.delete(url.format(message_id), headers=headers) as response:
                return response

        await delete(1)
        await asyncio.sleep(0.5)  # the rest of the bucket later in its window
        last = [await delete(message_id) for message_id in range(2, 6)][-1]
        assert last.status == 404 and last.headers["X-RateLimit-Remaining"] == "0"
        await asyncio.sleep(float(last.headers["X-RateLimit-Reset-After"]) + 0.05)
        burst = [await delete(message_id) for message_id in range(6, 11)]
    assert [response.status for response in burst] == [404] * 5
    assert burst[-1].headers["X-RateLimit-Remaining"] == "0"


async def test_a_server_error_is_retried_by_discord_py(connected: Connected) -> None:
    fake = connected.fake
    fake.inject_server_error("POST", "/channels/*/messages", status=502)
    await connected.text_channel.send("after a 502")
    assert connected.statuses() == [502, 200]
    assert fake.invalid_request_count == 0  # 5xx answers do not count towards the ban


async def test_persistent_server_errors_reach_the_caller_as_discord_server_error(
    connected: Connected,
) -> None:
    fake = connected.fake
    fake.inject_server_error("PATCH", "/channels/*/messages/*", status=500, times=100)
    message = await connected.text_channel.send("to edit")
    with pytest.raises(discord.DiscordServerError):
        await asyncio.wait_for(message.edit(content="never"), 40)
    fake.faults.clear()
    assert connected.statuses("PATCH", "/channels/{channel_id}/messages/{message_id}") == [500] * 5
    assert fake.bot_messages(connected.channel)[0].content == "to edit"


async def test_a_connection_reset_mid_upload_reaches_the_bot_as_errno_104_and_posts_nothing(
    connected: Connected,
) -> None:
    fake = connected.fake
    fake.inject_connection_drop("POST", "/channels/*/messages")
    with pytest.raises(aiohttp.ClientOSError) as raised:
        await connected.text_channel.send("lost in transit", file=a_file())
    assert raised.value.errno == errno.ECONNRESET
    assert fake.bot_messages(connected.channel) == []
    (record,) = fake.requests_to("POST", MESSAGES_ROUTE)
    assert record.dropped and record.status == 0

    await connected.text_channel.send("the next one", file=a_file())  # the client recovers
    assert [m.content for m in fake.bot_messages(connected.channel)] == ["the next one"]


async def test_a_reset_after_handling_loses_the_answer_but_the_message_exists(connected: Connected) -> None:
    fake = connected.fake
    fake.inject_connection_drop("POST", "/channels/*/messages", after_handling=True)
    with pytest.raises(aiohttp.ClientOSError):
        await connected.text_channel.send("made it, but nobody heard")
    assert [m.content for m in fake.bot_messages(connected.channel)] == ["made it, but nobody heard"]
    (record,) = fake.requests_to("POST", MESSAGES_ROUTE)
    assert record.dropped and record.status == 200


async def test_an_enforced_nonce_makes_a_retried_post_return_the_first_message(connected: Connected) -> None:
    fake = connected.fake
    fake.inject_connection_drop("POST", "/channels/*/messages", after_handling=True)
    with pytest.raises(aiohttp.ClientOSError):
        await connected.text_channel.send("once", nonce="job-7-result")
    again = await connected.text_channel.send("once", nonce="job-7-result")
    (only,) = fake.bot_messages(connected.channel)
    assert again.id == only.id

    different = await connected.text_channel.send("twice", nonce="job-8-result")
    assert different.id != only.id
    fake.advance_clock(600)  # "checked for uniqueness in the past few minutes" only
    late = await connected.text_channel.send("once", nonce="job-7-result")
    assert late.id != only.id


async def test_a_webhook_edit_reset_is_the_same_errno_104(connected: Connected) -> None:
    fake = connected.fake
    fake.inject_connection_drop("PATCH", "/channels/*/messages/*")
    message = await connected.text_channel.send("status")
    with pytest.raises(aiohttp.ClientOSError) as raised:
        await message.edit(content="progress 50%")
    assert raised.value.errno == errno.ECONNRESET
    assert fake.bot_messages(connected.channel)[0].content == "status"


async def test_invalid_requests_are_counted_in_a_ten_minute_window(connected: Connected) -> None:
    fake = connected.fake
    fake.inject_rate_limit("POST", "/channels/*/messages", retry_after=0.01, times=3)
    await connected.text_channel.send("after three 429s")
    assert fake.invalid_requests_within(600) == 3
    fake.advance_clock(601)
    assert fake.invalid_requests_within(600) == 0 and fake.invalid_request_count == 3
    fake.inject_rate_limit("POST", "/channels/*/messages", retry_after=0.01, scope="shared")
    await connected.text_channel.send("a shared-scope 429 is not the bot's fault")
    assert fake.invalid_requests_within(600) == 0


async def test_a_dropped_gateway_is_resumed_and_rest_keeps_working(connected: Connected) -> None:
    fake = connected.fake
    await fake.drop_gateway(code=4000)  # waits for the RESUME
    assert fake.gateway.resume_count == 1 and fake.gateway.identify_count == 1
    await connected.text_channel.send("still here")
    assert [m.content for m in fake.bot_messages(connected.channel)] == ["still here"]


async def test_a_hung_request_gets_no_answer_and_discord_does_nothing_until_released(
    connected: Connected,
) -> None:
    fake = connected.fake
    hang = fake.inject_hang("POST", "/channels/*/messages")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(connected.text_channel.send("into the void", file=a_file()), 0.5)
    assert hang.served == 1 and fake.bot_messages(connected.channel) == []
    hang.release()
    await connected.text_channel.send("the line is back")  # the client gave up the hung connection
    assert [m.content for m in fake.bot_messages(connected.channel)] == ["the line is back"]
    assert [(r.dropped, r.status) for r in fake.requests_to("POST", MESSAGES_ROUTE)] == [
        (True, 0),
        (False, 200),
    ]


async def test_a_request_hung_after_handling_made_its_message_but_the_answer_never_came(
    connected: Connected,
) -> None:
    fake = connected.fake
    fake.inject_hang("POST", "/channels/*/messages", after_handling=True)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(connected.text_channel.send("made it, but nobody heard"), 0.5)
    assert [m.content for m in fake.bot_messages(connected.channel)] == ["made it, but nobody heard"]
    fake.faults.clear()  # releases what the fault still holds
    await connected.text_channel.send("next")
    assert len(fake.bot_messages(connected.channel)) == 2


async def test_a_hung_request_still_held_when_the_fake_closes_does_not_keep_it_open() -> None:
    fake = FakeDiscord()
    await fake.start()
    guild = fake.add_guild("Closing time")
    channel = fake.add_channel(guild, "music")
    hang = fake.inject_hang("GET", "/channels/*")
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(
            session.get(
                f"{fake.api_base}/channels/{channel.id}", headers={"Authorization": f"Bot {fake.bot_token}"}
            )
        )
        async with asyncio.timeout(5):
            while not hang.served:  # the fake holds the request now
                await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await fake.close()
        assert loop.time() - started < 2
        with pytest.raises(aiohttp.ClientError):
            await request
