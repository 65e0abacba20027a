"""Members who run a server decide where the bot works, which features are on and how much one
member may make per day, and see how the bot is doing; every change is recorded."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import pytest_asyncio

from bot.app import MusicGenBot
from inference.backends.local import InferenceClient
from tests.bot.scenario_harness import (
    Server,
    add_server,
    job_count,
    job_row,
    private_reply,
    queued_job_id,
    run_command,
    wait_for_status,
)
from tests.fake_discord import FakeDiscord, FakeDiscordValidationError, Permission

# The worker is killed mid-job, and /musicgen-status lists the models it has run since it started.


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    server = add_server(fake_discord, "Controlled", ("alice", "bob"))
    server.members["admin"] = fake_discord.add_member(
        server.guild, "admin", permissions=Permission.MANAGE_GUILD
    )
    return server


async def _channel_setting(fake: FakeDiscord, server: Server, channel: object, allowed: bool) -> str:
    # Not run_command: this command's option is itself called "channel".
    interaction = await fake.invoke_slash_command(
        server["admin"], server.channel, "musicgen-settings channel", {"channel": channel, "allowed": allowed}
    )
    await interaction.wait_for_response(timeout=10)
    return await private_reply(interaction)


async def _audit(bot: MusicGenBot) -> list[tuple[int, str, str, str]]:
    async with bot.database.connection.execute(
        "SELECT user_id, setting, old_value, new_value FROM settings_audit ORDER BY id"
    ) as cursor:
        return [(row[0], row[1], row[2], row[3]) for row in await cursor.fetchall()]


async def test_the_bot_works_only_in_the_channels_an_admin_lists(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server
) -> None:
    admin, alice = server["admin"], server["alice"]
    lounge = fake_discord.add_channel(server.guild, "lounge")
    with pytest.raises(FakeDiscordValidationError):  # hidden from members without Manage Server
        await fake_discord.invoke_slash_command(
            alice, server.channel, "musicgen-settings channel", {"channel": server.channel, "allowed": True}
        )
    set_reply = await _channel_setting(fake_discord, server, server.channel, True)
    assert f"now works in <#{server.channel.id}>" in set_reply
    try:
        rows_before = await job_count(bot)
        refused = await run_command(fake_discord, alice, lounge, "generate", prompt="x", duration=1)
        assert f"only in <#{server.channel.id}>" in await private_reply(refused)
        assert await job_count(bot) == rows_before
        allowed = await run_command(fake_discord, alice, server.channel, "generate", prompt="x", duration=1)
        await wait_for_status(bot, await queued_job_id(allowed), "done")
    finally:
        await _channel_setting(fake_discord, server, server.channel, False)
    assert (await _audit(bot))[-2:] == [
        (admin.id, "channels", "everywhere", str(server.channel.id)),
        (admin.id, "channels", str(server.channel.id), "everywhere"),
    ]


async def test_a_daily_quota_stops_a_member_and_other_members_go_on(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server
) -> None:
    admin, alice, bob = server["admin"], server["alice"], server["bob"]
    made_today = await bot.controls.jobs_today(server.guild.id, alice.id)
    await run_command(
        fake_discord, admin, server.channel, "musicgen-settings daily_quota", limit=made_today + 1
    )
    try:
        last = await run_command(
            fake_discord, alice, server.channel, "generate", prompt="one more", duration=1
        )
        await wait_for_status(bot, await queued_job_id(last), "done")
        over = await run_command(
            fake_discord, alice, server.channel, "generate", prompt="and another", duration=1
        )
        assert "this server's daily limit" in await private_reply(over)
        replay = await run_command(fake_discord, alice, server.channel, "replay", job_id=1)
        assert "this server's daily limit" in await private_reply(replay)
        bobs = await run_command(fake_discord, bob, server.channel, "generate", prompt="mine", duration=1)
        await wait_for_status(bot, await queued_job_id(bobs), "done")
    finally:
        await run_command(fake_discord, admin, server.channel, "musicgen-settings daily_quota")
    assert (await _audit(bot))[-2:] == [
        (admin.id, "daily_quota", "none", str(made_today + 1)),
        (admin.id, "daily_quota", str(made_today + 1), "none"),
    ]


async def test_replies_and_jams_switches_are_kept_and_readable_by_other_cogs(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server
) -> None:
    admin, guild_id = server["admin"], server.guild.id
    assert await bot.controls.feature_enabled(guild_id, "jams") and await bot.controls.feature_enabled(
        guild_id, "replies"
    )
    reply = await private_reply(
        await run_command(fake_discord, admin, server.channel, "musicgen-settings jams", enabled=False)
    )
    assert "Jams are now off" in reply
    assert not await bot.controls.feature_enabled(guild_id, "jams")
    assert await bot.controls.feature_enabled(guild_id, "replies")
    await run_command(fake_discord, admin, server.channel, "musicgen-settings replies", enabled=False)
    assert not await bot.controls.feature_enabled(guild_id, "replies")
    assert (await _audit(bot))[-2:] == [(admin.id, "jams", "on", "off"), (admin.id, "replies", "on", "off")]


async def test_with_jams_and_replies_switched_off_members_are_told_so_and_nothing_is_queued(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server
) -> None:
    admin, alice = server["admin"], server["alice"]
    await run_command(fake_discord, admin, server.channel, "musicgen-settings jams", enabled=False)
    await run_command(fake_discord, admin, server.channel, "musicgen-settings replies", enabled=False)
    jobs_before = await job_count(bot)
    refused = await private_reply(
        await run_command(fake_discord, alice, server.channel, "jam start", prompt="a shared groove")
    )
    assert "Jams are switched off" in refused
    assert not [c for c in fake_discord.channels.values() if c.name == "a shared groove"]

    reply = await fake_discord.post_user_message(
        alice, server.channel, f"{fake_discord.bot_user.mention} 4s more brass"
    )
    answer = await fake_discord.wait_for_message(server.channel, lambda m: m.reference is reply)
    assert "switched off on this server" in answer.content
    assert await job_count(bot) == jobs_before


async def test_an_admin_reads_the_bots_status_and_members_cannot(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server
) -> None:
    with pytest.raises(FakeDiscordValidationError):
        await fake_discord.invoke_slash_command(server["alice"], server.channel, "musicgen-status", {})
    admin = server["admin"]
    for feature in ("jams", "replies"):
        await run_command(fake_discord, admin, server.channel, f"musicgen-settings {feature}", enabled=False)
    await run_command(fake_discord, admin, server.channel, "musicgen-settings max_pending", limit=7)
    status = await private_reply(
        await run_command(fake_discord, server["admin"], server.channel, "musicgen-status")
    )
    assert "**Up for**" in status
    assert "**This server:** 0 queued, 0 running (limit 7)" in status
    assert "**Workers:** 1 configured" in status
    assert "**Models run since start:** small" in status
    assert "small kernels: " in status  # the decoder kernels the worker chose for it ([engine] cpu_matmul)
    assert "**Last error here:** none" in status
    assert "jams off" in status and "replies off" in status
    assert f"<@{server['admin'].id}> set max_pending: 20 → 7" in status


async def _kill_the_worker_while_it_makes(
    bot: MusicGenBot, client: InferenceClient, job_id: int, attempt: int
) -> None:
    """The generator dies under the job's `attempt`-th run (as if killed for memory)."""
    while (await job_row(bot, job_id))["attempts"] < attempt or bot.dispatcher.progress_of(job_id) is None:
        await asyncio.sleep(0.01)
    for pid in client.worker_pids:
        os.kill(pid, signal.SIGKILL)


