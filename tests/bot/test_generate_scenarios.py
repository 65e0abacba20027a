"""Members use /generate and friends on a server, as they would on Discord.

The real bot talks to a fake Discord over the real protocol, and the real inference client runs
jobs on a worker process with tiny random-weight models (1 s of audio takes a fraction of a second).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.app import MusicGenBot
from inference.backends.local import InferenceClient
from inference.media.ffmpeg import probe_duration
from inference.settings import EngineSettings
from tests.bot.scenario_harness import (
    add_server,
    channel_edits_of,
    job_count,
    job_row,
    musicgen_bot,
    posted_result,
    private_reply,
    queued_job_id,
    run_command,
    scenario_config,
    status_reads,
    stuck_jobs,
    wait_for_status,
    wav_seconds,
)
from tests.fake_discord import FakeDiscord, FakeDiscordValidationError, Permission


class World:
    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self.studio = add_server(fake, "Studio", ("alice", "bob", "carol"))
        self.studio.members["admin"] = fake.add_member(
            self.studio.guild, "admin", permissions=Permission.MANAGE_GUILD
        )
        self.garage = add_server(fake, "Garage", ("gus", "gina", "greg"))
        # A server whose upload limit is below a 1 s WAV (64 KB) but above its MP3 (40 KB).
        self.tiny_uploads = add_server(fake, "Tiny uploads", ("tess",), attachment_size_limit=50_000)


@pytest_asyncio.fixture(scope="module")
async def world(fake_discord: FakeDiscord) -> World:
    return World(fake_discord)


@pytest_asyncio.fixture(scope="module")
async def bot(
    world: World, inference_client: InferenceClient, engine_settings: EngineSettings, module_data_dir: Path
) -> AsyncIterator[MusicGenBot]:
    async with musicgen_bot(
        world.fake, scenario_config(module_data_dir, engine_settings), inference_client
    ) as running:
        yield running


async def test_a_member_asks_for_music_with_text_only_and_a_wav_appears_with_its_seed_recorded(
    bot: MusicGenBot, world: World
) -> None:
    fake, studio = world.fake, world.studio
    interaction = await run_command(
        fake, studio["alice"], studio.channel, "generate", prompt="calm lofi piano", duration=1
    )
    assert interaction.response_type == 5 and not interaction.is_ephemeral  # deferred publicly within 3 s
    job_id = await queued_job_id(interaction)

    result = await posted_result(fake, studio.channel, job_id)
    audio, picture = result.attachments
    assert audio.filename == f"musicgen-{job_id}.wav" and audio.data[:4] == b"RIFF"
    # The waveform picture is attached and shown in the embed.
    assert picture.filename == f"musicgen-{job_id}.png" and picture.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.embeds[0]["image"]["url"] == picture.url  # Discord resolves attachment://
    assert wav_seconds(audio.data) == pytest.approx(1.0, abs=0.05)
    assert f"<@{studio['alice'].id}>" in result.content
    embed = result.embeds[0]
    assert embed["title"] == "calm lofi piano"
    fields = {field["name"]: field["value"] for field in embed["fields"]}
    assert fields["Model"] == "small" and fields["Requested by"] == f"<@{studio['alice'].id}>"

    row = await wait_for_status(bot, job_id, "done")
    assert fields["Seed"] == f"`{row['seed']}`"
    assert row["seed_was_random"] == 1
    assert (row["guild_id"], row["channel_id"], row["user_id"]) == (
        studio.guild.id,
        studio.channel.id,
        studio["alice"].id,
    )
    assert row["result_message_id"] == result.id and row["posted_format"] == "wav"
    assert interaction.original_message is not None
    assert (
        row["interaction_id"] == interaction.id
        and row["status_message_id"] == interaction.original_message.id
    )
    assert Path(row["output_path"]).read_bytes() == audio.data
    assert row["started_at"] >= row["created_at"] and row["finished_at"] >= row["started_at"]
    status = await interaction.wait_for_final(lambda m: "is done" in m.content)
    assert f"`{row['seed']}`" in status.content


async def test_a_member_attaches_an_mp3_as_the_melody_to_follow(
    bot: MusicGenBot, world: World, audio_clips: dict[str, bytes]
) -> None:
    fake, studio = world.fake, world.studio
    tune = fake.add_attachment("tune.mp3", audio_clips["tune.mp3"])
    interaction = await run_command(
        fake,
        studio["bob"],
        studio.channel,
        "generate",
        prompt="cello",
        model_version="melody",
        input_audio=tune,
        duration=1,
    )
    job_id = await queued_job_id(interaction)
    result = await posted_result(fake, studio.channel, job_id)
    assert wav_seconds(result.attachments[0].data) == pytest.approx(1.0, abs=0.05)
    assert "tune.mp3 (melody)" in result.text

    row = await wait_for_status(bot, job_id, "done")
    assert row["model_version"] == "melody" and row["continuation"] == 0
    assert row["input_audio_filename"] == "tune.mp3"
    # The upload is kept in the data dir, byte for byte, so /replay can use it again.
    assert Path(row["input_audio"]).read_bytes() == audio_clips["tune.mp3"]


async def test_a_member_continues_a_clip_and_gets_the_clip_followed_by_new_music(
    bot: MusicGenBot, world: World, audio_clips: dict[str, bytes]
) -> None:
    fake, studio = world.fake, world.studio
    clip = fake.add_attachment("tune.wav", audio_clips["tune.wav"])
    interaction = await run_command(
        fake, studio["carol"], studio.channel, "generate",
        prompt="drums come in", input_audio=clip, continuation=True, continuation_start=0.5, duration=1,
    )  # fmt: skip
    job_id = await queued_job_id(interaction)
    result = await posted_result(fake, studio.channel, job_id)
    # 1.5 s of the clip (from 0.5 s on) and then 1 s more.
    assert wav_seconds(result.attachments[0].data) == pytest.approx(2.5, abs=0.1)
    assert "tune.wav (continued)" in result.text
    row = await wait_for_status(bot, job_id, "done")
    assert row["continuation"] == 1 and row["continuation_start"] == 0.5


async def test_every_option_arrives_in_the_job_row_and_shapes_the_result(
    bot: MusicGenBot, world: World
) -> None:
    fake, garage = world.fake, world.garage
    options = {
        "model_version": "medium",
        "prompt": "synthwave",
        "duration": 2,
        "normalization_strategy": "peak",
        "top_k": 50,
        "top_p": 0.9,
        "temperature": 0.7,
        "classifier_free_guidance": 5.5,
        "output_format": "mp3",
        "seed": 4242,
    }
    interaction = await run_command(fake, garage["gus"], garage.channel, "generate", **options)
    job_id = await queued_job_id(interaction)
    result = await posted_result(fake, garage.channel, job_id)
    row = await wait_for_status(bot, job_id, "done")
    for name, value in options.items():
        assert row[name] == value, name
    assert (row["continuation"], row["continuation_start"], row["continuation_end"], row["input_audio"]) == (
        0,
        0.0,
        None,
        None,
    )
    assert row["seed_was_random"] == 0

    audio, _picture = result.attachments
    assert audio.filename.endswith(".mp3") and row["posted_format"] == "mp3"
    clip = Path(row["output_path"])
    assert clip.suffix == ".mp3" and probe_duration(clip) == pytest.approx(2.0, abs=0.1)
    other_settings = next(f["value"] for f in result.embeds[0]["fields"] if f["name"] == "Other settings")
    for name in (
        "normalization_strategy",
        "top_k",
        "top_p",
        "temperature",
        "classifier_free_guidance",
        "output_format",
    ):
        assert f"{name} = `{options[name]}`" in other_settings
    assert "`4242`" in result.text

    # The same request with one sampling option changed makes different music.
    warmer = await run_command(
        fake, garage["gus"], garage.channel, "generate", **{**options, "temperature": 1.5}
    )
    warmer_id = await queued_job_id(warmer)
    warmer_result = await posted_result(fake, garage.channel, warmer_id)
    assert warmer_result.attachments[0].data != audio.data


async def test_two_servers_share_the_worker_in_turn(bot: MusicGenBot, world: World) -> None:
    fake, studio, garage = world.fake, world.studio, world.garage
    bot.dispatcher.pause()  # queue everything first, so the order is the scheduler's alone
    try:
        studio_jobs = [
            await queued_job_id(
                await run_command(
                    fake, studio[name], studio.channel, "generate", prompt=f"studio {name}", duration=1
                )
            )
            for name in ("alice", "bob", "carol")
        ]
        garage_jobs = [
            await queued_job_id(
                await run_command(
                    fake, garage[name], garage.channel, "generate", prompt=f"garage {name}", duration=1
                )
            )
            for name in ("gus", "gina")
        ]
        queue_view = await run_command(fake, garage["gina"], garage.channel, "queue")
        assert f"#{garage_jobs[1]} (#4 in line)" in await private_reply(queue_view)
    finally:
        bot.dispatcher.resume()
    for job_id in studio_jobs + garage_jobs:
        await wait_for_status(bot, job_id, "done")
    rows = [await job_row(bot, job_id) for job_id in studio_jobs + garage_jobs]
    started = [row["id"] for row in sorted(rows, key=lambda row: row["started_at"])]
    a1, a2, a3 = studio_jobs
    b1, b2 = garage_jobs
    assert started == [a1, b1, a2, b2, a3]


async def test_a_member_over_the_per_user_cap_is_told_privately_and_loses_nothing(
    bot: MusicGenBot, world: World
) -> None:
    fake, studio = world.fake, world.studio
    alice = studio["alice"]
    bot.dispatcher.pause()
    try:
        first = await queued_job_id(
            await run_command(fake, alice, studio.channel, "generate", prompt="one", duration=1)
        )
        second = await queued_job_id(
            await run_command(fake, alice, studio.channel, "generate", prompt="two", duration=1)
        )
        rows_before = await job_count(bot)
        refused = await run_command(fake, alice, studio.channel, "generate", prompt="three", duration=1)
        assert "limit is 2" in await private_reply(refused)
        assert await job_count(bot) == rows_before
    finally:
        bot.dispatcher.resume()
    await wait_for_status(bot, first, "done")
    await wait_for_status(bot, second, "done")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"prompt": "x", "continuation": True}, "Continuation needs input audio"),
        ({"prompt": "x", "model_version": "finetuned"}, "No fine-tuned model is configured"),
        ({"prompt": "x", "attach": "tune.mp3"}, "cannot follow a melody"),
        (
            {"attach": "tune.mp3", "model_version": "melody", "continuation_start": 3, "continuation_end": 1},
            "must be before",
        ),
        ({"attach": "not-audio.mp3", "model_version": "melody"}, "Couldn't read that audio file"),
        ({"attach": "tune.mp3", "continuation": True, "continuation_start": 5}, "past the end of the clip"),
        ({"attach": "big.wav", "model_version": "melody"}, "accepts clips up to 0.5 MiB"),
        ({"attach": "notes.txt", "model_version": "melody"}, "does not look like audio"),
        ({"model_version": "encode-decode"}, "encode-decode needs input audio"),
    ],
)
async def test_a_mistake_gets_a_private_explanation_and_leaves_no_job_behind(
    bot: MusicGenBot, world: World, audio_clips: dict[str, bytes], options: dict[str, object], expected: str
) -> None:
    fake, studio = world.fake, world.studio
    uploads = {**audio_clips, "big.wav": b"RIFF" + bytes(600_000), "notes.txt": b"hello"}
    if "attach" in options:
        name = str(options.pop("attach"))
        options["input_audio"] = fake.add_attachment(name, uploads[name])
    rows_before = await job_count(bot)
    interaction = await run_command(
        fake, studio["bob"], studio.channel, "generate", duration=options.pop("duration", 1), **options
    )
    assert expected in await private_reply(interaction)
    assert await job_count(bot) == rows_before
    assert await stuck_jobs(bot) == []
    assert sorted(path.name for path in bot.uploads_dir.iterdir()) == sorted(
        Path(row_path).name for row_path in await _stored_uploads(bot)
    ), "a refused upload was left in the data dir"


async def _stored_uploads(bot: MusicGenBot) -> list[str]:
    async with bot.database.connection.execute(
        "SELECT DISTINCT input_audio FROM jobs WHERE input_audio IS NOT NULL"
    ) as cursor:
        return [row[0] for row in await cursor.fetchall()]


async def test_discord_itself_refuses_values_outside_the_option_ranges(
    bot: MusicGenBot, world: World
) -> None:
    studio = world.studio
    for options in (
        {"prompt": "x", "duration": 121},  # over [limits] max_duration_s
        {"prompt": "x", "top_p": 1.5},
        {"prompt": "x", "seed": 2**32},
        {"prompt": "x", "model_version": "huge"},
    ):
        with pytest.raises(FakeDiscordValidationError):
            await world.fake.invoke_slash_command(studio["bob"], studio.channel, "generate", options)


async def test_replay_makes_the_same_audio_again(
    bot: MusicGenBot, world: World, audio_clips: dict[str, bytes]
) -> None:
    fake, studio = world.fake, world.studio
    tune = fake.add_attachment("tune.mp3", audio_clips["tune.mp3"])
    original = await run_command(
        fake,
        studio["carol"],
        studio.channel,
        "generate",
        prompt="harp",
        model_version="melody",
        input_audio=tune,
        duration=1,
    )
    original_id = await queued_job_id(original)
    first = await posted_result(fake, studio.channel, original_id)
    await wait_for_status(bot, original_id, "done")

    replay = await run_command(fake, studio["bob"], studio.channel, "replay", job_id=original_id)
    replay_id = await queued_job_id(replay)
    second = await posted_result(fake, studio.channel, replay_id)
    assert second.attachments[0].data == first.attachments[0].data
    row = await wait_for_status(bot, replay_id, "done")
    original_row = await job_row(bot, original_id)
    assert row["replay_of"] == original_id and row["seed"] == original_row["seed"]
    assert row["request_json"] == original_row["request_json"]

    missing = await run_command(fake, studio["bob"], studio.channel, "replay", job_id=999_999)
    assert "There is no job #999999" in await private_reply(missing)


async def test_an_expired_token_still_gets_the_result_posted_in_the_channel_with_a_mention(
    bot: MusicGenBot, world: World
) -> None:
    fake, studio = world.fake, world.studio
    bot.dispatcher.pause()  # a long queue: the token expires while the job waits
    try:
        interaction = await run_command(
            fake, studio["alice"], studio.channel, "generate", prompt="late night jazz", duration=1
        )
        job_id = await queued_job_id(interaction)
        fake.expire_interaction(interaction)
    finally:
        bot.dispatcher.resume()
    result = await posted_result(fake, studio.channel, job_id)
    assert result.interaction is None  # posted by the bot in the channel, not through the token
    assert f"<@{studio['alice'].id}>" in result.content and studio["alice"].user in result.mentions
    assert result.attachments[0].filename.endswith(".wav")
    await wait_for_status(bot, job_id, "done")
    # The status message is still brought up to date, with the bot's own permissions.
    status = interaction.original_message
    assert status is not None
    await status_reads(fake, status, f"Job #{job_id} is done")
    assert channel_edits_of(fake, status) >= 1


async def test_a_result_over_the_upload_limit_is_posted_as_mp3(bot: MusicGenBot, world: World) -> None:
    fake, server = world.fake, world.tiny_uploads
    interaction = await run_command(
        fake, server["tess"], server.channel, "generate", prompt="tiny", duration=1
    )
    job_id = await queued_job_id(interaction)
    result = await posted_result(fake, server.channel, job_id)
    audio, _picture = result.attachments
    assert audio.filename.endswith(".mp3") and audio.size <= 50_000
    assert "as MP3" in result.content
    row = await wait_for_status(bot, job_id, "done")
    assert row["output_format"] == "wav" and row["posted_format"] == "mp3"


async def test_members_see_the_queue_cancel_their_jobs_and_read_their_history(
    bot: MusicGenBot, world: World
) -> None:
    fake, studio = world.fake, world.studio
    alice, bob, admin = studio["alice"], studio["bob"], studio["admin"]
    bot.dispatcher.pause()
    try:
        mine = await queued_job_id(
            await run_command(fake, alice, studio.channel, "generate", prompt="keep me", duration=1)
        )
        doomed = await queued_job_id(
            await run_command(fake, alice, studio.channel, "generate", prompt="cancel me", duration=1)
        )
        bobs = await queued_job_id(
            await run_command(fake, bob, studio.channel, "generate", prompt="bob's", duration=1)
        )

        queue_text = await private_reply(await run_command(fake, alice, studio.channel, "queue"))
        assert f"#{mine} (#1 in line), #{doomed} (#2 in line)" in queue_text and f"#{bobs}" in queue_text

        refused = await private_reply(await run_command(fake, bob, studio.channel, "cancel", job_id=doomed))
        assert "only they or someone with Manage Server" in refused
        assert "is cancelled" in await private_reply(
            await run_command(fake, alice, studio.channel, "cancel", job_id=doomed)
        )
        assert "is cancelled" in await private_reply(
            await run_command(fake, admin, studio.channel, "cancel", job_id=bobs)
        )
        assert "already cancelled" in await private_reply(
            await run_command(fake, alice, studio.channel, "cancel", job_id=doomed)
        )
    finally:
        bot.dispatcher.resume()
    await wait_for_status(bot, mine, "done")
    assert (await job_row(bot, doomed))["status"] == "cancelled"
    assert (await job_row(bot, bobs))["status"] == "cancelled"

    history = await private_reply(await run_command(fake, alice, studio.channel, "history"))
    mine_row = await job_row(bot, mine)
    assert f"#{mine} · done" in history and f"seed `{mine_row['seed']}`" in history
    assert f"#{doomed} · cancelled" in history
    assert await stuck_jobs(bot) == []


async def test_a_running_job_can_be_cancelled(bot: MusicGenBot, world: World) -> None:
    fake, garage = world.fake, world.garage
    interaction = await run_command(
        fake, garage["greg"], garage.channel, "generate", prompt="very long", duration=30
    )
    job_id = await queued_job_id(interaction)
    await wait_for_status(bot, job_id, "running")
    reply = await private_reply(await run_command(fake, garage["greg"], garage.channel, "cancel"))
    assert f"job #{job_id}" in reply.lower()
    await wait_for_status(bot, job_id, "cancelled")
    await interaction.wait_for_final(lambda m: "was cancelled" in m.content)
    # The queue goes on.
    after = await run_command(fake, garage["greg"], garage.channel, "generate", prompt="short", duration=1)
    await wait_for_status(bot, await queued_job_id(after), "done")


async def test_slash_commands_are_registered_once(bot: MusicGenBot, world: World) -> None:
    names = sorted(command["name"] for command in world.fake.registered_commands())
    assert names == [
        "Continue with MusicGen",
        "cancel",
        "generate",
        "history",
        "jam",
        "musicgen-settings",
        "musicgen-status",
        "queue",
        "replay",
    ]
    generate = next(c for c in world.fake.registered_commands() if c["name"] == "generate")
    assert len(generate["options"]) == 15  # every request field, and takes
    assert await bot.sync_commands_if_changed() == []  # unchanged: no second sync
    await asyncio.sleep(0)


async def test_an_admin_caps_the_servers_queue_and_members_cannot_change_it(
    bot: MusicGenBot, world: World
) -> None:
    fake, studio = world.fake, world.studio
    with pytest.raises(FakeDiscordValidationError):  # hidden from members without Manage Server
        await fake.invoke_slash_command(
            studio["bob"], studio.channel, "musicgen-settings max_pending", {"limit": 5}
        )
    set_reply = await private_reply(
        await run_command(fake, studio["admin"], studio.channel, "musicgen-settings max_pending", limit=1)
    )
    assert "now have 1 job(s)" in set_reply
    bot.dispatcher.pause()
    try:
        queued = await queued_job_id(
            await run_command(
                fake, studio["alice"], studio.channel, "generate", prompt="only one", duration=1
            )
        )
        refused = await run_command(
            fake, studio["bob"], studio.channel, "generate", prompt="one too many", duration=1
        )
        assert "queue is full" in await private_reply(refused)
        async with bot.database.connection.execute(
            "SELECT max_pending FROM guild_settings WHERE guild_id = ?", (studio.guild.id,)
        ) as cursor:
            assert tuple(await cursor.fetchone() or ()) == (1,)  # kept across restarts
    finally:
        bot.dispatcher.resume()
        reset = await private_reply(
            await run_command(fake, studio["admin"], studio.channel, "musicgen-settings max_pending")
        )
        assert "back to the bot's default (20)" in reset
    await wait_for_status(bot, queued, "done")


# Every version that makes music here (no fine-tune is configured), in the order /generate offers them.
MUSIC_VERSIONS = (
    "melody, small, medium, large, melody-large, stereo-small, stereo-medium, stereo-large, "
    "stereo-melody, stereo-melody-large"
)


async def test_an_admin_picks_the_servers_default_model_and_generate_uses_it(
    bot: MusicGenBot, world: World
) -> None:
    fake, studio, garage = world.fake, world.studio, world.garage
    admin, bob = studio["admin"], studio["bob"]
    with pytest.raises(FakeDiscordValidationError):  # hidden from members without Manage Server
        await fake.invoke_slash_command(
            bob, studio.channel, "musicgen-settings default_model", {"model_version": "large"}
        )

    for unusable, reason in (
        ("encode-decode", "makes no new music"),
        ("finetuned", "No fine-tuned model is configured"),
    ):
        refusal = await private_reply(
            await run_command(
                fake, admin, studio.channel, "musicgen-settings default_model", model_version=unusable
            )
        )
        assert reason in refusal and f"Choose one of: {MUSIC_VERSIONS}." in refusal
    set_reply = await private_reply(
        await run_command(
            fake, admin, studio.channel, "musicgen-settings default_model", model_version="melody"
        )
    )
    assert "now uses the melody model" in set_reply
    try:
        interaction = await run_command(
            fake, bob, studio.channel, "generate", prompt="default please", duration=1
        )
        job_id = await queued_job_id(interaction)
        result = await posted_result(fake, studio.channel, job_id)
        row = await wait_for_status(bot, job_id, "done")
        assert row["model_version"] == "melody"
        assert {f["name"]: f["value"] for f in result.embeds[0]["fields"]}["Model"] == "melody"
        # A member who picks a model still gets that one; other servers keep the bot's default.
        picked = await queued_job_id(
            await run_command(
                fake, bob, studio.channel, "generate", prompt="x", model_version="small", duration=1
            )
        )
        elsewhere = await queued_job_id(
            await run_command(fake, garage["gina"], garage.channel, "generate", prompt="x", duration=1)
        )
        assert (await job_row(bot, picked))["model_version"] == "small"
        assert (await job_row(bot, elsewhere))["model_version"] == "small"

        # Server admins can let others use the command (Integrations → command permissions): the bot
        # itself still checks Manage Server.
        fake.allow_command(studio.guild, "musicgen-settings", bob)
        refused = await run_command(
            fake, bob, studio.channel, "musicgen-settings default_model", model_version="large"
        )
        assert "You need the Manage Server permission" in await private_reply(refused)
        assert await bot.jobs.guild_default_model(studio.guild.id) == "melody"
        await wait_for_status(bot, picked, "done")
        await wait_for_status(bot, elsewhere, "done")
    finally:
        studio.guild.command_overrides.clear()
        reset = await private_reply(
            await run_command(fake, admin, studio.channel, "musicgen-settings default_model")
        )
        assert "back to the bot's default model (small)" in reset
    row = await job_row(
        bot,
        await queued_job_id(await run_command(fake, bob, studio.channel, "generate", prompt="y", duration=1)),
    )
    assert row["model_version"] == "small"
    await wait_for_status(bot, row["id"], "done")


async def test_when_the_bot_may_not_attach_files_the_member_learns_what_to_fix(
    bot: MusicGenBot, world: World
) -> None:
    fake, studio = world.fake, world.studio
    no_files = fake.add_channel(studio.guild, "no-files")
    bot.dispatcher.pause()  # the token expires first, so the result must go through the channel
    try:
        interaction = await run_command(
            fake, studio["carol"], no_files, "generate", prompt="forbidden", duration=1
        )
        job_id = await queued_job_id(interaction)
        # An admin takes Attach Files away while the job waits: new jobs there are refused at once...
        await fake.set_bot_denied(no_files, Permission.ATTACH_FILES)
        refused = await run_command(fake, studio["carol"], no_files, "generate", prompt="again", duration=1)
        assert "**Attach Files**" in await private_reply(refused)
        fake.expire_interaction(interaction)
    finally:
        bot.dispatcher.resume()
    # ...and the one already made is kept and the member told what to fix.
    row = await wait_for_status(bot, job_id, "failed")
    assert "could not post the result" in row["error"] and Path(row["output_path"]).is_file()
    status = interaction.original_message
    assert status is not None
    await status_reads(fake, status, "give me Send Messages and Attach Files here")
    assert f"`/replay {job_id}`" in status.content
    assert await stuck_jobs(bot) == []
