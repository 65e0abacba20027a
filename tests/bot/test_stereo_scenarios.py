"""Stereo through the bot: a stereo model's result, its continuations, jams and "Use as melody".

The module's worker serves the tiny stereo checkpoints (`stereo_engine_settings`) beside the mono
ones, so a member can pick stereo-small, and an admin can make it the server's default, which every
continuation runs on.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import soundfile
from PIL import Image

from bot.app import MusicGenBot
from bot.audio.editing import SAMPLE_RATE, write_wav
from bot.audio.waveform import LANE_DIVIDER
from inference.backends.local import InferenceClient
from inference.media.ffmpeg import decode_audio_file
from inference.settings import EngineSettings
from tests.bot.scenario_harness import (
    Server,
    add_server,
    musicgen_bot,
    posted_result,
    private_reply,
    queued_job_id,
    run_command,
    scenario_config,
    wait_for_status,
)
from tests.bot.test_continue_scenarios import tone
from tests.bot.test_jam_scenarios import audio_named, start_jam, take_turn, turn_result
from tests.fake_discord import FakeDiscord, FakeMember, FakeMessage, Permission

# The crossfade at a join: away from it, the original is posted as it was.
CROSSFADE_SAMPLES = round(0.02 * SAMPLE_RATE)
# 16-bit PCM's step: what a WAV round trip may change.
PCM_STEP = 1 / 32767


@pytest_asyncio.fixture(scope="module")
async def inference_client(stereo_engine_settings: EngineSettings) -> AsyncIterator[InferenceClient]:
    async with InferenceClient(stereo_engine_settings, processes=1) as client:
        yield client


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    server = add_server(fake_discord, "Stereo room", ("alice", "bob"))
    server.members["admin"] = fake_discord.add_member(
        server.guild, "admin", permissions=Permission.MANAGE_GUILD
    )
    return server


@pytest_asyncio.fixture(scope="module")
async def bot(
    fake_discord: FakeDiscord,
    server: Server,
    inference_client: InferenceClient,
    stereo_engine_settings: EngineSettings,
    module_data_dir: Path,
) -> AsyncIterator[MusicGenBot]:
    config = scenario_config(module_data_dir, stereo_engine_settings, max_pending_per_user=3)
    async with musicgen_bot(fake_discord, config, inference_client) as running:
        yield running


def audio_of(data: bytes, folder: Path, name: str) -> np.ndarray:
    """A posted file's samples, [samples, channels] at 32 kHz in the file's own channels."""
    path = folder / name
    path.write_bytes(data)
    return decode_audio_file(path, sample_rate=SAMPLE_RATE)


def has_two_lanes(png: bytes) -> bool:
    """The waveform picture is drawn as two lanes: the divider runs across its middle."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    middle = image.height // 2
    divided = sum(image.getpixel((x, middle)) == LANE_DIVIDER for x in range(image.width))
    return divided > image.width * 0.9


def assert_stereo(samples: np.ndarray) -> None:
    """Two channels that are not one signal twice (a stereo model's own left and right)."""
    assert samples.shape[1] == 2
    assert np.abs(samples[:, 0] - samples[:, 1]).max() > 0.01


async def generate(
    fake: FakeDiscord, server: Server, member: FakeMember, **options: object
) -> tuple[int, FakeMessage]:
    interaction = await run_command(fake, member, server.channel, "generate", duration=1, **options)
    job_id = await queued_job_id(interaction)
    return job_id, await posted_result(fake, server.channel, job_id)


async def set_default_model(fake: FakeDiscord, server: Server, version: str | None) -> None:
    options = {} if version is None else {"model_version": version}
    answer = await private_reply(
        await run_command(fake, server["admin"], server.channel, "musicgen-settings default_model", **options)
    )
    assert version is None or f"now uses the {version} model" in answer


async def continue_with_button(
    fake: FakeDiscord, member: FakeMember, result: FakeMessage, job_id: int, seconds: int = 1
) -> int:
    opened = await fake.click_button(member, result, f"musicgen:continue:{job_id}")
    await opened.wait_for_response()
    submitted = await fake.submit_modal(member, opened, {"prompt": "more", "seconds": str(seconds)})
    await submitted.wait_for_response()
    return await queued_job_id(submitted)


# -- /generate ---------------------------------------------------------------------------------------