async def test_a_job_the_generator_crashed_on_does_not_use_up_the_members_daily_quota(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server, inference_client: InferenceClient
) -> None:
    # Last in the module: the failure shows in /musicgen-status (which the test above reads).
    fake, admin, bob = fake_discord, server["admin"], server["bob"]
    made_today = await bot.controls.jobs_today(server.guild.id, bob.id)
    await run_command(fake, admin, server.channel, "musicgen-settings daily_quota", limit=made_today + 1)
    try:
        doomed = await queued_job_id(
            await run_command(fake, bob, server.channel, "generate", prompt="doomed", duration=30)
        )
        for attempt in (1, 2):  # the first try and the retry
            await asyncio.wait_for(
                _kill_the_worker_while_it_makes(bot, inference_client, doomed, attempt), 60
            )
        failed = await wait_for_status(bot, doomed, "failed")
        assert "It was not your fault" in failed["error"]

        again = await run_command(fake, bob, server.channel, "generate", prompt="again", duration=1)
        await wait_for_status(bot, await queued_job_id(again), "done")
        # That one counts: the day's quota is used up now.
        over = await run_command(fake, bob, server.channel, "generate", prompt="and more", duration=1)
        assert "this server's daily limit" in await private_reply(over)
    finally:
        await run_command(fake, admin, server.channel, "musicgen-settings daily_quota")
