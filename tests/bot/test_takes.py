"""Members ask for several takes of one request (`/generate takes:N`) and pick the one they like.

The real bot on the fake Discord and the real worker on the tiny models: the takes are N job rows
with their own seeds, count as N jobs, run as one batch, and are posted together in one message
with a row of buttons per take. Also the scheduler's part on its own, and `--takes` in the CLI.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import soundfile
from click.testing import CliRunner

from bot.app import MusicGenBot
from bot.pipeline.scheduler import BatchLimits, FairScheduler, QueueLimits, ScheduledJob
from bot.storage.jobs import JobOrigin
from inference.__main__ import main as inference_cli
from inference.backends.base import JobSubmission
from inference.request import GenerationRequest, RequestError, Takes
from inference.settings import EngineSettings
from tests.bot.scenario_harness import (
    Server,
    add_server,
    job_count,
    posted_result,
    private_reply,
    queued_job_id,
    run_command,
    status_reads,
    wait_for_status,
    wav_seconds,
)
from tests.fake_discord import FakeDiscord, FakeInteraction, FakeMessage
from tests.inference.test_cli import write_config

ACTIONS = ("reroll", "continue", "melody", "details")


@pytest.fixture(scope="module")
def scenario_limits() -> dict[str, object]:
    return {"max_pending_per_user": 3}


@pytest_asyncio.fixture(scope="module")
async def server(fake_discord: FakeDiscord) -> Server:
    return add_server(fake_discord, "Takes", ("alice", "bob"))


async def queued_takes(interaction: FakeInteraction, timeout: float = 20) -> list[int]:
    """The job numbers of the takes the public status message names ("Jobs #12–#14 (3 takes)")."""
    message = await interaction.wait_for_final(lambda m: "Jobs #" in m.content, timeout)
    found = re.search(r"Jobs #(\d+)–#(\d+) \((\d+) takes\)", message.content)
    assert found is not None, message.content
    first, last, count = (int(group) for group in found.groups())
    assert last - first + 1 == count
    return list(range(first, last + 1))


async def takes_message(fake: FakeDiscord, server: Server, first_take: int) -> FakeMessage:
    """The one message that carries a request's takes (its first embed names the first take made)."""
    return await posted_result(fake, server.channel, first_take)


def attachment_named(message: FakeMessage, name: str) -> Any:
    (found,) = [attachment for attachment in message.attachments if attachment.filename == name]
    return found


@pytest.fixture
def submitted_batches(bot: MusicGenBot, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[int]]]:
    """The job ids of every batch the dispatcher hands the worker from now on (the worker still runs them)."""
    seen: list[list[int]] = []
    submit = bot.inference.submit_batch

    def recording(submissions: list[JobSubmission], output_dir: Path) -> Any:
        seen.append([int(submission.job_id) for submission in submissions])
        return submit(submissions, output_dir)

    monkeypatch.setattr(bot.inference, "submit_batch", recording)
    yield seen


