"""Helpers for the bot's scenario tests: a member's view of /generate against the fake Discord."""

from __future__ import annotations

import asyncio
import io
import subprocess
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from bot.app import MusicGenBot
from bot.config import BotConfig, BotOptions, Limits, WorkerOptions
from inference.backends.local import InferenceClient
from inference.media.ffmpeg import ffmpeg_executable
from inference.settings import EngineSettings
from tests.fake_discord import (
    FakeChannel,
    FakeDiscord,
    FakeGuild,
    FakeInteraction,
    FakeMember,
    FakeMessage,
    running_bot,
)


def make_sine(path: Path, *, seconds: float, frequency: int = 440) -> bytes:
    """A tone in whatever format the file name says (ffmpeg from imageio-ffmpeg); returns its bytes."""
    subprocess.run(
        [ffmpeg_executable(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"sine=frequency={frequency}:duration={seconds}", "-ac", "1", str(path)],
        check=True,
    )  # fmt: skip
    return path.read_bytes()


def wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as reader:
        return reader.getnframes() / reader.getframerate()


def scenario_config(data_dir: Path, engine_settings: EngineSettings, **limits: object) -> BotConfig:
    """Small limits so the cases are quick to reach; progress edits every 0.2 s."""
    limit_values: dict[str, object] = {
        "max_pending_per_user": 2,
        "max_attachment_mb": 0.5,
        "progress_interval_s": 0.2,
    }
    limit_values.update(limits)
    return BotConfig(
        bot=BotOptions(default_model_version="small", data_dir=str(data_dir)),
        limits=Limits(**limit_values),  # type: ignore[arg-type]
        worker=WorkerOptions(processes=1, job_retries=1),
        engine_settings=engine_settings,
    )


@asynccontextmanager
async def musicgen_bot(
    fake: FakeDiscord, config: BotConfig, client: InferenceClient
) -> AsyncIterator[MusicGenBot]:
    """The real bot, connected to the fake Discord, sharing the module's inference client."""
    async with running_bot(fake, MusicGenBot(config, inference=client)) as bot:
        yield bot


@dataclass
class Server:
    """A guild with a #music channel and some members."""

    guild: FakeGuild
    channel: FakeChannel
    members: dict[str, FakeMember]

    def __getitem__(self, name: str) -> FakeMember:
        return self.members[name]


def add_server(
    fake: FakeDiscord, name: str, member_names: tuple[str, ...], **guild_options: object
) -> Server:
    guild = fake.add_guild(name, channels=("music",), **guild_options)  # type: ignore[arg-type]
    channel = next(iter(guild.channels.values()))
    return Server(guild, channel, {member: fake.add_member(guild, member) for member in member_names})


async def run_command(
    fake: FakeDiscord, member: FakeMember, channel: FakeChannel, name: str, **options: object
) -> FakeInteraction:
    """A member types the command; returns once the bot has acknowledged it."""
    interaction = await fake.invoke_slash_command(member, channel, name, options)
    await interaction.wait_for_response(timeout=10)
    return interaction


async def private_reply(interaction: FakeInteraction, timeout: float = 20) -> str:
    """The ephemeral answer the member sees; also checks the bot left no public message behind."""
    message = await interaction.wait_for_final(
        lambda m: m.is_ephemeral and not m.is_loading and bool(m.content), timeout
    )
    await asyncio.sleep(0.05)  # let a delete that precedes an ephemeral followup settle
    assert not [m for m in interaction.messages if not m.is_ephemeral and not m.deleted], (
        "a public message was left behind"
    )
    return message.content


async def queued_job_id(interaction: FakeInteraction, timeout: float = 20) -> int:
    """The job number the public status message shows."""
    message = await interaction.wait_for_final(lambda m: "Job #" in m.content, timeout)
    return int(message.content.split("Job #", 1)[1].split()[0].rstrip(":.,"))


async def posted_result(
    fake: FakeDiscord, channel: FakeChannel, job_id: int, timeout: float = 60
) -> FakeMessage:
    """The message that carries job `job_id`'s audio (its embed footer names the job)."""
    return await fake.wait_for_message(
        channel,
        lambda m: (
            m.author is fake.bot_user
            and any(
                embed.get("footer", {}).get("text", "").startswith(f"Job #{job_id} ") for embed in m.embeds
            )
        ),
        timeout,
    )


async def job_row(bot: MusicGenBot, job_id: int) -> aiosqlite.Row:
    async with bot.database.connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)) as cursor:
        row = await cursor.fetchone()
    assert row is not None
    return row


async def wait_for_status(bot: MusicGenBot, job_id: int, status: str, timeout: float = 60) -> aiosqlite.Row:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        row = await job_row(bot, job_id)
        if row["status"] == status:
            return row
        if loop.time() > deadline:
            raise AssertionError(
                f"job {job_id} is {row['status']!r}, not {status!r} (error: {row['error']!r})"
            )
        await asyncio.sleep(0.05)


async def stuck_jobs(bot: MusicGenBot) -> list[tuple[int, str]]:
    async with bot.database.connection.execute(
        "SELECT id, status FROM jobs WHERE status IN ('queued', 'running')"
    ) as cursor:
        return [(row[0], row[1]) for row in await cursor.fetchall()]


async def job_count(bot: MusicGenBot) -> int:
    async with bot.database.connection.execute("SELECT COUNT(*) FROM jobs") as cursor:
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def status_reads(fake: FakeDiscord, status: FakeMessage, text: str, timeout: float = 30) -> FakeMessage:
    """The job's public status message (the /generate response), once it has been edited to say `text`."""
    return await fake.wait_for_message(
        status.channel, lambda m: m.id == status.id and text in m.content, timeout
    )


def channel_edits_of(fake: FakeDiscord, message: FakeMessage) -> int:
    """Edits the bot made with its own permissions (PATCH /channels/…/messages/…), not through a token."""
    return sum(
        record.path.endswith(f"/messages/{message.id}") and record.status == 200
        for record in fake.requests_to("PATCH", "/channels/{channel_id}/messages/{message_id}")
    )
