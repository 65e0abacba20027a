"""Starting the bot when Discord cannot be reached, or refuses the token: a line that says so, no
traceback; an unreachable Discord is waited out with backoff."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import discord
import pytest
from click.testing import CliRunner

from bot.__main__ import main, run_until_stopped
from inference.settings import EngineSettings
from tests.bot.scenario_harness import scenario_config
from tests.fake_discord import FakeDiscord


@pytest.fixture
def fake_discord_in_a_thread() -> Iterator[FakeDiscord]:
    """A fake Discord serving from its own event loop, for a CLI that runs asyncio.run() itself."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fake = FakeDiscord()
    asyncio.run_coroutine_threadsafe(fake.start(), loop).result(30)
    try:
        with fake.patched_discord():
            yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_a_wrong_token_is_reported_in_one_line(fake_discord_in_a_thread: FakeDiscord, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[bot]\ndata_dir = "{tmp_path / "data"}"\n')
    # Other tests on this pytest worker may keep a worker of their own (the shared inference client).
    children_before = set(multiprocessing.active_children())
    result = CliRunner().invoke(
        main, ["--config", str(config), "run"], env={"DISCORD_TOKEN": "not-the-token"}
    )
    assert result.exit_code == 1
    *log_lines, last = result.output.strip().splitlines()
    assert last.startswith("Error: Discord refused the token in DISCORD_TOKEN")
    assert "Traceback" not in result.output and not [line for line in log_lines if "ERROR" in line]
    assert set(multiprocessing.active_children()) == children_before  # gave up before starting a worker


@pytest.mark.asyncio
async def test_an_unreachable_discord_is_retried_with_backoff_and_logged_without_a_traceback(
    tmp_path: Path,
    engine_settings: EngineSettings,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nothing listens on the discard port: every connection is refused, as with no network.
    monkeypatch.setattr(discord.http.Route, "BASE", "http://127.0.0.1:9/api/v10")
    caplog.set_level(logging.INFO)
    children_before = set(multiprocessing.active_children())
    running = asyncio.create_task(
        run_until_stopped(scenario_config(tmp_path / "data", engine_settings), "token")
    )

    def tries() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "Discord cannot be reached" in r.getMessage()]

    while len(tries()) < 2:
        assert not running.done(), running
        await asyncio.sleep(0.05)
    first, second = tries()[:2]
    assert "trying again in 1 s" in first.getMessage() and "trying again in 2 s" in second.getMessage()
    assert "127.0.0.1:9" in first.getMessage()
    os.kill(os.getpid(), signal.SIGTERM)  # the owner gives up: a clean stop, even while waiting
    await asyncio.wait_for(running, 30)
    assert not any(record.exc_info for record in caplog.records)
    assert set(multiprocessing.active_children()) == children_before  # its worker is gone
