"""Fixtures for the bot's scenario tests: a fake Discord, the real inference client, a running bot.

One inference client (a real worker process on the tiny random models) and one fake Discord per
test module keep the scenarios fast; each module starts its own bot(s) against them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from inference.client import InferenceClient
from inference.settings import EngineSettings
from tests.fake_discord import FakeDiscord


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def inference_client(engine_settings: EngineSettings) -> AsyncIterator[InferenceClient]:
    async with InferenceClient(engine_settings, processes=1) as client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        yield fake


@pytest.fixture(scope="module")
def audio_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Uploads members attach: a 2 s MP3 tune, a 2 s WAV, and a file that is not audio at all."""
    from tests.bot.scenario_harness import make_sine

    folder = tmp_path_factory.mktemp("clips")
    return {
        "tune.mp3": make_sine(folder / "tune.mp3", seconds=2.0),
        "tune.wav": make_sine(folder / "tune.wav", seconds=2.0),
        "not-audio.mp3": b"ID3 this is not an mp3 at all " * 50,
    }


@pytest.fixture(scope="module")
def module_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bot-data")