# -- through the bot -------------------------------------------------------------------------------
async def test_three_takes_are_three_jobs_with_their_own_seeds_made_in_one_batch_and_posted_together(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot, submitted_batches: list[list[int]]
) -> None:
    fake, alice = fake_discord, server["alice"]
    interaction = await run_command(
        fake, alice, server.channel, "generate", prompt="three ways", duration=1, takes=3
    )
    takes = await queued_takes(interaction)
    message = await takes_message(fake, server, takes[0])

    rows = [await wait_for_status(bot, job_id, "done") for job_id in takes]
    assert [(row["take_group"], row["take_number"], row["take_count"]) for row in rows] == [
        (takes[0], number, 3) for number in (1, 2, 3)
    ]
    seeds = [row["seed"] for row in rows]
    assert len(set(seeds)) == 3 and all(row["seed_was_random"] == 1 for row in rows)
    assert {row["result_message_id"] for row in rows} == {message.id}
    assert {row["prompt"] for row in rows} == {"three ways"}
    # Each take's row replays on its own: its request is a single job's, with its own seed.
    assert [GenerationRequest.from_dict(json.loads(row["request_json"])).seed for row in rows] == seeds
    assert [job_id for batch in submitted_batches for job_id in batch if job_id in takes] == takes
    assert takes in submitted_batches, f"the takes were not one batch: {submitted_batches}"

    # One message: every take's audio and waveform, an embed each with its seed, a row of buttons each.
    names = sorted(attachment.filename for attachment in message.attachments)
    assert names == sorted(
        [f"musicgen-{job_id}.wav" for job_id in takes] + [f"musicgen-{job_id}.png" for job_id in takes]
    )
    audio = [attachment_named(message, f"musicgen-{job_id}.wav").data for job_id in takes]
    assert all(wav_seconds(data) == pytest.approx(1.0, abs=0.05) for data in audio)
    assert len(set(audio)) == 3  # their own seeds: three different pieces
    for row, data in zip(rows, audio, strict=True):
        assert Path(row["output_path"]).read_bytes() == data
    assert len(message.embeds) == 3
    for embed, job_id, seed in zip(message.embeds, takes, seeds, strict=True):
        fields = {field["name"]: field["value"] for field in embed["fields"]}
        assert fields["Seed"] == f"`{seed}`"
        assert embed["footer"]["text"].startswith(f"Job #{job_id} ")
        assert embed["image"]["url"] == attachment_named(message, f"musicgen-{job_id}.png").url
    first_fields = {field["name"]: field["value"] for field in message.embeds[0]["fields"]}
    assert first_fields["Take"] == "1 of 3" and message.embeds[1]["title"] == "Take 2 of 3"
    assert [[button["custom_id"] for button in row["components"]] for row in message.components] == [
        [f"musicgen:{action}:{job_id}" for action in ACTIONS] for job_id in takes
    ]
    assert f"<@{alice.id}> your 3 takes are ready." in message.content
    status = await interaction.wait_for_final(lambda m: "are done" in m.content)
    assert f"Jobs #{takes[0]}–#{takes[2]} are done (3 takes" in status.content

    history = await private_reply(await run_command(fake, alice, server.channel, "history"))
    for number, (job_id, seed) in enumerate(zip(takes, seeds, strict=True), start=1):
        assert f"#{job_id} · take {number} of 3 · done" in history and f"seed `{seed}`" in history


