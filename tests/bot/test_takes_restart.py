"""The takes of a request across a restart: nothing made is lost, and they are still posted together.

A module of its own: each test runs its own bots, one after the other, on one database.
"""

from __future__ import annotations

import pytest_asyncio

from bot.config import BotConfig, WorkerOptions
from inference.backends.local import InferenceClient
from tests.bot.scenario_harness import (
    Server,
    add_server,
    musicgen_bot,
    posted_result,
    run_command,
    wait_for_status,
)
from tests.bot.test_takes import queued_takes
from tests.fake_discord import FakeDiscord
from tests.waiting import until


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    return add_server(fake_discord, "Takes overnight", ("alice",))


async def test_takes_cut_short_by_a_restart_are_made_again_and_posted_together(
    fake_discord: FakeDiscord, server: Server, fresh_config: BotConfig, inference_client: InferenceClient
) -> None:
    fake, alice = fake_discord, server["alice"]
    # One job a batch: take 1 is made and held while take 2 still runs when the bot stops.
    config = fresh_config.model_copy(
        update={"worker": WorkerOptions(processes=1, job_retries=1, max_batch_size=1, batch_wait_s=0)}
    )
    async with musicgen_bot(fake, config, inference_client) as first_run:
        interaction = await run_command(
            fake, alice, server.channel, "generate", prompt="overnight", duration=6, takes=2, seed=7
        )
        first, second = await queued_takes(interaction)
        await until(lambda: bool(first_run.dispatcher.takes.held()), "take 1 is made and held", timeout=60)
        assert (await wait_for_status(first_run, second, "running"))["take_number"] == 2
    assert not [m for m in fake.bot_messages(server.channel) if m.attachments], "nothing was posted yet"

    async with musicgen_bot(fake, config, inference_client) as second_run:
        message = await posted_result(fake, server.channel, first)
        assert message.interaction is None and f"<@{alice.id}>" in message.content  # the token is gone
        assert [a.filename for a in message.attachments if a.filename.endswith(".wav")] == [
            f"musicgen-{first}.wav",
            f"musicgen-{second}.wav",
        ]
        rows = [await wait_for_status(second_run, job_id, "done") for job_id in (first, second)]
        # Neither used up its retry: the shutdown put them back.
        assert [(row["seed"], row["attempts"]) for row in rows] == [(7, 1), (8, 1)]
        assert {row["result_message_id"] for row in rows} == {message.id}
