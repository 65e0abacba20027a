"""What the bot shows members: within Discord's text limits, members' text escaped, and nothing
from a channel a member cannot see.

A full queue of long prompts, prompts that try to pass a masked link off as the bot's own, and
private channels, all through the fake Discord (which refuses an oversized message with 400 like
Discord does).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from bot.app import MusicGenBot
from inference.backends.local import InferenceClient
from inference.settings import EngineSettings
from tests.bot.scenario_harness import (
    Server,
    add_server,
    job_count,
    musicgen_bot,
    posted_result,
    private_reply,
    queued_job_id,
    run_command,
    scenario_config,
    wait_for_status,
)
from tests.fake_discord import FakeDiscord, Permission

# A masked link `[text](url)` whose bracket is not escaped: Discord would render only "text".
UNESCAPED_MASKED_LINK = re.compile(r"(?<!\\)\[[^\]]*(?<!\\)\]\(")
LURE = "[Download your track here](https://evil.example/steal) @everyone "


@pytest_asyncio.fixture(scope="module")
async def club(fake_discord: FakeDiscord) -> Server:
    names = tuple(f"member{index}" for index in range(10))
    server = add_server(fake_discord, "Busy club", names)
    server.members["admin"] = fake_discord.add_member(
        server.guild, "admin", permissions=Permission.MANAGE_GUILD
    )
    return server


@pytest_asyncio.fixture(scope="module")
async def bot(
    fake_discord: FakeDiscord,
    club: Server,
    inference_client: InferenceClient,
    engine_settings: EngineSettings,
    module_data_dir: Path,
) -> AsyncIterator[MusicGenBot]:
    config = scenario_config(
        module_data_dir, engine_settings, max_pending_per_guild=20, max_pending_per_user=10
    )
    async with musicgen_bot(fake_discord, config, inference_client) as running:
        yield running


async def test_a_full_queue_of_long_prompts_is_listed_within_discords_limits(
    bot: MusicGenBot, fake_discord: FakeDiscord, club: Server
) -> None:
    members = [club["member0"], club["member1"]]
    bot.dispatcher.pause()
    job_ids: list[int] = []
    try:
        for member in members:
            for take in range(10):
                prompt = f"{LURE}{member.name} take {take} " + "lofi piano " * 90
                interaction = await run_command(
                    fake_discord, member, club.channel, "generate",
                    prompt=prompt[:1000], model_version="medium", duration=30,
                )  # fmt: skip
                job_ids.append(await queued_job_id(interaction))
        full = await run_command(
            fake_discord, club["admin"], club.channel, "generate", prompt="x", duration=1
        )
        assert "queue is full" in await private_reply(full)

        view = await run_command(fake_discord, members[0], club.channel, "queue")
        text = await private_reply(view)
        assert len(text) <= 2000
        assert f"#{job_ids[0]} (#1 in line), #{job_ids[1]}" in text  # the member's own jobs come first
        assert "more." in text  # the rest is counted, not dropped silently
        assert not UNESCAPED_MASKED_LINK.search(text)
        reply = view.messages[-1]
        assert reply.mentions == [] and not reply.mention_everyone
    finally:
        for job_id in job_ids:
            await bot.dispatcher.cancel(job_id)
        bot.dispatcher.resume()
    for job_id in job_ids:
        await wait_for_status(bot, job_id, "cancelled")


async def test_a_prompt_with_a_masked_link_is_shown_as_typed_and_pings_nobody(
    bot: MusicGenBot, fake_discord: FakeDiscord, club: Server
) -> None:
    member = club["member1"]
    prompt = (LURE * 20)[:1000]
    interaction = await run_command(fake_discord, member, club.channel, "generate", prompt=prompt, duration=1)
    job_id = await queued_job_id(interaction)
    result = await posted_result(fake_discord, club.channel, job_id)
    embed = result.embeds[0]
    assert len(embed["title"]) <= 256
    assert not UNESCAPED_MASKED_LINK.search(embed["title"] + embed.get("description", ""))
    # Escaped, it still reads as the member typed it.
    assert embed["description"].replace("\\", "").startswith(LURE.strip())
    assert result.mentions == [member.user] and not result.mention_everyone
    await wait_for_status(bot, job_id, "done")

    history = await private_reply(await run_command(fake_discord, member, club.channel, "history"))
    assert f"#{job_id} · done" in history and not UNESCAPED_MASKED_LINK.search(history)
    assert await job_count(bot) > 0


async def test_a_job_from_a_private_channel_cannot_be_replayed_or_read_by_those_outside_it(
    bot: MusicGenBot, fake_discord: FakeDiscord, club: Server, audio_clips: dict[str, bytes]
) -> None:
    insider, other_insider, outsider = club["member4"], club["member5"], club["member6"]
    backstage = fake_discord.add_channel(
        club.guild, "backstage", everyone_denied=Permission.VIEW_CHANNEL, allowed=[insider, other_insider]
    )
    while bot.get_channel(backstage.id) is None:  # CHANNEL_CREATE on its way through the gateway
        await asyncio.sleep(0.02)
    clip = fake_discord.add_attachment("secret-demo.wav", audio_clips["tune.wav"])
    # encode-decode gives back the clip itself: replaying it would hand the upload to anyone.
    made = await run_command(
        fake_discord,
        insider,
        backstage,
        "generate",
        model_version="encode-decode",
        input_audio=clip,
        duration=1,
    )
    secret_job = await queued_job_id(made)
    await posted_result(fake_discord, backstage, secret_job)
    await wait_for_status(bot, secret_job, "done")

    rows_before = await job_count(bot)
    refused = await private_reply(
        await run_command(fake_discord, outsider, club.channel, "replay", job_id=secret_job)
    )
    assert f"There is no job #{secret_job} here that you can replay" in refused
    missing = await private_reply(
        await run_command(fake_discord, outsider, club.channel, "replay", job_id=9999)
    )
    assert missing.replace("9999", str(secret_job)) == refused  # a private job looks like no job at all
    assert await job_count(bot) == rows_before

    # Those who can read the channel may replay what was posted there; so may its author, anywhere.
    for member, where in ((other_insider, backstage), (insider, club.channel)):
        replay = await run_command(fake_discord, member, where, "replay", job_id=secret_job)
        replay_id = await queued_job_id(replay)
        await wait_for_status(bot, replay_id, "done")

    # While a private job waits, others see that it exists, not what it is or whose it is.
    bot.dispatcher.pause()
    try:
        waiting = await queued_job_id(
            await run_command(
                fake_discord, insider, backstage, "generate", prompt="surprise party", duration=1
            )
        )
        outside_view = await private_reply(await run_command(fake_discord, outsider, club.channel, "queue"))
        assert f"#{waiting}" in outside_view and "surprise party" not in outside_view
        assert str(insider.id) not in outside_view and "backstage" not in outside_view
        inside_view = await private_reply(await run_command(fake_discord, other_insider, backstage, "queue"))
        assert "surprise party" in inside_view and f"<@{insider.id}>" in inside_view
        cancel = await private_reply(
            await run_command(fake_discord, outsider, club.channel, "cancel", job_id=waiting)
        )
        assert cancel == f"There is no job #{waiting} in this server."
    finally:
        await bot.dispatcher.cancel(waiting)
        bot.dispatcher.resume()


async def test_others_unposted_jobs_cannot_be_replayed_even_from_a_public_channel(
    bot: MusicGenBot, fake_discord: FakeDiscord, club: Server
) -> None:
    author, other = club["member7"], club["member8"]
    bot.dispatcher.pause()
    try:
        cancelled = await queued_job_id(
            await run_command(fake_discord, author, club.channel, "generate", prompt="never mind", duration=1)
        )
        await bot.dispatcher.cancel(cancelled)
    finally:
        bot.dispatcher.resume()
    await wait_for_status(bot, cancelled, "cancelled")
    refused = await private_reply(
        await run_command(fake_discord, other, club.channel, "replay", job_id=cancelled)
    )
    assert f"There is no job #{cancelled} here that you can replay" in refused
    # Its author may run it again.
    again = await queued_job_id(
        await run_command(fake_discord, author, club.channel, "replay", job_id=cancelled)
    )
    await wait_for_status(bot, again, "done")
