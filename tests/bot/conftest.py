"""Fixtures for the bot's scenario tests: a fake Discord, the real inference client, a running bot.

Each test module gets an inference client of its own (a real worker process on the tiny random
models, or on the module's `engine_settings`) and a fake Discord of its own, and starts its own
bot(s) against them. A module that defines its `server`
(and, for other limits, `scenario_limits`) gets the usual `bot`; one that needs another bot defines
its own `bot`; one whose tests each need a database of their own uses `fresh_config` and `fresh_bot`.

Every test and fixture runs in the session's event loop (pyproject's asyncio settings), so a
module's client, fake Discord and bot serve all of its tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.app import MusicGenBot
from bot.config import BotConfig
from inference.backends.local import InferenceClient
from inference.settings import EngineSettings
from tests.bot.scenario_harness import Server, make_sine, musicgen_bot, scenario_config
from tests.fake_discord import FakeDiscord


@pytest_asyncio.fixture(scope="module")
async def inference_client(engine_settings: EngineSettings) -> AsyncIterator[InferenceClient]:
    """The module's own inference client: one worker, forked in a moment from the fork server (which
    has imported torch and the engine once for the session), so a module that kills or stalls it
    leaves the next module nothing to clean up."""
    async with InferenceClient(engine_settings, processes=1) as client:
        yield client


@pytest_asyncio.fixture(scope="module")
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        yield fake


@pytest.fixture(scope="module")
def audio_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Uploads members attach: a 2 s MP3 tune, a 2 s WAV, and a file that is not audio at all."""
    folder = tmp_path_factory.mktemp("clips")
    return {
        "tune.mp3": make_sine(folder / "tune.mp3", seconds=2.0),
        "tune.wav": make_sine(folder / "tune.wav", seconds=2.0),
        "not-audio.mp3": b"ID3 this is not an mp3 at all " * 50,
    }


@pytest.fixture(scope="module")
def module_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bot-data")


@pytest.fixture(scope="module")
def scenario_limits() -> dict[str, object]:
    """`[limits]` the module's `bot` runs with, over `scenario_config`'s; a module overrides this."""
    return {}


@pytest_asyncio.fixture(scope="module")
async def bot(
    fake_discord: FakeDiscord,
    server: Server,
    inference_client: InferenceClient,
    engine_settings: EngineSettings,
    module_data_dir: Path,
    scenario_limits: dict[str, object],
) -> AsyncIterator[MusicGenBot]:
    """The module's bot on `scenario_config` (with `scenario_limits`), started once its `server` exists."""
    config = scenario_config(module_data_dir, engine_settings, **scenario_limits)
    async with musicgen_bot(fake_discord, config, inference_client) as running:
        yield running


@pytest.fixture
def fresh_config(tmp_path: Path, engine_settings: EngineSettings) -> BotConfig:
    """`scenario_config` on the test's own data folder: a fresh database per test."""
    return scenario_config(tmp_path / "data", engine_settings)


@pytest_asyncio.fixture
async def fresh_bot(
    fake_discord: FakeDiscord, fresh_config: BotConfig, inference_client: InferenceClient
) -> AsyncIterator[MusicGenBot]:
    """A bot of the test's own on `fresh_config`; the faults the test injected go with it."""
    async with musicgen_bot(fake_discord, fresh_config, inference_client) as running:
        yield running
    fake_discord.faults.clear()
