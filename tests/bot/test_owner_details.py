"""A refusal caused by the bot's own set-up: members get a short sentence, the owner's details go
to the log and to members who can manage the server.

Here melody stem separation is on, but the demucs model it names does not exist, so every melody
job is refused by the worker with details only the bot owner can act on.
"""

from __future__ import annotations

import logging

import pytest
import pytest_asyncio

from bot.app import MusicGenBot
from inference.settings import EngineSettings, MelodyOptions
from tests.bot.scenario_harness import (
    Server,
    add_server,
    queued_job_id,
    run_command,
)
from tests.fake_discord import FakeDiscord, FakeInteraction, Permission


@pytest.fixture(scope="module")
def engine_settings(
    engine_settings: EngineSettings, tmp_path_factory: pytest.TempPathFactory
) -> EngineSettings:
    missing = tmp_path_factory.mktemp("demucs") / "htdemucs-mine.th"
    return engine_settings.model_copy(
        update={"melody": MelodyOptions(stem_separation=True, demucs_model=str(missing))}
    )


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    server = add_server(fake_discord, "Misconfigured", ("alice",))
    server.members["owner"] = fake_discord.add_member(
        server.guild, "owner", permissions=Permission.MANAGE_GUILD
    )
    return server


async def _melody_refusal(
    fake: FakeDiscord, server: Server, who: str, clip: bytes
) -> tuple[FakeInteraction, str]:
    tune = fake.add_attachment("tune.mp3", clip)
    interaction = await run_command(
        fake, server[who], server.channel, "generate",
        prompt="strings", model_version="melody", input_audio=tune, duration=1,
    )  # fmt: skip
    await queued_job_id(interaction)
    explanation = await interaction.wait_for_final(
        lambda m: m.is_ephemeral and "Following a melody is not available" in m.content, timeout=60
    )
    return interaction, explanation.content


async def test_a_member_gets_a_sentence_and_the_owner_gets_the_details(
    bot: MusicGenBot,
    fake_discord: FakeDiscord,
    server: Server,
    audio_clips: dict[str, bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    member_view, member_text = await _melody_refusal(fake_discord, server, "alice", audio_clips["tune.mp3"])
    assert "continuation" in member_text  # something the member can do instead
    for internal in ("config.toml", "demucs", "htdemucs-mine.th", "stem_separation", "Error"):
        assert internal not in member_text
    public = [m.text for m in member_view.messages if not m.is_ephemeral]
    assert not any("demucs" in text for text in public)
    async with bot.database.connection.execute("SELECT error FROM jobs ORDER BY id DESC LIMIT 1") as cursor:
        row = await cursor.fetchone()
    assert row is not None and "demucs" not in row["error"]  # /history shows this to the member

    _, owner_text = await _melody_refusal(fake_discord, server, "owner", audio_clips["tune.mp3"])
    assert "stem_separation = false" in owner_text and "htdemucs-mine.th" in owner_text

    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("htdemucs-mine.th" in line and "stem_separation = false" in line for line in logged)
