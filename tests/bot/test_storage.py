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

from bot.app import MusicGenBot
from bot.config import BotConfig, StorageOptions
from bot.storage.database import Database
from bot.storage.jams import JamStore
from bot.storage.jobs import Job, JobOrigin, JobStore
from bot.storage.retention import RetentionPolicy, StorageJanitor, files_in_use, sweep_files
from inference.backends.local import InferenceClient
from inference.request import GenerationRequest
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


async def played(jobs: JobStore, request: GenerationRequest, *, output: Path | None) -> Job:
    """A job that ran; done with `output` (None: still running)."""
    job = await jobs.create(JobOrigin(guild_id=1, channel_id=2, user_id=3), request, seed_was_random=False)
    await jobs.mark_running(job.id)
    if output is not None:
        await jobs.mark_done(
            job.id, output_path=str(output), seed=1, posted_format="wav", result_message_id=None
        )
    return job


async def test_the_sweep_keeps_what_an_open_jam_needs_and_lets_an_ended_jams_files_go(tmp_path: Path) -> None:
    database = await Database.open(tmp_path / "bot.db")
    try:
        uploads, outputs = tmp_path / "uploads", tmp_path / "outputs"
        jobs, jams = JobStore(database), JamStore(database)
        # Every file is 40 days old: past keep_days, and the oldest there are.
        old = {
            name: _file(outputs, name, 100, age_days=40)
            for name in (
                "1.wav",
                "2.wav",
                "2-piece.wav",
                "2-new.wav",
                "3.wav",
                "3-piece.wav",
                "3-new.wav",
                "4.wav",
            )
        }
        clip = _file(uploads, "clip.mp3", 100, age_days=40)

        async def jam(thread_id: int) -> int:
            made = await jams.create(
                guild_id=1, channel_id=2, thread_id=thread_id, starter_id=3, prompt="lofi",
                model_version="small", turn_seconds=2, max_turns=5,
            )  # fmt: skip
            return made.id

        async def turn(jam_id: int, job: Job, *, number: int, piece: Path | None) -> None:
            made = await jams.get(jam_id)
            assert made is not None
            added = await jams.add_turn(made, user_id=3, user_name="alice", prompt=None, seconds=2)
            await jams.mark_started(added.id, job.id)
            if piece is not None:
                await jams.mark_done(
                    added.id, number=number, start_s=0.0, end_s=2.0 * number, piece_path=str(piece)
                )

        opening = GenerationRequest(model_version="small", prompt="lofi", duration=2, seed=1)

        def continuing(piece: Path) -> GenerationRequest:
            return opening.replace(input_audio=str(piece), continuation=True)

        open_jam, ended_jam = await jam(100), await jam(200)
        await turn(open_jam, await played(jobs, opening, output=old["1.wav"]), number=1, piece=old["1.wav"])
        second = await played(jobs, continuing(old["1.wav"]), output=old["2-piece.wav"])
        await turn(open_jam, second, number=2, piece=old["2-piece.wav"])
        # The third turn's music is made, and the jam has not recorded it yet.
        third = await played(jobs, continuing(old["2-piece.wav"]), output=old["3-piece.wav"])
        await turn(open_jam, third, number=3, piece=None)
        await turn(ended_jam, await played(jobs, opening, output=old["4.wav"]), number=1, piece=old["4.wav"])
        await jams.end(ended_jam, "over")
        # A member's job with an upload, still queued.
        await jobs.create(
            JobOrigin(guild_id=1, channel_id=2, user_id=4),
            opening.replace(input_audio=str(clip), continuation=True),
            seed_was_random=False,
        )

        janitor = StorageJanitor(
            [uploads, outputs],
            RetentionPolicy(keep_days=30, max_bytes=0),
            lambda: files_in_use(database.connection, outputs),
        )
        deleted = await janitor.sweep()
    finally:
        await database.close()

    # The open jam's piece so far with its new part, and all of the turn being made, stay.
    assert all(
        old[name].exists() for name in ("2-piece.wav", "2-new.wav", "3.wav", "3-piece.wav", "3-new.wav")
    )
    assert clip.exists()
    # The ended jam's piece, the open jam's earlier piece (the start of the latest) and a model's raw
    # output that became a piece go.
    assert sorted(path.name for path in deleted) == ["1.wav", "2.wav", "4.wav"]


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


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    return add_server(fake_discord, "Small disk", ("alice",))


@pytest_asyncio.fixture(scope="module")
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
