"""Start-up says only what matters: the bot uses no voice, so discord.py's voice warnings stay out."""

from __future__ import annotations

import logging
from pathlib import Path

import discord
import pytest

from inference.backends.local import InferenceClient
from inference.settings import EngineSettings
from tests.bot.scenario_harness import musicgen_bot, scenario_config
from tests.fake_discord import FakeDiscord


async def test_starting_the_bot_logs_no_voice_warnings(
    fake_discord: FakeDiscord,
    inference_client: InferenceClient,
    engine_settings: EngineSettings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # discord.py warns once per process, on the first client made: as in a fresh process without
    # PyNaCl and davey, it would warn about both now.
    monkeypatch.setattr(discord.VoiceClient, "warn_nacl", True)
    monkeypatch.setattr(discord.VoiceClient, "warn_dave", True)
    caplog.set_level(logging.INFO)
    async with musicgen_bot(
        fake_discord, scenario_config(tmp_path / "data", engine_settings), inference_client
    ):
        pass
    assert caplog.records, "the start-up was logged"
    assert not [record for record in caplog.records if "voice" in record.getMessage()]
