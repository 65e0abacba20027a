"""Members ask for pieces longer than the model's 30 s, up to `[limits] max_duration_s`.

The real bot on the fake Discord, with `small` served by a tiny model whose window is 2 s (extended
with a 1 s stride), so that a 45 s piece is made of 44 windows in a few seconds. This server allows
45 s: /generate offers up to 45, the bot makes them, and asks for more are refused privately.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import pytest_asyncio
import soundfile

from bot.app import MusicGenBot
from bot.audio.editing import SAMPLE_RATE, write_wav
from inference.settings import EngineSettings
from tests.bot.scenario_harness import (
    Server,
    add_server,
    job_count,
    posted_result,
    private_reply,
    queued_job_id,
    run_command,
    stuck_jobs,
    wait_for_status,
    wav_seconds,
)
from tests.bot.test_continue_scenarios import tone
from tests.fake_discord import (
    FakeDiscord,
    FakeDiscordValidationError,
    FakeInteraction,
    FakeMember,
    FakeMessage,
)

MAX_SECONDS = 45
CONTEXT_MENU = "Continue with MusicGen"


@pytest.fixture(scope="module")
def engine_settings(
    engine_settings: EngineSettings, tmp_path_factory: pytest.TempPathFactory
) -> EngineSettings:
    """The usual tiny models, with `small` on one whose window is 2 s, extended 1 s at a time."""
    from inference.checkpoints.random_models import make_test_model

    window_2s = make_test_model(
        "small", tmp_path_factory.mktemp("window-2s") / "small", tiny=True, window_s=2.0
    )
    models = engine_settings.models.model_copy(update={"small": str(window_2s)})
    engine = engine_settings.engine.model_copy(update={"extend_stride_s": 1.0})
    return engine_settings.model_copy(update={"models": models, "engine": engine})


@pytest.fixture(scope="module")
def scenario_limits() -> dict[str, object]:
    # A continuation's context must be shorter than the 2 s window.
    return {
        "max_duration_s": MAX_SECONDS,
        "continuation_context_s": 1.0,
        "max_pending_per_user": 3,
        "max_attachment_mb": 2,
    }


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    return add_server(fake_discord, "Long takes", ("alice", "bob"))


def shown_percentages(status: FakeMessage) -> list[int]:
    """The progress the status message showed ("`▰▰▱▱` 50%"), edit after edit."""
    texts = [version.content for version in status.history] + [status.content]
    return [int(percent) for text in texts for percent in re.findall(r"` (\d+)%", text)]


async def test_a_member_asks_for_45_s_and_gets_45_s_made_window_by_window_with_one_progress_bar(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake = fake_discord
    interaction = await run_command(
        fake, server["alice"], server.channel, "generate", prompt="slow ambient pads", duration=MAX_SECONDS
    )
    job_id = await queued_job_id(interaction)
    result = await posted_result(fake, server.channel, job_id, timeout=120)

    assert wav_seconds(result.attachments[0].data) == pytest.approx(MAX_SECONDS)
    row = await wait_for_status(bot, job_id, "done")
    assert row["duration"] == MAX_SECONDS
    # The bar counted every window's steps: it only ever went forward, through the whole piece.
    assert interaction.original_message is not None
    shown = shown_percentages(interaction.original_message)
    assert len(shown) >= 3 and shown == sorted(shown), shown


async def test_the_duration_option_goes_up_to_the_configured_limit_and_discord_refuses_more(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    jobs_before = await job_count(bot)
    with pytest.raises(FakeDiscordValidationError, match=f"must be at most {MAX_SECONDS}"):
        await run_command(
            fake_discord, server["bob"], server.channel, "generate", prompt="x", duration=MAX_SECONDS + 1
        )
    # A jam turn adds up to the same limit.
    with pytest.raises(FakeDiscordValidationError, match=f"must be at most {MAX_SECONDS}"):
        await run_command(
            fake_discord, server["bob"], server.channel, "jam start", prompt="x", turn_seconds=MAX_SECONDS + 1
        )
    assert await job_count(bot) == jobs_before


async def open_continue_form(fake: FakeDiscord, member: FakeMember, message: FakeMessage) -> FakeInteraction:
    opened = await fake.invoke_message_command(member, message, CONTEXT_MENU)
    await opened.wait_for_response()
    assert opened.response_type == 9, "the bot answered with a form"
    return opened


async def submit(
    fake: FakeDiscord, member: FakeMember, opened: FakeInteraction, **values: str
) -> FakeInteraction:
    submitted = await fake.submit_modal(member, opened, values)
    await submitted.wait_for_response()
    return submitted


def seconds_label(opened: FakeInteraction) -> str:
    assert opened.modal is not None
    inputs = [item for row in opened.modal["components"] for item in row["components"]]
    (seconds,) = [item for item in inputs if item["custom_id"] == "seconds"]
    return str(seconds["label"])


async def test_seconds_over_the_limit_in_the_continue_form_are_refused_privately(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, tmp_path: Path
) -> None:
    fake, alice = fake_discord, server["alice"]
    clip = fake.add_attachment("riff.wav", write_wav(tone(1.5), tmp_path / "riff.wav").read_bytes())
    message = await fake.post_user_message(alice, server.channel, attachments=[clip])
    jobs_before = await job_count(bot)

    opened = await open_continue_form(fake, alice, message)
    assert seconds_label(opened) == f"seconds to add (1–{MAX_SECONDS})"
    refused = await submit(fake, alice, opened, seconds="60")

    assert f"between 1 and {MAX_SECONDS} (got 60)" in await private_reply(refused)
    assert await job_count(bot) == jobs_before and not await stuck_jobs(bot)


async def test_a_continuation_adds_more_than_the_models_30_s_after_the_clip(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, tmp_path: Path
) -> None:
    fake, bob = fake_discord, server["bob"]
    clip = fake.add_attachment("intro.wav", write_wav(tone(3.0), tmp_path / "intro.wav").read_bytes())
    message = await fake.post_user_message(bob, server.channel, attachments=[clip])

    submitted = await submit(fake, bob, await open_continue_form(fake, bob, message), seconds="35")
    job_id = await queued_job_id(submitted)
    result = await posted_result(fake, server.channel, job_id, timeout=120)

    assert wav_seconds(result.attachments[0].data) == pytest.approx(3.0 + 35)
    assert "3.0 s + 35 s new" in result.text


async def test_a_clip_to_continue_must_leave_the_model_room_and_is_refused_privately_otherwise(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, tmp_path: Path
) -> None:
    """The new seconds may go past the model's 30 s window, but the clip itself opens the first window:
    a clip of 30 s or more is refused before anything is queued (trimming it makes it fit)."""
    fake, alice = fake_discord, server["alice"]
    long_clip = tmp_path / "long.wav"  # 31 s at 8 kHz: small enough to attach here
    soundfile.write(long_clip, tone(31.0, frequency=110.0)[::4], SAMPLE_RATE // 4, subtype="PCM_16")
    attachment = fake.add_attachment("long.wav", long_clip.read_bytes())
    jobs_before = await job_count(bot)

    refused = await run_command(
        fake,
        alice,
        server.channel,
        "generate",
        prompt="x",
        input_audio=attachment,
        continuation=True,
        duration=5,
    )

    assert "must be shorter than 30 s" in await private_reply(refused)
    assert await job_count(bot) == jobs_before and not await stuck_jobs(bot)