async def test_a_stereo_model_posts_two_channels_at_32_khz_in_wav_and_mp3_with_a_two_lane_picture(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, tmp_path: Path
) -> None:
    fake, alice = fake_discord, server["alice"]
    wav_job, wav_result = await generate(
        fake, server, alice, prompt="wide pads", model_version="stereo-small"
    )
    mp3_job, mp3_result = await generate(
        fake, server, alice, prompt="wide pads", model_version="stereo-small", output_format="mp3"
    )

    for job_id, result, ending in ((wav_job, wav_result, ".wav"), (mp3_job, mp3_result, ".mp3")):
        row = await wait_for_status(bot, job_id, "done")
        assert row["model_version"] == "stereo-small"
        data = audio_named(result, ending)
        header = soundfile.info(io.BytesIO(data))
        assert (header.channels, header.samplerate) == (2, SAMPLE_RATE)
        samples = audio_of(data, tmp_path, f"{job_id}{ending}")
        assert_stereo(samples)
        assert samples.shape[0] == pytest.approx(SAMPLE_RATE, abs=0.06 * SAMPLE_RATE)  # MP3 pads a little
        assert has_two_lanes(audio_named(result, ".png"))
        assert {f["name"]: f["value"] for f in result.embeds[0]["fields"]}["Model"] == "stereo-small"
    # A mono model's picture keeps one lane.
    _, mono = await generate(fake, server, alice, prompt="narrow", model_version="small")
    assert audio_of(audio_named(mono, ".wav"), tmp_path, "mono.wav").shape[1] == 1
    assert not has_two_lanes(audio_named(mono, ".png"))


# -- continuing ----------------------------------------------------------------------------------------


async def test_with_a_stereo_default_a_stereo_result_is_continued_in_stereo_by_button_and_by_reply(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, tmp_path: Path
) -> None:
    fake, alice, bob = fake_discord, server["alice"], server["bob"]
    source_job, result = await generate(fake, server, alice, prompt="strings", model_version="stereo-small")
    original = audio_of(audio_named(result, ".wav"), tmp_path, "original.wav")
    await set_default_model(fake, server, "stereo-small")
    try:
        by_button = await continue_with_button(fake, alice, result, source_job)
        piece_message = await posted_result(fake, server.channel, by_button)
        reply = await fake.post_user_message(
            bob, server.channel, f"{fake.bot_user.mention} 1s", reply_to=result
        )
        status = await fake.wait_for_message(
            server.channel,
            lambda m: m.author is fake.bot_user and m.reference is reply and "Job #" in m.content,
        )
        by_reply = int(status.content.split("Job #", 1)[1].split()[0].rstrip(":.,"))
        reply_message = await posted_result(fake, server.channel, by_reply)
    finally:
        await set_default_model(fake, server, None)

    for job_id, message in ((by_button, piece_message), (by_reply, reply_message)):
        assert (await wait_for_status(bot, job_id, "done"))["model_version"] == "stereo-small"
        piece = audio_of(audio_named(message, ".wav"), tmp_path, f"piece-{job_id}.wav")
        assert piece.shape == (original.shape[0] + SAMPLE_RATE, 2)
        # The original is posted as it was, each channel its own; the new second is stereo too.
        kept = original.shape[0] - CROSSFADE_SAMPLES
        np.testing.assert_allclose(piece[:kept], original[:kept], atol=PCM_STEP)
        assert_stereo(piece[original.shape[0] :])
        assert has_two_lanes(audio_named(message, ".png"))


async def test_a_mono_clip_continued_by_a_stereo_default_becomes_stereo_and_a_mono_model_keeps_it_so(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, tmp_path: Path
) -> None:
    fake, alice = fake_discord, server["alice"]
    riff = tone(1.0)
    clip = fake.add_attachment("riff.wav", write_wav(riff, tmp_path / "riff.wav").read_bytes())
    posted = await fake.post_user_message(alice, server.channel, attachments=[clip])

    await set_default_model(fake, server, "stereo-small")
    try:
        menu = await fake.invoke_message_command(alice, posted, "Continue with MusicGen")
        await menu.wait_for_response()
        submitted = await fake.submit_modal(alice, menu, {"seconds": "1"})
        await submitted.wait_for_response()
        widened_job = await queued_job_id(submitted)
        widened_message = await posted_result(fake, server.channel, widened_job)
    finally:
        await set_default_model(fake, server, None)
    widened = audio_of(audio_named(widened_message, ".wav"), tmp_path, "widened.wav")
    assert widened.shape == (2 * SAMPLE_RATE, 2)
    kept = SAMPLE_RATE - CROSSFADE_SAMPLES
    for channel in (0, 1):  # the mono clip on both channels, as it was
        np.testing.assert_allclose(widened[:kept, channel], riff[:kept, 0], atol=PCM_STEP)
    assert_stereo(widened[SAMPLE_RATE:])

    # The server's default is small again: its new second goes to both channels, the piece stays stereo.
    again_job = await continue_with_button(fake, alice, widened_message, widened_job)
    again = audio_of(
        audio_named(await posted_result(fake, server.channel, again_job), ".wav"), tmp_path, "again.wav"
    )
    assert (await wait_for_status(bot, again_job, "done"))["model_version"] == "small"
    assert again.shape == (3 * SAMPLE_RATE, 2)
    np.testing.assert_allclose(
        again[: 2 * SAMPLE_RATE - CROSSFADE_SAMPLES], widened[:-CROSSFADE_SAMPLES], atol=PCM_STEP
    )
    np.testing.assert_array_equal(again[2 * SAMPLE_RATE :, 0], again[2 * SAMPLE_RATE :, 1])


