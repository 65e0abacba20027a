"""What the fault scenarios check after each fault: the music arrived, exactly once, and the row agrees."""

from __future__ import annotations

import asyncio

from bot.app import MusicGenBot
from tests.bot.scenario_harness import Server, posted_result, queued_job_id, run_command, wait_for_status
from tests.fake_discord import FakeDiscord, FakeInteraction, FakeMessage


def results_of(fake: FakeDiscord, server: Server, job_id: int) -> list[FakeMessage]:
    """Every message in the channel that carries job `job_id`'s audio (so duplicates show)."""
    return [
        m
        for m in fake.bot_messages(server.channel)
        if m.attachments
        and any(e.get("footer", {}).get("text", "").startswith(f"Job #{job_id} ") for e in m.embeds)
    ]


async def generate(
    fake: FakeDiscord, server: Server, prompt: str, *, duration: int = 1, member: str = "alice"
) -> tuple[int, FakeInteraction]:
    """A member runs /generate; returns the job number its status message shows, and the interaction."""
    interaction = await run_command(
        fake, server[member], server.channel, "generate", prompt=prompt, duration=duration
    )
    return await queued_job_id(interaction), interaction


async def delivered_once(bot: MusicGenBot, fake: FakeDiscord, server: Server, job_id: int) -> FakeMessage:
    """The job's result is in the channel, exactly once, and its row says done with that message."""
    result = await posted_result(fake, server.channel, job_id)
    row = await wait_for_status(bot, job_id, "done")
    assert row["result_message_id"] == result.id
    assert result.attachments[0].filename == f"musicgen-{job_id}.wav"
    await asyncio.sleep(0.2)  # a duplicate would be posted right after
    assert results_of(fake, server, job_id) == [result]
    return result
