"""Members continue audio posted in the channel: the context menu, replies with @bot, the result buttons."""

from __future__ import annotations

import asyncio
import io
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot.app import MusicGenBot
from bot.audio.editing import SAMPLE_RATE, decode_clip, write_wav
from bot.config import BotConfig, BotOptions
from bot.continuation import DEFAULT_NEW_SECONDS
from inference.backends.local import InferenceClient
from inference.media.ffmpeg import ffmpeg_executable
from inference.settings import EngineSettings
from tests.bot.scenario_harness import (
    Server,
    add_server,
    job_count,
    job_row,
    musicgen_bot,
    posted_result,
    private_reply,
    queued_job_id,
    scenario_config,
    stuck_jobs,
    wait_for_status,
)
from tests.fake_discord import FakeDiscord, FakeInteraction, FakeMember, FakeMessage, MessageFlag

CONTEXT_MENU = "Continue with MusicGen"


def tone(seconds: float, frequency: float = 220.0, amplitude: float = 0.25) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)[:, None]


def wav_bytes(samples: np.ndarray, folder: Path, name: str) -> bytes:
    return write_wav(samples, folder / name).read_bytes()


def opus_voice_message(folder: Path, seconds: float) -> bytes:
    """What Discord clients record: mono 48 kHz Opus in OGG."""
    path = folder / "voice-message.ogg"
    subprocess.run(
        [ffmpeg_executable(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"sine=frequency=330:duration={seconds}:sample_rate=48000", "-ac", "1", "-c:a", "libopus",
         "-b:a", "32k", str(path)],
        check=True,
    )  # fmt: skip
    return path.read_bytes()


def decoded(data: bytes, folder: Path, name: str) -> np.ndarray:
    path = folder / name
    path.write_bytes(data)
    return decode_clip(path, channels=1, timeout_s=30, max_seconds=600)


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    return add_server(fake_discord, "Jam room", ("alice", "bob"))


@pytest.fixture(scope="module")
def config(module_data_dir: Path, engine_settings: EngineSettings) -> BotConfig:
    """One database for the module: job numbers (which the result footers show) never repeat."""
    return scenario_config(module_data_dir, engine_settings, max_attachment_mb=5, max_pending_per_user=3)


def refused_requests(fake: FakeDiscord, since: int) -> list[str]:
    return [f"{r.method} {r.path} → {r.status}" for r in fake.requests[since:] if r.status >= 400]


@pytest_asyncio.fixture
async def bot(
    fake_discord: FakeDiscord, config: BotConfig, inference_client: InferenceClient
) -> AsyncIterator[MusicGenBot]:
    first_request = len(fake_discord.requests)
    async with musicgen_bot(fake_discord, config, inference_client) as running:
        yield running
    # Every request the bot made was one Discord accepts.
    assert refused_requests(fake_discord, first_request) == []
    assert not fake_discord.unhandled_requests


async def open_context_menu(fake: FakeDiscord, member: FakeMember, message: FakeMessage) -> FakeInteraction:
    interaction = await fake.invoke_message_command(member, message, CONTEXT_MENU)
    await interaction.wait_for_response()
    return interaction


async def submit(
    fake: FakeDiscord, member: FakeMember, opened: FakeInteraction, **values: str
) -> FakeInteraction:
    assert opened.response_type == 9, "the bot answered with a modal"
    submitted = await fake.submit_modal(member, opened, values)
    await submitted.wait_for_response()
    return submitted


async def test_the_context_menu_on_a_long_clip_posts_the_whole_piece_with_the_original_unchanged(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, tmp_path: Path
) -> None:
    fake, alice = fake_discord, server["alice"]
    original = tone(34.0)  # longer than the model's 30 s
    clip = fake.add_attachment("long-take.wav", wav_bytes(original, tmp_path, "long-take.wav"))
    posted = await fake.post_user_message(alice, server.channel, attachments=[clip])

    opened = await open_context_menu(fake, alice, posted)
    assert opened.modal is not None and opened.modal["title"] == CONTEXT_MENU
    submitted = await submit(fake, alice, opened, prompt="add brass", seconds="2")
    job_id = await queued_job_id(submitted)
    result = await posted_result(fake, server.channel, job_id)

    row = await wait_for_status(bot, job_id, "done")
    assert row["source_message_id"] == posted.id and row["source_channel_id"] == server.channel.id
    assert row["context_s"] == pytest.approx(10.0) and row["context_start_s"] == pytest.approx(24.0)
    assert row["continuation"] == 1 and row["duration"] == 2 and row["model_version"] == "small"
    piece = decoded(result.attachments[0].data, tmp_path, "piece.wav")
    assert piece.shape[0] == original.shape[0] + 2 * SAMPLE_RATE
    join = original.shape[0]
    away_from_crossfade = join - round(0.02 * SAMPLE_RATE)
    np.testing.assert_allclose(piece[:away_from_crossfade], original[:away_from_crossfade], atol=1 / 32767)
    assert (
        "34.0 s + 2 s new" in result.text and "long\\-take.wav" in result.text
    )  # escaped, as every member's text
    # The picture: a PNG attached and shown in the embed.
    picture = result.attachments[1]
    assert picture.filename == f"musicgen-{job_id}.png"
    assert result.embeds[0]["image"]["url"] == picture.url  # Discord resolves attachment://
    assert Image.open(io.BytesIO(picture.data)).size == (640, 120)


async def test_the_context_menu_on_a_voice_message_continues_it(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, tmp_path: Path
) -> None:
    fake, bob = fake_discord, server["bob"]
    voice = fake.add_attachment(
        "voice-message.ogg", opus_voice_message(tmp_path, 1.5), content_type="audio/ogg", duration_secs=1.5
    )
    message = await fake.post_user_message(bob, server.channel, attachments=[voice], voice_message=True)
    assert message.flags & MessageFlag.IS_VOICE_MESSAGE

    submitted = await submit(fake, bob, await open_context_menu(fake, bob, message), seconds="1")
    job_id = await queued_job_id(submitted)
    result = await posted_result(fake, server.channel, job_id)
    piece = decoded(result.attachments[0].data, tmp_path, "voice-piece.wav")
    assert piece.shape[0] / SAMPLE_RATE == pytest.approx(1.5 + 1.0, abs=0.01)
    assert (await job_row(bot, job_id))["input_audio_filename"] == "voice-message.ogg"


async def test_the_context_menu_on_a_message_without_audio_says_so(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake, alice = fake_discord, server["alice"]
    message = await fake.post_user_message(alice, server.channel, "just words")
    jobs_before = await job_count(bot)
    interaction = await open_context_menu(fake, alice, message)
    assert "no audio" in await private_reply(interaction)
    assert await job_count(bot) == jobs_before


@pytest.mark.parametrize(
    ("typed", "answer"),
    [("ten", "whole number"), ("NaN", "whole number"), ("2.5", "whole number"), ("145", "between 1 and 120")],
)
async def test_a_modal_with_bad_seconds_is_answered_privately_and_queues_nothing(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, tmp_path: Path, typed: str, answer: str
) -> None:
    fake, alice = fake_discord, server["alice"]
    clip = fake.add_attachment("a.wav", wav_bytes(tone(1.0), tmp_path, "a.wav"))
    message = await fake.post_user_message(alice, server.channel, attachments=[clip])
    jobs_before = await job_count(bot)
    submitted = await submit(fake, alice, await open_context_menu(fake, alice, message), seconds=typed)
    assert answer in await private_reply(submitted)
    assert await job_count(bot) == jobs_before and not await stuck_jobs(bot)


async def test_several_clips_the_modal_says_the_first_is_used(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, tmp_path: Path
) -> None:
    fake, alice = fake_discord, server["alice"]
    first = fake.add_attachment("first.wav", wav_bytes(tone(1.0), tmp_path, "first.wav"))
    second = fake.add_attachment("second.wav", wav_bytes(tone(2.0), tmp_path, "second.wav"))
    message = await fake.post_user_message(alice, server.channel, attachments=[first, second])
    opened = await open_context_menu(fake, alice, message)
    assert opened.modal is not None and opened.modal["title"] == "Continue the first of 2 clips"
    job_id = await queued_job_id(await submit(fake, alice, opened, seconds="1"))
    await posted_result(fake, server.channel, job_id)
    assert (await job_row(bot, job_id))["input_audio_filename"] == "first.wav"


async def generate_result(
    fake: FakeDiscord, server: Server, member: FakeMember, prompt: str = "drums"
) -> FakeMessage:
    interaction = await fake.invoke_slash_command(
        member, server.channel, "generate", {"prompt": prompt, "duration": 1}
    )
    await interaction.wait_for_response()
    return await posted_result(fake, server.channel, await queued_job_id(interaction))


async def test_a_reply_with_a_mention_continues_a_bot_result_without_the_content_intent(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, tmp_path: Path
) -> None:
    fake, alice = fake_discord, server["alice"]
    assert not bot.intents.message_content
    result = await generate_result(fake, server, alice)
    reply = await fake.post_user_message(
        alice, server.channel, f"{fake.bot_user.mention} 2s add brass and drums", reply_to=result
    )
    status = await fake.wait_for_message(
        server.channel, lambda m: m.author is fake.bot_user and m.reference is reply and "Job #" in m.content
    )
    job_id = int(status.content.split("Job #", 1)[1].split()[0].rstrip(":.,"))
    piece = await posted_result(fake, server.channel, job_id)
    row = await wait_for_status(bot, job_id, "done")
    assert row["prompt"] == "add brass and drums" and row["duration"] == 2
    assert row["source_message_id"] == result.id and row["status_message_id"] == status.id
    assert decoded(piece.attachments[0].data, tmp_path, "reply.wav").shape[0] == 3 * SAMPLE_RATE
    assert f"<@{alice.id}>" in piece.content

    # Re-rolling the continuation continues the same clip again, with a new seed.
    reroll = await fake.click_button(alice, piece, f"musicgen:reroll:{job_id}")
    rerolled_id = await queued_job_id(reroll)
    again = await posted_result(fake, server.channel, rerolled_id)
    rerolled = await wait_for_status(bot, rerolled_id, "done")
    assert rerolled["source_message_id"] == result.id and rerolled["context_s"] == row["context_s"]
    assert rerolled["seed"] != row["seed"]
    assert decoded(again.attachments[0].data, tmp_path, "again.wav").shape[0] == 3 * SAMPLE_RATE


async def test_a_reply_asking_for_80s_synthwave_gets_that_prompt_and_the_default_seconds(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake, bob = fake_discord, server["bob"]
    result = await generate_result(fake, server, bob, "lofi drums")
    reply = await fake.post_user_message(
        bob, server.channel, f"{fake.bot_user.mention} 80s synthwave", reply_to=result
    )
    status = await fake.wait_for_message(
        server.channel, lambda m: m.author is fake.bot_user and m.reference is reply and "Job #" in m.content
    )
    assert "between" not in status.content  # no refusal of "80 seconds"
    job_id = int(status.content.split("Job #", 1)[1].split()[0].rstrip(":.,"))
    row = await job_row(bot, job_id)
    assert (row["prompt"], row["duration"]) == ("80s synthwave", DEFAULT_NEW_SECONDS)
    await posted_result(fake, server.channel, job_id)


async def test_a_reply_to_a_members_clip_without_the_intent_explains_the_context_menu(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, tmp_path: Path
) -> None:
    fake, alice, bob = fake_discord, server["alice"], server["bob"]
    clip = fake.add_attachment("riff.wav", wav_bytes(tone(1.0), tmp_path, "riff.wav"))
    riff = await fake.post_user_message(bob, server.channel, attachments=[clip])
    jobs_before = await job_count(bot)
    reads_before = len(fake.requests_to("GET", "/channels/{channel_id}/messages/{message_id}"))
    reply = await fake.post_user_message(alice, server.channel, f"{fake.bot_user.mention} 4s", reply_to=riff)
    answer = await fake.wait_for_message(server.channel, lambda m: m.reference is reply)
    assert CONTEXT_MENU in answer.content
    assert await job_count(bot) == jobs_before
    assert len(fake.requests_to("GET", "/channels/{channel_id}/messages/{message_id}")) == reads_before


async def test_a_reply_without_a_typed_mention_is_ignored(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake, alice = fake_discord, server["alice"]
    result = await generate_result(fake, server, alice, "quiet")
    jobs_before = await job_count(bot)
    reply = await fake.post_user_message(alice, server.channel, "nice one", reply_to=result)  # pings the bot
    await asyncio.sleep(0.5)
    assert not [m for m in fake.bot_messages(server.channel) if m.reference is reply]
    assert await job_count(bot) == jobs_before


async def test_with_the_content_intent_a_reply_to_a_members_clip_continues_it(
    fake_discord: FakeDiscord,
    server: Server,
    config: BotConfig,
    inference_client: InferenceClient,
    tmp_path: Path,
) -> None:
    fake, alice, bob = fake_discord, server["alice"], server["bob"]
    with_intent = config.model_copy(
        update={"bot": BotOptions(**{**config.bot.model_dump(), "message_content_intent": True})}
    )
    async with musicgen_bot(fake, with_intent, inference_client) as bot:
        assert bot.intents.message_content
        clip = fake.add_attachment("riff.wav", wav_bytes(tone(1.0), tmp_path, "riff2.wav"))
        riff = await fake.post_user_message(bob, server.channel, attachments=[clip])
        reply = await fake.post_user_message(
            alice, server.channel, f"{fake.bot_user.mention} 1 sec", reply_to=riff
        )
        status = await fake.wait_for_message(
            server.channel, lambda m: m.reference is reply and "Job #" in m.content
        )
        job_id = int(status.content.split("Job #", 1)[1].split()[0].rstrip(":.,"))
        piece = await posted_result(fake, server.channel, job_id)
        assert decoded(piece.attachments[0].data, tmp_path, "riff-piece.wav").shape[0] == 2 * SAMPLE_RATE
        assert (await job_row(bot, job_id))["user_id"] == alice.id


async def test_every_result_has_the_four_buttons_and_details_tells_everything(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake, alice = fake_discord, server["alice"]
    result = await generate_result(fake, server, alice, "details please")
    job_id = int(result.embeds[0]["footer"]["text"].split("#")[1].split()[0])
    assert [b["label"] for b in result.buttons()] == ["Re-roll", "Continue", "Use as melody", "Details"]
    details = await fake.click_button(alice, result, f"musicgen:details:{job_id}")
    answer = await details.wait_for_final(lambda m: m.is_ephemeral and bool(m.embeds))
    row = await job_row(bot, job_id)
    assert f"`{row['seed']}`" in answer.text and "prompt = details please" in answer.text
    assert f"<@{alice.id}>" in answer.text and "made in" in answer.text


async def test_reroll_continue_and_melody_buttons_keep_working_after_a_restart(
    fake_discord: FakeDiscord,
    server: Server,
    config: BotConfig,
    inference_client: InferenceClient,
    tmp_path: Path,
) -> None:
    fake, alice = fake_discord, server["alice"]
    async with musicgen_bot(fake, config, inference_client):
        result = await generate_result(fake, server, alice, "before the restart")
    job_id = int(result.embeds[0]["footer"]["text"].split("#")[1].split()[0])

    async with musicgen_bot(fake, config, inference_client) as bot:
        original = await job_row(bot, job_id)
        reroll = await fake.click_button(alice, result, f"musicgen:reroll:{job_id}")
        rerolled_id = await queued_job_id(reroll)
        await posted_result(fake, server.channel, rerolled_id)
        rerolled = await wait_for_status(bot, rerolled_id, "done")
        assert rerolled["prompt"] == original["prompt"] and rerolled["duration"] == original["duration"]
        assert rerolled["seed"] != original["seed"]

        opened = await fake.click_button(alice, result, f"musicgen:continue:{job_id}")
        await opened.wait_for_response()
        continued_id = await queued_job_id(await submit(fake, alice, opened, seconds="1"))
        continued = await posted_result(fake, server.channel, continued_id)
        assert decoded(continued.attachments[0].data, tmp_path, "cont.wav").shape[0] == 2 * SAMPLE_RATE
        assert (await job_row(bot, continued_id))["source_message_id"] == result.id

        opened = await fake.click_button(alice, result, f"musicgen:melody:{job_id}")
        await opened.wait_for_response()
        melody_id = await queued_job_id(await submit(fake, alice, opened, prompt="strings over it"))
        await posted_result(fake, server.channel, melody_id)
        melody = await wait_for_status(bot, melody_id, "done")
        assert melody["model_version"] == "melody" and melody["continuation"] == 0
        assert Path(melody["input_audio"]).read_bytes() == Path(original["output_path"]).read_bytes()
    assert not fake.unhandled_requests


async def test_a_full_queue_refuses_the_buttons_and_the_context_menu_privately(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, tmp_path: Path
) -> None:
    fake, bob = fake_discord, server["bob"]
    result = await generate_result(fake, server, bob, "one")
    job_id = int(result.embeds[0]["footer"]["text"].split("#")[1].split()[0])
    bot.dispatcher.pause()
    try:
        for prompt in ("two", "three", "four"):  # bob's cap is 3 pending jobs
            await queued_job_id(
                await fake.invoke_slash_command(
                    bob, server.channel, "generate", {"prompt": prompt, "duration": 1}
                )
            )
        jobs_before = await job_count(bot)
        for action in ("reroll", "continue", "melody"):
            pressed = await fake.click_button(bob, result, f"musicgen:{action}:{job_id}")
            assert "already have 3" in await private_reply(pressed)
        assert "already have 3" in await private_reply(await open_context_menu(fake, bob, result))
        assert await job_count(bot) == jobs_before
    finally:
        bot.dispatcher.resume()
    for job in await bot.jobs.pending_in_guild(server.guild.id):
        await wait_for_status(bot, job.id, "done")


async def test_a_piece_too_large_even_as_mp3_is_posted_as_its_new_seconds_and_says_so(
    fake_discord: FakeDiscord, config: BotConfig, inference_client: InferenceClient, tmp_path: Path
) -> None:
    fake = fake_discord
    small_uploads = add_server(fake, "Small uploads", ("carol",), attachment_size_limit=100_000)
    carol = small_uploads["carol"]
    path = tmp_path / "long.mp3"
    subprocess.run(
        [ffmpeg_executable(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", "sine=frequency=220:duration=40", "-ac", "1", "-ar", "8000", "-b:a", "8k", str(path)],
        check=True,
    )  # fmt: skip
    clip = fake.add_attachment("long.mp3", path.read_bytes())
    message = await fake.post_user_message(carol, small_uploads.channel, attachments=[clip])
    async with musicgen_bot(fake, config, inference_client) as bot:
        submitted = await submit(fake, carol, await open_context_menu(fake, carol, message), seconds="1")
        job_id = await queued_job_id(submitted)
        result = await posted_result(fake, small_uploads.channel, job_id)
        # 41 s of WAV is 2.6 MB, and even 32 kbit/s MP3 is 164 KB: over the 100 KB limit.
        assert "here is only the new part (1 s)" in result.content
        new_part = decoded(result.attachments[0].data, tmp_path, "new-part.wav")
        assert new_part.shape[0] == SAMPLE_RATE
        assert (await wait_for_status(bot, job_id, "done"))["posted_format"] == "wav"


async def test_a_reply_queued_before_a_restart_is_made_after_it_and_its_status_reply_follows(
    fake_discord: FakeDiscord,
    server: Server,
    config: BotConfig,
    inference_client: InferenceClient,
    tmp_path: Path,
) -> None:
    fake, bob = fake_discord, server["bob"]
    async with musicgen_bot(fake, config, inference_client) as first_run:
        result = await generate_result(fake, server, bob, "before")
        first_run.dispatcher.pause()
        reply = await fake.post_user_message(
            bob, server.channel, f"{fake.bot_user.mention} 1s", reply_to=result
        )
        status = await fake.wait_for_message(
            server.channel, lambda m: m.reference is reply and "is queued" in m.content
        )
        job_id = int(status.content.split("Job #", 1)[1].split()[0].rstrip(":.,;"))
    async with musicgen_bot(fake, config, inference_client) as second_run:
        piece = await posted_result(fake, server.channel, job_id)
        row = await wait_for_status(second_run, job_id, "done")
        assert row["status_message_id"] == status.id and row["source_message_id"] == result.id
        assert decoded(piece.attachments[0].data, tmp_path, "after-restart.wav").shape[0] == 2 * SAMPLE_RATE
        await fake.wait_for_message(server.channel, lambda m: m.id == status.id and "is done" in m.content)
