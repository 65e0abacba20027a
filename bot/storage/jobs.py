"""Generation jobs as rows in SQLite: creation, status changes, lookups.

A job is inserted (status 'queued') before the scheduler sees it; the takes of one request
(`/generate takes:N`) are N rows inserted in one transaction. Every status change is one UPDATE
statement committed on its own, guarded by the status it expects to move from, so a row is never
half-written and two parties (a /cancel and the dispatcher) cannot both win.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import aiosqlite

from bot.storage.database import Database, record_from_row
from inference.request import GenerationRequest


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


PENDING_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass(frozen=True)
class JobOrigin:
    """Where a job came from on Discord."""

    guild_id: int
    channel_id: int
    user_id: int
    application_id: int | None = None
    interaction_id: int | None = None


@dataclass(frozen=True)
class ContinuationSource:
    """A job that continues audio posted on Discord, and the context window the model was given.

    Its result is posted as the whole piece: the full source, then the new seconds.
    """

    message_id: int | None
    channel_id: int | None
    source_seconds: float
    context_start_s: float
    context_s: float


@dataclass(frozen=True)
class Take:
    """One of the takes of a request (`/generate takes:N`): a job of its own, posted with the others.

    The takes' job ids follow each other: `group` (the first take's) to `group + count - 1`.
    """

    group: int
    number: int
    count: int

    @property
    def job_ids(self) -> range:
        return range(self.group, self.group + self.count)

    @property
    def span(self) -> str:
        """The takes' job numbers as members read them: "#12–#14"."""
        return f"#{self.group}–#{self.group + self.count - 1}"


@dataclass(frozen=True)
class Job:
    """One row of the jobs table."""

    id: int
    status: JobStatus
    guild_id: int
    channel_id: int
    user_id: int
    application_id: int | None
    interaction_id: int | None
    status_message_id: int | None
    result_message_id: int | None
    replay_of: int | None
    request: GenerationRequest
    input_audio_filename: str | None
    seed_was_random: bool
    attempts: int
    error: str | None
    output_path: str | None
    posted_format: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    continues: ContinuationSource | None = None
    # One of several takes of one request (None: a job made alone).
    take: Take | None = None
    # Whose fault a failed job was: "member" or "bot" (None: not failed, or failed before V6).
    failed_by: str | None = None

    @property
    def is_pending(self) -> bool:
        """Queued or running: not finished one way or another."""
        return self.status in PENDING_STATUSES

    @property
    def seed(self) -> int:
        assert self.request.seed is not None  # jobs always carry the seed they run with
        return self.request.seed

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> Job:
        columns = row.keys()  # sqlite3.Row: `in row` looks at values, not column names
        return record_from_row(
            cls,
            row,
            status=JobStatus(row["status"]),
            request=GenerationRequest.from_dict(json.loads(row["request_json"])),
            seed_was_random=bool(row["seed_was_random"]),
            # (A database not yet migrated to V3 has no such columns.)
            continues=None
            if "context_s" not in columns or row["context_s"] is None
            else ContinuationSource(
                message_id=row["source_message_id"],
                channel_id=row["source_channel_id"],
                source_seconds=row["source_seconds"],
                context_start_s=row["context_start_s"],
                context_s=row["context_s"],
            ),
            take=None
            if "take_group" not in columns or row["take_group"] is None
            else Take(group=row["take_group"], number=row["take_number"], count=row["take_count"]),
            failed_by=row["failed_by"] if "failed_by" in columns else None,
        )


# Every field of the request is stored in the column of the same name (and the whole request as JSON).
_REQUEST_COLUMNS = tuple(field.name for field in dataclasses.fields(GenerationRequest))


def _row_fields(
    origin: JobOrigin,
    request: GenerationRequest,
    *,
    seed_was_random: bool,
    input_audio_filename: str | None,
    replay_of: int | None = None,
    status_message_id: int | None = None,
) -> dict[str, Any]:
    """The columns of a new queued job's row (the request must carry its concrete seed)."""
    if request.seed is None:
        raise ValueError("a job's request must carry the seed it will run with")
    fields: dict[str, Any] = {name: getattr(request, name) for name in _REQUEST_COLUMNS}
    fields.update(
        status=JobStatus.QUEUED.value,
        guild_id=origin.guild_id,
        channel_id=origin.channel_id,
        user_id=origin.user_id,
        application_id=origin.application_id,
        interaction_id=origin.interaction_id,
        replay_of=replay_of,
        status_message_id=status_message_id,
        input_audio_filename=input_audio_filename,
        seed_was_random=seed_was_random,
        request_json=json.dumps(request.to_dict()),
        created_at=time.time(),
    )
    return fields