# -- jams ------------------------------------------------------------------------------------------------


async def test_a_jam_on_a_stereo_model_stays_stereo_in_every_turn_and_in_its_export(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, tmp_path: Path
) -> None:
    fake, bob = fake_discord, server["bob"]
    thread = await start_jam(
        fake, server, "alice", "stereo jam", model_version="stereo-small", turn_seconds=1
    )
    first = await turn_result(fake, thread, 1)
    opening = audio_of(audio_named(first, "-piece.wav"), tmp_path, "turn-1.wav")
    assert_stereo(opening)
    assert has_two_lanes(audio_named(first, ".png"))

    await take_turn(fake, bob, thread, prompt="add brass")
    second = await turn_result(fake, thread, 2)
    new_part = audio_of(audio_named(second, "-new.wav"), tmp_path, "turn-2-new.wav")
    piece = audio_of(audio_named(second, "-piece.wav"), tmp_path, "turn-2-piece.wav")
    assert new_part.shape == (SAMPLE_RATE, 2) and piece.shape == (2 * SAMPLE_RATE, 2)
    assert_stereo(new_part)
    np.testing.assert_allclose(
        piece[: SAMPLE_RATE - CROSSFADE_SAMPLES], opening[:-CROSSFADE_SAMPLES], atol=PCM_STEP
    )
    assert has_two_lanes(audio_named(second, ".png"))

    for output_format in ("wav", "mp3"):
        export = await run_command(fake, bob, thread, "jam export", output_format=output_format)
        exported = await export.wait_for_final(lambda m: not m.is_loading and bool(m.attachments))
        samples = audio_of(audio_named(exported, f".{output_format}"), tmp_path, f"export.{output_format}")
        assert samples.shape[1] == 2
        assert samples.shape[0] == pytest.approx(2 * SAMPLE_RATE, abs=0.06 * SAMPLE_RATE)
        assert has_two_lanes(audio_named(exported, ".png"))
    turns = await bot.jobs.get(int(second.embeds[0]["footer"]["text"].split("Job #", 1)[1].split()[0]))
    assert turns is not None and turns.request.model_version == "stereo-small"


# -- use as melody ------------------------------------------------------------------------------------


async def use_as_melody(fake: FakeDiscord, member: FakeMember, result: FakeMessage, job_id: int) -> int:
    opened = await fake.click_button(member, result, f"musicgen:melody:{job_id}")
    await opened.wait_for_response()
    submitted = await fake.submit_modal(member, opened, {"prompt": "a cover"})
    await submitted.wait_for_response()
    return await queued_job_id(submitted)


async def test_use_as_melody_follows_a_stereo_result_with_stereo_melody_and_a_mono_one_with_melody(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, tmp_path: Path
) -> None:
    fake, bob = fake_discord, server["bob"]
    stereo_job, stereo_result = await generate(
        fake, server, bob, prompt="a tune", model_version="stereo-small"
    )
    mono_job, mono_result = await generate(fake, server, bob, prompt="a tune", model_version="small")

    from_stereo = await use_as_melody(fake, bob, stereo_result, stereo_job)
    from_mono = await use_as_melody(fake, bob, mono_result, mono_job)
    stereo_cover = await posted_result(fake, server.channel, from_stereo)
    mono_cover = await posted_result(fake, server.channel, from_mono)

    assert (await wait_for_status(bot, from_stereo, "done"))["model_version"] == "stereo-melody"
    assert (await wait_for_status(bot, from_mono, "done"))["model_version"] == "melody"
    assert_stereo(audio_of(audio_named(stereo_cover, ".wav"), tmp_path, "stereo-cover.wav"))
    assert audio_of(audio_named(mono_cover, ".wav"), tmp_path, "mono-cover.wav").shape[1] == 1
