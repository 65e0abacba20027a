"""The launcher: `musicgen-bot` runs the bot or maintains its database, with clear errors."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot.__main__ import main, run_until_stopped
from inference.settings import EngineSettings
from tests.bot.scenario_harness import scenario_config
from tests.fake_discord import FakeDiscord


def write_config(folder: Path, text: str) -> Path:
    path = folder / "config.toml"
    path.write_text(text)
    return path


def test_running_without_a_token_says_where_the_token_goes(tmp_path: Path) -> None:
    config = write_config(tmp_path, f'[bot]\ndata_dir = "{tmp_path / "data"}"\n')
    result = CliRunner().invoke(main, ["--config", str(config)], env={"DISCORD_TOKEN": ""})
    assert result.exit_code != 0
    assert "DISCORD_TOKEN is not set" in result.output


def test_a_typo_in_the_config_is_reported_before_connecting(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[limits]\nmax_pending_per_usr = 3\n")
    result = CliRunner().invoke(main, ["run"], env={"DISCORD_TOKEN": "x", "MUSICGEN_BOT_CONFIG": str(config)})
    assert result.exit_code != 0
    assert "invalid configuration" in result.output and "max_pending_per_usr" in result.output


def test_a_default_model_that_cannot_make_music_is_refused_at_start(tmp_path: Path) -> None:
    for default, reason in (
        ("finetuned", "[models] finetuned is empty"),
        ("encode-decode", "only re-encodes"),
    ):
        config = write_config(tmp_path, f'[bot]\ndefault_model_version = "{default}"\n')
        result = CliRunner().invoke(main, ["--config", str(config), "run"], env={"DISCORD_TOKEN": "x"})
        assert result.exit_code != 0
        assert "invalid configuration" in result.output and reason in result.output


def test_db_upgrade_applies_the_migrations_once_and_status_lists_them(tmp_path: Path) -> None:
    config = write_config(tmp_path, f'[bot]\ndata_dir = "{tmp_path / "data"}"\n')
    runner = CliRunner()
    first = runner.invoke(main, ["--config", str(config), "db", "upgrade"])
    assert first.exit_code == 0, first.output
    assert "applied V1" in first.output
    again = runner.invoke(main, ["--config", str(config), "db", "upgrade"])
    assert "up to date" in again.output
    status = runner.invoke(main, ["--config", str(config), "db", "status"])
    assert "V1__initial: applied" in status.output and "V2__guild_default_model: applied" in status.output
    assert (tmp_path / "data" / "musicgen-bot.sqlite3").is_file()


@pytest.mark.asyncio
async def test_sigterm_stops_the_bot_its_worker_and_its_database_cleanly(
    tmp_path: Path, engine_settings: EngineSettings
) -> None:
    # Other tests on this pytest worker may keep a worker of their own (the shared inference client).
    children_before = set(multiprocessing.active_children())
    async with FakeDiscord() as fake:
        fake.add_guild("Studio", channels=("music",))
        config = scenario_config(tmp_path / "data", engine_settings)
        running = asyncio.create_task(run_until_stopped(config, fake.bot_token))
        await fake.wait_until_connected(timeout=60)
        assert fake.registered_commands(), "the commands were synced at start-up"
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(running, 60)
    assert set(multiprocessing.active_children()) == children_before  # its worker process is gone
    assert not fake.gateway.live_sessions()
