"""Members attach broken or hostile files and send out-of-range options: each gets a clear private
answer or a correct result, and nothing is left behind (no job row, no stored upload, no stuck queue)."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.app import MusicGenBot
from inference.backends.local import InferenceClient
from inference.media.ffmpeg import ffmpeg_executable
from inference.settings import EngineSettings
from tests.bad_input_corpus import CorpusFile, build_corpus, wav_header
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
    stuck_jobs,
    wait_for_status,
    wav_seconds,
)
from tests.fake_discord import FakeDiscord, FakeDiscordValidationError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CorpusFile]:
    folder = tmp_path_factory.mktemp("corpus")
    files = {
        name: entry for name, entry in build_corpus(folder).items() if entry.path.stat().st_size < 1 << 20
    }
    # Ten minutes and ten seconds of real audio in 620 KB: over the bot's 600 s limit.
    too_long = folder / "long-mix.mp3"
    subprocess.run(
        [ffmpeg_executable(), "-nostdin", "-v", "error", "-f", "lavfi", "-i", "sine=duration=610:sample_rate=8000",
         "-b:a", "8k", str(too_long)],
        check=True,
    )  # fmt: skip
    files["ten minutes and ten seconds"] = CorpusFile(too_long, refused="longer than 600 s")
    # A header that claims two hours in front of one second of samples.
    files["a WAV header claiming two hours"] = CorpusFile(
        _write(folder / "claims-two-hours.wav",
               wav_header(rate=8000, channels=1, bits=16, data_bytes=2 * 3600 * 16000) + bytes(16000)),
        seconds=1.0,
    )  # fmt: skip
    return files


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest_asyncio.fixture(scope="module")
async def studio(fake_discord: FakeDiscord) -> Server:
    return add_server(fake_discord, "Hostile uploads", ("mallory", "alice"))


@pytest_asyncio.fixture(scope="module")
async def bot(
    fake_discord: FakeDiscord,
    studio: Server,
    inference_client: InferenceClient,
    engine_settings: EngineSettings,
    module_data_dir: Path,
) -> AsyncIterator[MusicGenBot]:
    config = scenario_config(module_data_dir, engine_settings, max_attachment_mb=1.0)
    async with musicgen_bot(fake_discord, config, inference_client) as running:
        yield running


REFUSED = [
    "zero bytes",
    "a PNG named .mp3",
    "an ffconcat playlist named .mp3",
    "random bytes named .wav",
    "ten minutes and ten seconds",
]


@pytest.mark.parametrize("name", REFUSED)
async def test_a_file_that_cannot_be_used_gets_a_private_answer_and_leaves_nothing_behind(
    bot: MusicGenBot, fake_discord: FakeDiscord, studio: Server, corpus: dict[str, CorpusFile], name: str
) -> None:
    entry = corpus[name]
    attachment = fake_discord.add_attachment(
        entry.path.name, entry.path.read_bytes(), content_type="audio/mpeg"
    )
    rows_before = await job_count(bot)
    interaction = await run_command(
        fake_discord, studio["mallory"], studio.channel, "generate",
        prompt="x", model_version="melody", input_audio=attachment, duration=1,
    )  # fmt: skip
    reply = await private_reply(interaction)
    assert entry.refused is not None and entry.refused in reply
    assert "ffmpeg" not in reply and "Traceback" not in reply
    assert await job_count(bot) == rows_before and await stuck_jobs(bot) == []
    assert list(bot.uploads_dir.iterdir()) == [], "the refused upload was deleted"


@pytest.mark.parametrize("name", ["a WAV header claiming two hours", "8 channels", "96 kHz", "50 ms"])
async def test_an_odd_but_real_clip_is_used(
    bot: MusicGenBot, fake_discord: FakeDiscord, studio: Server, corpus: dict[str, CorpusFile], name: str
) -> None:
    entry = corpus[name]
    attachment = fake_discord.add_attachment(entry.path.name, entry.path.read_bytes())
    interaction = await run_command(
        fake_discord, studio["alice"], studio.channel, "generate",
        model_version="encode-decode", input_audio=attachment, duration=1,
    )  # fmt: skip
    job_id = await queued_job_id(interaction)
    result = await posted_result(fake_discord, studio.channel, job_id)
    assert entry.seconds is not None
    assert wav_seconds(result.attachments[0].data) == pytest.approx(entry.seconds, abs=0.06)
    await wait_for_status(bot, job_id, "done")
    for upload in bot.uploads_dir.iterdir():  # kept for /replay; not needed here
        upload.unlink()


async def test_a_start_past_the_end_of_the_clip_is_explained(
    bot: MusicGenBot, fake_discord: FakeDiscord, studio: Server, corpus: dict[str, CorpusFile]
) -> None:
    clip = fake_discord.add_attachment("blip.wav", corpus["50 ms"].path.read_bytes())
    interaction = await run_command(
        fake_discord, studio["alice"], studio.channel, "generate",
        prompt="x", input_audio=clip, continuation=True, continuation_start=1e9, duration=1,
    )  # fmt: skip
    assert "past the end of the clip" in await private_reply(interaction)


@pytest.mark.parametrize(
    "options",
    [
        {"prompt": "x" * 10_000},
        {"prompt": "x", "duration": 2.5},
        {"prompt": "x", "top_k": 2.5},
        {"prompt": "x", "temperature": float("nan")},
        {"prompt": "x", "classifier_free_guidance": float("inf")},
        {"prompt": "x", "continuation_start": float("nan")},
    ],
)
async def test_discord_refuses_options_its_client_cannot_send(
    bot: MusicGenBot, fake_discord: FakeDiscord, studio: Server, options: dict[str, object]
) -> None:
    with pytest.raises(FakeDiscordValidationError):
        await fake_discord.invoke_slash_command(studio["mallory"], studio.channel, "generate", options)