def _insert_statement(fields: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    columns = ", ".join(fields)
    placeholders = ", ".join("?" for _ in fields)
    return f"INSERT INTO jobs ({columns}) VALUES ({placeholders})", tuple(fields.values())


class JobStore:
    """Reads and writes the jobs and guild_settings tables."""

    def __init__(self, database: Database) -> None:
        self._db = database.connection

    async def create(
        self,
        origin: JobOrigin,
        request: GenerationRequest,
        *,
        seed_was_random: bool,
        input_audio_filename: str | None = None,
        replay_of: int | None = None,
        continues: ContinuationSource | None = None,
        status_message_id: int | None = None,
    ) -> Job:
        """Insert a queued job; the request must carry its concrete seed.

        `status_message_id`: a status message posted already (a jam turn's), recorded in the same
        write, so a database that locks up in between cannot leave a row that does not know it.
        """
        fields = _row_fields(
            origin,
            request,
            seed_was_random=seed_was_random,
            input_audio_filename=input_audio_filename,
            replay_of=replay_of,
            status_message_id=status_message_id,
        )
        if continues is not None:
            fields.update(
                source_message_id=continues.message_id,
                source_channel_id=continues.channel_id,
                source_seconds=continues.source_seconds,
                context_start_s=continues.context_start_s,
                context_s=continues.context_s,
            )
        job_id = await self._insert(*_insert_statement(fields))
        job = await self.get(job_id)
        assert job is not None
        return job

    async def create_takes(
        self,
        origin: JobOrigin,
        requests: list[GenerationRequest],
        *,
        seed_was_random: bool,
        input_audio_filename: str | None = None,
    ) -> list[Job]:
        """Insert the takes of one request, queued, in one transaction: all of them or none.

        Each is a job of its own (its request carries its own seed), numbered from 1, and all
        record the first take's id as their group.
        """
        if len(requests) < 2:
            raise ValueError("takes come two or more at a time")
        rows = [
            _row_fields(
                origin, request, seed_was_random=seed_was_random, input_audio_filename=input_audio_filename
            )
            | {"take_number": number, "take_count": len(requests)}
            for number, request in enumerate(requests, start=1)
        ]
        group = (await self._insert_takes(rows))[0]
        return await self.takes_of(group)  # one read for them all, in take order

    async def takes_of(self, group: int) -> list[Job]:
        """Every take of one request (its first take's id), in take order, whatever their status."""
        return await self._select("SELECT * FROM jobs WHERE take_group = ? ORDER BY take_number", (group,))

    async def get(self, job_id: int) -> Job | None:
        async with self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else Job.from_row(row)

    async def pending(self) -> list[Job]:
        """Queued and running jobs, oldest first (what a restart must resume)."""
        return await self._select(
            "SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at, id", ()
        )

    async def history(self, guild_id: int, user_id: int, *, limit: int = 10) -> list[Job]:
        """A member's most recent jobs in a guild, newest first."""
        return await self._select(
            "SELECT * FROM jobs WHERE guild_id = ? AND user_id = ? ORDER BY id DESC LIMIT ?",
            (guild_id, user_id, limit),
        )

    async def pending_in_guild(self, guild_id: int) -> list[Job]:
        return await self._select(
            "SELECT * FROM jobs WHERE guild_id = ? AND status IN ('queued', 'running') ORDER BY id",
            (guild_id,),
        )

    # -- status changes: one guarded UPDATE each; True if the row moved ----------------------------
    async def mark_running(self, job_id: int) -> bool:
        return await self._update(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?, error = NULL "
            "WHERE id = ? AND status = 'queued'",
            (time.time(), job_id),
        )

    async def mark_done(
        self, job_id: int, *, output_path: str, seed: int, posted_format: str, result_message_id: int | None
    ) -> bool:
        return await self._update(
            "UPDATE jobs SET status = 'done', output_path = ?, seed = ?, posted_format = ?, result_message_id = ?, "
            "finished_at = ?, error = NULL WHERE id = ? AND status = 'running'",
            (output_path, seed, posted_format, result_message_id, time.time(), job_id),
        )

    async def mark_failed(
        self, job_id: int, error: str, *, output_path: str | None = None, by_member: bool = False
    ) -> bool:
        """`by_member`: the member's request could not be made (it counts towards their daily quota);
        otherwise the bot failed them (a crash, a deadline, storage, delivery), which does not count."""
        return await self._update(
            "UPDATE jobs SET status = 'failed', error = ?, output_path = COALESCE(?, output_path), finished_at = ?, "
            "failed_by = ? WHERE id = ? AND status IN ('queued', 'running')",
            (error, output_path, time.time(), "member" if by_member else "bot", job_id),
        )

    async def mark_cancelled(self, job_id: int) -> bool:
        return await self._update(
            "UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ? AND status IN ('queued', 'running')",
            (time.time(), job_id),
        )

    async def requeue(self, job_id: int, *, error: str | None = None, refund_attempt: bool = False) -> bool:
        """Put a running job back in the queue (a retry, or a shutdown that interrupted it)."""
        refund = 1 if refund_attempt else 0
        return await self._update(
            "UPDATE jobs SET status = 'queued', attempts = MAX(attempts - ?, 0), error = ? "
            "WHERE id = ? AND status = 'running'",
            (refund, error, job_id),
        )

    async def set_status_message(self, job_id: int, message_id: int) -> None:
        await self._update("UPDATE jobs SET status_message_id = ? WHERE id = ?", (message_id, job_id))

    # -- guild settings ----------------------------------------------------------------------------
    async def guild_limits(self) -> dict[int, int]:
        async with self._db.execute(
            "SELECT guild_id, max_pending FROM guild_settings WHERE max_pending IS NOT NULL"
        ) as cursor:
            return {row[0]: row[1] for row in await cursor.fetchall()}

    async def set_guild_limit(self, guild_id: int, max_pending: int | None) -> None:
        await self._update(
            "INSERT INTO guild_settings (guild_id, max_pending) VALUES (?, ?) "
            "ON CONFLICT(guild_id) DO UPDATE SET max_pending = excluded.max_pending",
            (guild_id, max_pending),
            member_waits=True,
        )

    async def guild_default_models(self) -> dict[int, str]:
        """Every guild's own default model (guilds without one are left out)."""
        async with self._db.execute(
            "SELECT guild_id, default_model_version FROM guild_settings WHERE default_model_version IS NOT NULL"
        ) as cursor:
            return {row[0]: row[1] for row in await cursor.fetchall()}

    async def guild_default_model(self, guild_id: int) -> str | None:
        """The model /generate uses in this guild when none is picked (None: the config's default)."""
        async with self._db.execute(
            "SELECT default_model_version FROM guild_settings WHERE guild_id = ?", (guild_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else row[0]

    async def set_guild_default_model(self, guild_id: int, model_version: str | None) -> None:
        await self._update(
            "INSERT INTO guild_settings (guild_id, default_model_version) VALUES (?, ?) "
            "ON CONFLICT(guild_id) DO UPDATE SET default_model_version = excluded.default_model_version",
            (guild_id, model_version),
            member_waits=True,
        )

    # -- plumbing ----------------------------------------------------------------------------------
    async def _select(self, sql: str, parameters: tuple[Any, ...]) -> list[Job]:
        async with self._db.execute(sql, parameters) as cursor:
            return [Job.from_row(row) for row in await cursor.fetchall()]

    async def _insert(self, sql: str, parameters: tuple[Any, ...]) -> int:
        """Insert the row a member's command makes; returns its id."""
        cursor = await self._db.execute(sql, parameters)
        await self._db.commit()
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    async def _insert_takes(self, rows: list[dict[str, Any]]) -> list[int]:
        """Insert the rows of a request's takes and record the first one's id as their group, in one
        transaction (the member's command waits on it); returns their ids, in order."""
        try:
            ids = []
            for fields in rows:
                cursor = await self._db.execute(*_insert_statement(fields))
                assert cursor.lastrowid is not None
                ids.append(cursor.lastrowid)
            # One connection writes, so nothing comes between them: `Take.job_ids` counts on it.
            assert ids == list(range(ids[0], ids[0] + len(ids))), ids
            placeholders = ", ".join("?" for _ in ids)
            await self._db.execute(
                f"UPDATE jobs SET take_group = ? WHERE id IN ({placeholders})", (ids[0], *ids)
            )
            await self._db.commit()
        except BaseException:
            # Never leave some of the takes behind for the next commit to write.
            with contextlib.suppress(sqlite3.Error):
                await self._db.rollback()
            raise
        return ids

    async def _update(self, sql: str, parameters: tuple[Any, ...], *, member_waits: bool = False) -> bool:
        """One write committed on its own; True if it changed a row.

        `member_waits`: a member's command waits on it (the patient store gives up on it sooner).
        """
        cursor = await self._db.execute(sql, parameters)
        await self._db.commit()
        return cursor.rowcount > 0
