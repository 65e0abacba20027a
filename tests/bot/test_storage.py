"""The data dir's disk: old uploads and outputs are swept within [storage] keep_days/max_gb, and a
really full disk (a small tmpfs, filled) makes the bot refuse new jobs until space is back."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.bot import MusicGenBot
from bot.config import BotConfig, StorageOptions
from bot.storage import RetentionPolicy, sweep_files
from inference.client import InferenceClient
from inference.settings import EngineSettings
from tests.bot.scenario_harness import (
    Server,
    add_server,
    job_count,
    musicgen_bot,
    private_reply,
    queued_job_id,
    run_command,
    scenario_config,
    wait_for_status,
)
from tests.fake_discord import FakeDiscord

DAY = 86400.0


def _file(folder: Path, name: str, size: int, age_days: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"\0" * size)
    then = time.time() - age_days * DAY
    os.utime(path, (then, then))
    return path


def test_files_past_the_age_go_and_then_the_oldest_until_the_rest_fit(tmp_path: Path) -> None:
    uploads, outputs = tmp_path / "uploads", tmp_path / "outputs"
    ancient = _file(uploads, "ancient.mp3", 10, age_days=40)
    needed = _file(uploads, "queued-job.mp3", 10, age_days=45)  # a waiting job's upload
    old = _file(outputs, "old.wav", 400, age_days=5)
    middle = _file(outputs, "middle.wav", 400, age_days=3)
    new = _file(outputs, "new.wav", 400, age_days=1)

    deleted = sweep_files(
        [uploads, outputs], policy=RetentionPolicy(keep_days=30, max_bytes=850), keep={needed}
    )
    assert deleted == [ancient, old]
    assert needed.exists() and middle.exists() and new.exists()
    assert (
        sweep_files([uploads, outputs], policy=RetentionPolicy(keep_days=30, max_bytes=850), keep={needed})
        == []
    )


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real 16 MiB filesystem (tmpfs); mounting needs root, so the test is skipped without it."""
    mount_point = tmp_path_factory.mktemp("small-disk")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    return add_server(fake_discord, "Small disk", ("alice",))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bot(
    fake_discord: FakeDiscord,
    server: Server,
    inference_client: InferenceClient,
    engine_settings: EngineSettings,
    small_disk: Path,
) -> AsyncIterator[MusicGenBot]:
    config = scenario_config(small_disk / "data", engine_settings)
    config = BotConfig(**{**dict(config), "storage": StorageOptions(min_free_mb=4)})
    async with musicgen_bot(fake_discord, config, inference_client) as running:
        yield running


@pytest.mark.asyncio(loop_scope="module")
async def test_a_full_disk_refuses_new_jobs_clearly_and_the_bot_recovers_when_space_is_back(
    bot: MusicGenBot,
    fake_discord: FakeDiscord,
    server: Server,
    small_disk: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    alice = server["alice"]
    filler = small_disk / "someone-elses-big-file"
    # Fill the filesystem to the last byte it will take, then give back 1 MiB: under the 4 MiB margin.
    with filler.open("wb") as file, pytest.raises(OSError, match="No space left"):
        while True:
            file.write(b"\0" * (1 << 20))
            file.flush()
    os.truncate(filler, filler.stat().st_size - (1 << 20))
    try:
        rows_before = await job_count(bot)
        refused = await run_command(fake_discord, alice, server.channel, "generate", prompt="x", duration=1)
        assert "disk is full" in await private_reply(refused)
        assert await job_count(bot) == rows_before
        assert any(r.levelno == logging.ERROR and "min_free_mb" in r.getMessage() for r in caplog.records)
    finally:
        filler.unlink()
    back = await run_command(fake_discord, alice, server.channel, "generate", prompt="x", duration=1)
    await wait_for_status(bot, await queued_job_id(back), "done")
