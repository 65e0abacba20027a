"""The SQLite schema: versioned migrations applied once, in order, atomically; jobs rows round-trip;
a locked database makes a member's new row give up cleanly while work in progress waits for it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bot.storage.database import MIGRATIONS_DIR, Database, MigrationError, discover_migrations
from bot.storage.jams import JamStore
from bot.storage.jobs import JobOrigin, JobStatus, JobStore
from bot.storage.patience import PatientJobStore, StorageBusy
from bot.storage.server_controls import ServerControls
from inference.request import GenerationRequest


async def test_a_fresh_database_gets_every_migration_recorded_and_reopening_applies_nothing(
    tmp_path: Path,
) -> None:
    database = await Database.open(tmp_path / "bot.sqlite3")
    shipped = [m.version for m in discover_migrations()]
    assert shipped[0] == 1
    assert await database.applied_versions() == shipped
    await database.close()

    reopened = await Database.open(tmp_path / "bot.sqlite3", upgrade=False)
    assert await reopened.upgrade() == []
    await reopened.close()


async def test_migrations_run_in_version_order_and_a_broken_one_leaves_nothing_behind(tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "V1__first.sql").write_text(
        "CREATE TABLE bot_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    )
    (folder / "V10__tenth.sql").write_text("INSERT INTO bot_state VALUES ('order', 'ten');")
    (folder / "V2__second.sql").write_text("INSERT INTO bot_state VALUES ('order', 'two');")
    database = await Database.open(tmp_path / "bot.sqlite3", migrations_dir=folder, upgrade=False)
    # V10 after V2 (numeric order, not file-name order): V10's insert would collide if it ran first.
    with pytest.raises(MigrationError, match="V10__tenth"):
        await database.upgrade(folder)
    assert await database.applied_versions() == [1, 2]
    assert await database.get_state("order") == "two"

    (folder / "V10__tenth.sql").write_text(
        "CREATE TABLE half_done (x INTEGER); UPDATE bot_state SET value = 'ten' WHERE key = 'order';"
    )
    (folder / "V11__broken.sql").write_text("CREATE TABLE never_created (x INTEGER); THIS IS NOT SQL;")
    with pytest.raises(MigrationError, match="V11__broken"):
        await database.upgrade(folder)
    assert await database.applied_versions() == [1, 2, 10]
    async with database.connection.execute(
        "SELECT name FROM sqlite_master WHERE name = 'never_created'"
    ) as cursor:
        assert await cursor.fetchone() is None
    await database.close()


def test_migration_files_must_be_named_by_version(tmp_path: Path) -> None:
    (tmp_path / "initial.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"V<number>__<name>\.sql"):
        discover_migrations(tmp_path)


async def test_a_job_row_keeps_every_input_and_moves_through_its_statuses_once(tmp_path: Path) -> None:
    database = await Database.open(tmp_path / "bot.sqlite3")
    store = JobStore(database)
    request = GenerationRequest(
        model_version="melody",
        prompt="lofi piano",
        input_audio="/data/uploads/x.mp3",
        duration=5,
        continuation=True,
        continuation_start=1.5,
        continuation_end=4.0,
        normalization_strategy="peak",
        top_k=50,
        top_p=0.9,
        temperature=0.7,
        classifier_free_guidance=5.0,
        output_format="mp3",
        seed=1234,
    )
    job = await store.create(
        JobOrigin(guild_id=1, channel_id=2, user_id=3, interaction_id=4), request, seed_was_random=False
    )
    assert job.status is JobStatus.QUEUED and job.request == request and job.attempts == 0

    async with database.connection.execute("SELECT * FROM jobs WHERE id = ?", (job.id,)) as cursor:
        row = await cursor.fetchone()
    assert row is not None
    for field, value in request.to_dict().items():
        assert row[field] == value, field

    assert await store.mark_running(job.id)
    assert not await store.mark_running(job.id)  # only a queued job can start
    assert await store.requeue(job.id, error="worker crashed")
    assert await store.mark_running(job.id)
    assert await store.mark_done(
        job.id, output_path="/out.mp3", seed=1234, posted_format="mp3", result_message_id=9
    )
    assert not await store.mark_cancelled(job.id)  # finished jobs stay finished
    done = await store.get(job.id)
    assert done is not None
    assert (done.status, done.attempts, done.error, done.result_message_id) == (JobStatus.DONE, 2, None, 9)
    assert await store.pending() == []
    await database.close()


async def test_a_request_without_a_concrete_seed_is_not_stored(tmp_path: Path) -> None:
    database = await Database.open(tmp_path / "bot.sqlite3")
    with pytest.raises(ValueError):
        await JobStore(database).create(
            JobOrigin(1, 2, 3), GenerationRequest(prompt="x"), seed_was_random=True
        )
    await database.close()


async def test_a_database_from_the_first_release_is_upgraded_in_place_and_keeps_its_jobs_and_settings(
    tmp_path: Path,
) -> None:
    # The bot as first released: only V1 existed.
    first_release = tmp_path / "v1-migrations"
    first_release.mkdir()
    (first_release / "V1__initial.sql").write_text((MIGRATIONS_DIR / "V1__initial.sql").read_text())
    path = tmp_path / "bot.sqlite3"
    old = await Database.open(path, migrations_dir=first_release)
    assert await old.applied_versions() == [1]
    request = GenerationRequest(model_version="small", prompt="kept across the upgrade", duration=3, seed=77)
    queued = await JobStore(old).create(
        JobOrigin(guild_id=10, channel_id=20, user_id=30), request, seed_was_random=False
    )
    await JobStore(old).set_guild_limit(10, 4)
    await old.close()

    upgraded = await Database.open(path)  # what the new bot does when it starts
    assert await upgraded.applied_versions() == [m.version for m in discover_migrations()]
    store = JobStore(upgraded)
    job = await store.get(queued.id)
    assert job is not None and job.status is JobStatus.QUEUED and job.request == request
    assert await store.pending() == [job]
    assert await store.guild_limits() == {10: 4}
    assert await store.guild_default_model(10) is None  # the new setting starts unset
    await store.set_guild_default_model(10, "melody")
    assert await store.guild_default_model(10) == "melody"
    assert await store.guild_limits() == {10: 4}  # setting one column leaves the other alone
    await upgraded.close()


async def test_only_failures_that_were_the_members_own_count_towards_their_daily_quota(
    tmp_path: Path,
) -> None:
    database = await Database.open(tmp_path / "bot.sqlite3")
    store, controls = JobStore(database), ServerControls(database)
    request = GenerationRequest(model_version="small", prompt="x", duration=1, seed=1)
    origin = JobOrigin(guild_id=1, channel_id=2, user_id=3)
    jobs = [await store.create(origin, request, seed_was_random=False) for _ in range(4)]
    assert await store.mark_failed(jobs[0].id, "the generator crashed, twice")  # the bot's doing
    assert await store.mark_failed(jobs[1].id, "could not post the result", output_path="/out.wav")
    assert await store.mark_failed(jobs[2].id, "that clip cannot be read", by_member=True)
    assert await store.mark_cancelled(jobs[3].id)
    await store.create(origin, request, seed_was_random=False)  # still queued: it counts
    assert await controls.jobs_today(1, 3) == 2
    await database.close()


async def test_a_new_row_a_member_waits_on_gives_up_on_a_locked_database_while_work_in_progress_waits(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bot.sqlite3"
    database = await Database.open(path)
    await database.connection.execute("PRAGMA busy_timeout = 100")  # SQLite's own wait, shortened
    jobs = PatientJobStore(database)
    assert JamStore(database).gate is jobs.gate  # one storage state for the whole bot
    jobs.gate.delays_s, jobs.gate.member_patience_s = (0.05,), 0.5
    request = GenerationRequest(model_version="small", prompt="x", duration=1, seed=1)
    origin = JobOrigin(guild_id=1, channel_id=2, user_id=3)
    running = await jobs.create(origin, request, seed_was_random=False, status_message_id=77)
    assert running.status_message_id == 77  # written with the row, not in a second write
    await jobs.mark_running(running.id)

    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StorageBusy, match="try again in a minute"):
            await jobs.create(origin, request, seed_was_random=False)
        # Nothing waits on the database now, so nothing holds the queue.
        assert jobs.gate.writable
        finishing = asyncio.create_task(jobs.mark_failed(running.id, "the generator crashed"))
        await asyncio.sleep(0.5)
        assert not finishing.done() and not jobs.gate.writable  # it waits, it does not fail
    finally:
        locker.execute("COMMIT")
        locker.close()
    assert await asyncio.wait_for(finishing, 5)
    assert jobs.gate.writable
    assert [job.id for job in await jobs.history(1, 3)] == [running.id]  # the refused row was not made
    await database.close()
