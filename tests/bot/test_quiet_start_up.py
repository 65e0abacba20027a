"""Start-up says only what matters (the bot uses no voice, so discord.py's voice warnings stay out),
and leaves what it made out of later garbage collections."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import discord
import pytest

from bot.app import freeze_start_up_heap
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


async def test_a_ready_bot_freezes_its_start_up_heap_once_per_process(
    fake_discord: FakeDiscord,
    inference_client: InferenceClient,
    engine_settings: EngineSettings,
    tmp_path: Path,
) -> None:
    gc.unfreeze()  # as in a fresh process: an earlier test's bot may have frozen this one's heap
    async with musicgen_bot(
        fake_discord, scenario_config(tmp_path / "data", engine_settings), inference_client
    ) as bot:
        assert id(bot.tree) not in collected_ids(), "on_ready froze what start-up made"
        made_later = {"a reply": ["made after start-up"]}
        freeze_start_up_heap()  # as a reconnect's on_ready would
        assert id(made_later) in collected_ids(), "a later on_ready freezes nothing more"
    assert id(bot.tree) not in collected_ids(), "closing the bot leaves start-up frozen"


def collected_ids() -> set[int]:
    """The objects later garbage collections walk (frozen ones are not among them)."""
    return {id(tracked) for tracked in gc.get_objects()}