async def test_a_given_seed_makes_take_i_with_that_seed_plus_i(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake = fake_discord
    interaction = await run_command(
        fake, server["bob"], server.channel, "generate", prompt="seeded", duration=1, takes=2, seed=2**32 - 1
    )
    takes = await queued_takes(interaction)
    rows = [await wait_for_status(bot, job_id, "done") for job_id in takes]
    # Take 1 is the request made alone; the next seed wraps around within the seed range.
    assert [row["seed"] for row in rows] == [2**32 - 1, 0]
    assert all(row["seed_was_random"] == 0 for row in rows)


async def test_takes_count_as_jobs_and_a_request_over_the_cap_is_refused_whole(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake, bob = fake_discord, server["bob"]
    bot.dispatcher.pause()
    try:
        waiting = await queued_job_id(
            await run_command(fake, bob, server.channel, "generate", prompt="one", duration=1)
        )
        rows_before = await job_count(bot)
        # 1 pending + 3 takes is one over bob's cap of 3: refused before anything public, no row.
        refused = await run_command(fake, bob, server.channel, "generate", prompt="x", duration=1, takes=3)
        answer = await private_reply(refused)
        assert "limit is 3" in answer and "3 takes" in answer
        assert await job_count(bot) == rows_before
        # The same under the admission lock, where the rows are written: all of them or none.
        origin = JobOrigin(guild_id=server.guild.id, channel_id=server.channel.id, user_id=bob.id)
        request = GenerationRequest(model_version="small", prompt="x", duration=1)
        with pytest.raises(RequestError, match="limit is 3"):
            await bot.admission.admit_and_queue(
                origin, request, interaction=None, input_audio_filename=None, takes=Takes(3)
            )
        assert await job_count(bot) == rows_before
        # Two takes fit: they take bob's two last places.
        takes = await queued_takes(
            await run_command(fake, bob, server.channel, "generate", prompt="two", duration=1, takes=2)
        )
        assert bot.scheduler.pending_for_user(server.guild.id, bob.id) == 3
        full = await run_command(fake, bob, server.channel, "generate", prompt="more", duration=1)
        assert "already have 3" in await private_reply(full)
    finally:
        bot.dispatcher.resume()
    for job_id in (waiting, *takes):
        await wait_for_status(bot, job_id, "done")

    # The daily quota counts takes as jobs too.
    admin = server["alice"]
    made_today = await bot.controls.jobs_today(server.guild.id, bob.id)
    await bot.controls.set_daily_quota(server.guild.id, made_today + 2, by=admin.id)
    try:
        over = await run_command(fake, bob, server.channel, "generate", prompt="y", duration=1, takes=3)
        assert "asked for 3 takes" in await private_reply(over)
        assert await job_count(bot) == rows_before + 2
    finally:
        await bot.controls.set_daily_quota(server.guild.id, None, by=admin.id)


async def test_a_cancelled_take_does_not_lose_the_others(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake, alice = fake_discord, server["alice"]
    bot.dispatcher.pause()
    try:
        interaction = await run_command(
            fake, alice, server.channel, "generate", prompt="keep two", duration=1, takes=3
        )
        takes = await queued_takes(interaction)
        cancelled = await private_reply(
            await run_command(fake, alice, server.channel, "cancel", job_id=takes[1])
        )
        assert f"Job #{takes[1]} is cancelled" in cancelled
    finally:
        bot.dispatcher.resume()
    message = await takes_message(fake, server, takes[0])
    assert [a.filename for a in message.attachments if a.filename.endswith(".wav")] == [
        f"musicgen-{takes[0]}.wav",
        f"musicgen-{takes[2]}.wav",
    ]
    assert f"Take 2 (job #{takes[1]}) was cancelled." in message.content
    assert [row["components"][0]["custom_id"] for row in message.components] == [
        f"musicgen:reroll:{takes[0]}",
        f"musicgen:reroll:{takes[2]}",
    ]
    for job_id, expected in zip(takes, ("done", "cancelled", "done"), strict=True):
        await wait_for_status(bot, job_id, expected)  # fails if the row never reaches it
    await interaction.wait_for_final(lambda m: "2 of 3 takes are done" in m.content)

    # Every take cancelled: the status message says so, and nothing is posted.
    bot.dispatcher.pause()
    try:
        interaction = await run_command(
            fake, alice, server.channel, "generate", prompt="none", duration=1, takes=2
        )
        takes = await queued_takes(interaction)
        for job_id in takes:
            await private_reply(await run_command(fake, alice, server.channel, "cancel", job_id=job_id))
    finally:
        bot.dispatcher.resume()
    status = interaction.original_message
    assert status is not None
    await status_reads(fake, status, f"Jobs #{takes[0]}–#{takes[1]} (2 takes) were cancelled.")


async def test_a_member_picks_a_take_to_reroll_continue_or_replay(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake, alice = fake_discord, server["alice"]
    interaction = await run_command(
        fake, alice, server.channel, "generate", prompt="pick me", duration=1, takes=2
    )
    first, second = await queued_takes(interaction)
    message = await takes_message(fake, server, first)
    take_two = await wait_for_status(bot, second, "done")
    take_two_audio = attachment_named(message, f"musicgen-{second}.wav").data

    details = await fake.click_button(alice, message, f"musicgen:details:{second}")
    answer = await details.wait_for_final(lambda m: m.is_ephemeral and bool(m.embeds))
    assert f"`{take_two['seed']}`" in answer.text and f"2 of 2 (jobs #{first}–#{second})" in answer.text

    # Re-roll take 2: the same settings, a new seed, one job.
    rerolled_id = await queued_job_id(await fake.click_button(alice, message, f"musicgen:reroll:{second}"))
    rerolled = await wait_for_status(bot, rerolled_id, "done")
    assert rerolled["prompt"] == "pick me" and rerolled["seed"] != take_two["seed"]
    assert rerolled["take_group"] is None

    # Continue take 2: its own clip, not the message's first one.
    opened = await fake.click_button(alice, message, f"musicgen:continue:{second}")
    await opened.wait_for_response()
    continued_id = await queued_job_id(await fake.submit_modal(alice, opened, {"seconds": "1"}))
    piece = await posted_result(fake, server.channel, continued_id)
    continued = await wait_for_status(bot, continued_id, "done")
    assert continued["source_message_id"] == message.id
    assert continued["input_audio_filename"] == f"musicgen-{second}.wav"
    assert Path(continued["input_audio"]).read_bytes() == take_two_audio
    assert wav_seconds(piece.attachments[0].data) == pytest.approx(2.0, abs=0.05)

    # Replay take 2: the same seed and settings make take 2's audio again, as a job of its own.
    replay_id = await queued_job_id(await run_command(fake, alice, server.channel, "replay", job_id=second))
    replayed = await posted_result(fake, server.channel, replay_id)
    assert replayed.attachments[0].data == take_two_audio
    replay_row = await wait_for_status(bot, replay_id, "done")
    assert replay_row["replay_of"] == second and replay_row["seed"] == take_two["seed"]
    assert replay_row["take_group"] is None


async def test_one_take_is_a_job_as_before(
    fake_discord: FakeDiscord, server: Server, bot: MusicGenBot
) -> None:
    fake = fake_discord
    interaction = await run_command(fake, server["bob"], server.channel, "generate", prompt="one", duration=1)
    job_id = await queued_job_id(interaction)
    result = await posted_result(fake, server.channel, job_id)
    assert [a.filename for a in result.attachments] == [f"musicgen-{job_id}.wav", f"musicgen-{job_id}.png"]
    assert [b["label"] for b in result.buttons()] == ["Re-roll", "Continue", "Use as melody", "Details"]
    row = await wait_for_status(bot, job_id, "done")
    assert (row["take_group"], row["take_number"], row["take_count"]) == (None, None, None)


async def test_takes_over_the_upload_limit_are_posted_as_mp3(
    fake_discord: FakeDiscord, bot: MusicGenBot
) -> None:
    fake = fake_discord
    # Below a 1 s WAV (64 KB), above its MP3 (40 KB).
    small = add_server(fake, "Small uploads", ("sam",), attachment_size_limit=50_000)
    interaction = await run_command(
        fake, small["sam"], small.channel, "generate", prompt="s", duration=1, takes=2
    )
    takes = await queued_takes(interaction)
    message = await takes_message(fake, small, takes[0])
    audio = [a for a in message.attachments if not a.filename.endswith(".png")]
    assert [a.filename for a in audio] == [f"musicgen-{job_id}.mp3" for job_id in takes]
    assert all(a.size <= 50_000 for a in audio)
    assert "Take 1: The WAV" in message.content and "Take 2: The WAV" in message.content
    for job_id in takes:
        row = await wait_for_status(bot, job_id, "done")
        assert (row["output_format"], row["posted_format"]) == ("wav", "mp3")


# -- the scheduler on its own ------------------------------------------------------------------------
def job(job_id: int, guild_id: int, *, group: int | None = None, seconds: float = 1.0) -> ScheduledJob:
    return ScheduledJob(
        job_id, guild_id, user_id=guild_id, batch_key="text", audio_seconds=seconds, group=group
    )


def scheduler(max_jobs: int = 4, max_audio_seconds: float = 120.0) -> FairScheduler:
    return FairScheduler(
        QueueLimits(10, 10), BatchLimits(max_jobs=max_jobs, max_audio_seconds=max_audio_seconds)
    )


def test_the_takes_of_a_request_are_served_in_one_turn_and_batched_together() -> None:
    fair = scheduler()
    for queued in (
        job(1, 100),
        job(2, 100),
        job(10, 200, group=10),
        job(11, 200, group=10),
        job(12, 200, group=10),
    ):
        fair.enqueue(queued)
    # Round-robin would interleave 100's second job between the takes; a request's takes are one turn.
    assert [queued.job_id for queued in fair.queued_in_order()] == [1, 10, 11, 12, 2]
    assert [queued.job_id for queued in fair.next_batch()] == [1, 10, 11, 12]


def test_takes_that_do_not_fit_whole_wait_for_the_next_batch_at_its_front() -> None:
    fair = scheduler()
    for queued in (
        job(1, 100),
        job(2, 300),
        job(10, 200, group=10),
        job(11, 200, group=10),
        job(12, 200, group=10),
    ):
        fair.enqueue(queued)
    assert [queued.job_id for queued in fair.next_batch()] == [1, 2]  # room for 2, not 3
    fair.enqueue(job(3, 100))
    assert [queued.job_id for queued in fair.next_batch()] == [10, 11, 12, 3]


def test_takes_that_could_never_share_one_batch_are_split_in_order() -> None:
    fair = scheduler(max_jobs=2)
    for queued in (job(10, 200, group=10), job(11, 200, group=10), job(12, 200, group=10), job(1, 100)):
        fair.enqueue(queued)
    assert [queued.job_id for queued in fair.next_batch()] == [10, 11]
    assert [queued.job_id for queued in fair.next_batch()] == [12, 1]
    # Over the audio budget together (4 x 40 s > 120 s): as many as fit.
    budget = scheduler(max_audio_seconds=120.0)
    for job_id in (20, 21, 22, 23):
        budget.enqueue(job(job_id, 200, group=20, seconds=40))
    assert [queued.job_id for queued in budget.next_batch()] == [20, 21, 22]
    assert [queued.job_id for queued in budget.next_batch()] == [23]


def test_takes_join_a_running_batch_whole_or_not_at_all() -> None:
    fair = scheduler()
    fair.enqueue(job(1, 100))
    assert [queued.job_id for queued in fair.next_batch()] == [1]
    for queued in (
        job(10, 200, group=10),
        job(11, 200, group=10),
        job(12, 200, group=10),
        job(13, 200, group=10),
    ):
        fair.enqueue(queued)
    assert fair.next_joiners("text", running_jobs=1, longest_seconds=1.0) == []  # 3 places for 4 takes
    assert [queued.job_id for queued in fair.next_joiners("text", running_jobs=0, longest_seconds=0.0)] == [
        10,
        11,
        12,
        13,
    ]


# -- the CLI ------------------------------------------------------------------------------------------
def test_the_cli_writes_one_file_per_take_with_its_seed(
    engine_settings: EngineSettings, tmp_path: Path
) -> None:
    config = write_config(engine_settings, tmp_path / "config.toml")
    output = tmp_path / "song.wav"
    result = CliRunner().invoke(
        inference_cli,
        ["generate", "--config", str(config), "--model-version", "small", "--prompt", "two takes",
         "--duration", "1", "--takes", "2", "--seed", "41", "--no-progress", "--output", str(output)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "take 1: seed: 41" in result.output and "take 2: seed: 42" in result.output
    written = sorted(path.name for path in tmp_path.iterdir() if path.suffix == ".wav")
    assert written == ["song-take1.wav", "song-take2.wav"]
    assert soundfile.info(tmp_path / "song-take1.wav").frames == 32_000
    assert (tmp_path / "song-take1.wav").read_bytes() != (tmp_path / "song-take2.wav").read_bytes()

    refused = CliRunner().invoke(
        inference_cli,
        ["generate", "--config", str(config), "--prompt", "x", "--takes", "5", "--output", str(output)],
    )
    assert refused.exit_code == 2 and "takes must be between 1 and 4" in refused.output
