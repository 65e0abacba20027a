"""A request only the generator can refuse: the member is told privately, the job fails, the queue goes on.

The bot checks everything it can before queueing, but whether a fine-tuned checkpoint can follow a
melody is only known once the worker has loaded it. Here the bot's fine-tune is a text-only model
(the tiny "small" checkpoint), so a melody for it passes the bot and is refused by the engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio

from bot.app import MusicGenBot
from inference.settings import EngineSettings
from tests.bot.scenario_harness import (
    Server,
    add_server,
    job_row,
    posted_result,
    queued_job_id,
    run_command,
    stuck_jobs,
    wait_for_status,
)
from tests.fake_discord import FakeDiscord


@pytest.fixture(scope="module")
def engine_settings(engine_settings: EngineSettings, tiny_model_dirs: dict[str, Path]) -> EngineSettings:
    """The shared settings with a fine-tune configured: a text-only model (it takes no melody)."""
    models = engine_settings.models.model_copy(update={"finetuned": str(tiny_model_dirs["small"])})
    return engine_settings.model_copy(update={"models": models})


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    return add_server(fake_discord, "Fine-tuners", ("alice", "bob"))


async def test_the_generator_refuses_a_melody_for_a_text_only_fine_tune_and_the_next_job_still_runs(
    bot: MusicGenBot, fake_discord: FakeDiscord, server: Server, audio_clips: dict[str, bytes]
) -> None:
    fake, alice, bob = fake_discord, server["alice"], server["bob"]
    tune = fake.add_attachment("tune.mp3", audio_clips["tune.mp3"])
    bot.dispatcher.pause()  # bob's job waits behind alice's, so it runs only if her failure frees the worker
    try:
        refused = await run_command(
            fake,
            alice,
            server.channel,
            "generate",
            prompt="strings",
            model_version="finetuned",
            input_audio=tune,
            duration=1,
        )
        refused_id = await queued_job_id(refused)  # the bot cannot tell; it queues the job
        following = await run_command(
            fake, bob, server.channel, "generate", prompt="brass", model_version="finetuned", duration=1
        )
        following_id = await queued_job_id(following)
    finally:
        bot.dispatcher.resume()

    explanation = await refused.wait_for_final(
        lambda m: m.is_ephemeral and "can't follow a melody" in m.content, timeout=30
    )
    assert "choose model_version melody" in explanation.content
    public_status = await refused.wait_for_final(
        lambda m: not m.is_ephemeral and "could not run" in m.content
    )
    assert "can't follow a melody" not in public_status.content  # the details went to alice alone
    failed = await wait_for_status(bot, refused_id, "failed")
    assert "can't follow a melody" in failed["error"] and failed["output_path"] is None

    result = await posted_result(fake, server.channel, following_id)
    assert result.attachments[0].filename == f"musicgen-{following_id}.wav"
    assert (await wait_for_status(bot, following_id, "done"))["model_version"] == "finetuned"
    assert not [
        m for m in fake.bot_messages(server.channel) if f"Job #{refused_id} " in str(m.embeds)
    ]  # no result for alice
    assert await stuck_jobs(bot) == []
    assert (await job_row(bot, refused_id))["attempts"] == 1  # a refusal is not retried like a crash
