"""The Discord token is read once and then exists only in the bot's memory: not in the environment
its children inherit, not in any log line at any level, not in anything a member sees."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from bot.__main__ import TOKEN_ENV_VAR, run_until_stopped, take_token_from_environment
from inference.settings import EngineSettings
from tests.bot.scenario_harness import posted_result, queued_job_id, run_command, scenario_config
from tests.fake_discord import FakeDiscord


@pytest.mark.asyncio
async def test_the_token_reaches_no_child_no_log_and_no_member(
    tmp_path: Path,
    engine_settings: EngineSettings,
    audio_clips: dict[str, bytes],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeDiscord() as fake:
        guild = fake.add_guild("Studio", channels=("music",))
        channel = next(iter(guild.channels.values()))
        alice = fake.add_member(guild, "alice")
        monkeypatch.setenv(TOKEN_ENV_VAR, fake.bot_token)
        token = take_token_from_environment()
        assert token == fake.bot_token and TOKEN_ENV_VAR not in os.environ

        running = asyncio.create_task(
            run_until_stopped(scenario_config(tmp_path / "data", engine_settings), token)
        )
        try:
            await fake.wait_until_connected(timeout=60)
            workers = multiprocessing.active_children()
            assert workers, "the inference worker is a child process"
            for worker in workers:
                environment = Path(f"/proc/{worker.pid}/environ").read_bytes()
                assert token.encode() not in environment and b"DISCORD_TOKEN" not in environment

            # A job with an upload: ffmpeg runs in the bot (probe) and in the worker (decode).
            clip = fake.add_attachment("tune.mp3", audio_clips["tune.mp3"])
            interaction = await run_command(
                fake,
                alice,
                channel,
                "generate",
                prompt="x",
                model_version="melody",
                input_audio=clip,
                duration=1,
            )
            await posted_result(fake, channel, await queued_job_id(interaction))
            bad = await run_command(fake, alice, channel, "replay", job_id=12345)
            await bad.wait_for_final(lambda m: m.is_ephemeral and bool(m.content))
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(running, 60)

        everything_members_saw = [message.text for message in fake.messages(channel, include_ephemeral=True)]
        assert everything_members_saw and not any(token in text for text in everything_members_saw)
    assert any(record.levelno == logging.DEBUG for record in caplog.records), "DEBUG lines were captured"
    assert token not in caplog.text
    assert not any(token in str(record.args) for record in caplog.records)
