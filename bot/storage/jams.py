"""Jam sessions as rows in SQLite: jams, their turns in order, and who contributed what.

A jam lives in a thread. Its turns are kept in the order members asked for them; a turn becomes an
ordinary job only when every turn before it has finished, because it continues the piece those
turns leave behind. Each change is one guarded statement committed on its own (as in `JobStore`),
so a restart finds every jam, every waiting turn and every finished part as they were.

Reads and writes go through the database's `StorageGate`, the one the job store uses: while the
database refuses writes (locked by another process, full), a turn's progress waits until it takes
them, as a job's does, so a finished turn is never lost to a locked database. A new jam or turn a
member waits on gives up after the gate's patience with `StorageBusy` (nothing written).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from bot.storage.database import Database, record_from_row
from bot.storage.patience import StorageGate, shared_gate, sql_summary


class JamStatus(enum.StrEnum):
    OPEN = "open"
    ENDED = "ended"


class TurnStatus(enum.StrEnum):
    WAITING = "waiting"  # behind another turn; no job yet
    STARTED = "started"  # its job exists (queued or running)
    DONE = "done"  # its part is in the piece
    FAILED = "failed"  # its job failed or was cancelled: the piece is unchanged
    DROPPED = "dropped"  # the jam ended before it ran


# Turns that hold a place in the jam (count towards max_turns and the longest piece).
TURNS_IN_PLAY = (TurnStatus.WAITING, TurnStatus.STARTED, TurnStatus.DONE)


@dataclass(frozen=True)
class Jam:
    id: int
    guild_id: int
    channel_id: int
    thread_id: int
    starter_id: int
    prompt: str
    model_version: str
    turn_seconds: int
    max_turns: int
    status: JamStatus
    end_reason: str | None
    created_at: float

    @property
    def is_open(self) -> bool:
        return self.status is JamStatus.OPEN

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> Jam:
        return record_from_row(cls, row, status=JamStatus(row["status"]))


@dataclass(frozen=True)
class JamTurn:
    id: int
    jam_id: int
    user_id: int
    user_name: str
    prompt: str | None
    seconds: int
    status: TurnStatus
    job_id: int | None
    status_message_id: int | None
    number: int | None
    start_s: float | None
    end_s: float | None
    piece_path: str | None

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> JamTurn:
        return record_from_row(cls, row, status=TurnStatus(row["status"]))


@dataclass(frozen=True)
class Contributor:
    user_id: int
    user_name: str
    turns: int
    seconds: float


@dataclass(frozen=True)
class JamState:
    """A jam and its turns, oldest first: what every decision about it is made from."""

    jam: Jam
    turns: list[JamTurn]

    @property
    def done(self) -> list[JamTurn]:
        return sorted((t for t in self.turns if t.status is TurnStatus.DONE), key=lambda t: t.number or 0)

    @property
    def started(self) -> JamTurn | None:
        return next((t for t in self.turns if t.status is TurnStatus.STARTED), None)

    @property
    def waiting(self) -> list[JamTurn]:
        return [t for t in self.turns if t.status is TurnStatus.WAITING]

    @property
    def piece_seconds(self) -> float:
        """Length of the piece so far (0 before the opening turn is done)."""
        done = self.done
        return (done[-1].end_s or 0.0) if done else 0.0

    @property
    def piece_path(self) -> str | None:
        done = self.done
        return done[-1].piece_path if done else None

    @property
    def piece_missing(self) -> bool:
        """The piece so far should be on disk and is not (the storage sweep keeps an open jam's piece,
        so someone deleted it by hand): export, the next turn and the final piece cannot use it."""
        return self.piece_path is not None and not Path(self.piece_path).is_file()

    @property
    def turns_in_play(self) -> int:
        return sum(t.status in TURNS_IN_PLAY for t in self.turns)

    @property
    def seconds_in_play(self) -> float:
        """The piece's length once every waiting and started turn is done."""
        pending = sum(t.seconds for t in self.turns if t.status in (TurnStatus.WAITING, TurnStatus.STARTED))
        return self.piece_seconds + pending


class JamStore:
    """Reads and writes the jams and jam_turns tables, waiting out storage faults (see the module doc)."""

    def __init__(self, database: Database, *, gate: StorageGate | None = None) -> None:
        self._db = database.connection
        self._reader = database.reader
        # The job store's gate unless told otherwise: one storage state for the whole bot.
        self.gate = gate or shared_gate(database)
        # After `load`, every guild with a turn waiting: admission counts them before every command is
        # acknowledged, and most servers have no jam waiting. A guild stays in it until the next start
        # (its counts are then read from the database, which is always right).
        self._guilds_with_waiting_turns: set[int] | None = None

    async def load(self) -> None:
        """Learn at start-up which guilds have turns waiting (all others have none)."""
        async with self._reader.execute(
            "SELECT DISTINCT jams.guild_id FROM jam_turns JOIN jams ON jams.id = jam_turns.jam_id "
            "WHERE jam_turns.status = 'waiting'"
        ) as cursor:
            self._guilds_with_waiting_turns = {row[0] for row in await cursor.fetchall()}

    # -- jams ---------------------------------------------------------------------------------------
    async def create(
        self,
        *,
        guild_id: int,
        channel_id: int,
        thread_id: int,
        starter_id: int,
        prompt: str,
        model_version: str,
        turn_seconds: int,
        max_turns: int,
    ) -> Jam:
        jam_id = await self._insert(
            "INSERT INTO jams (guild_id, channel_id, thread_id, starter_id, prompt, model_version, turn_seconds, "
            "max_turns, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                guild_id,
                channel_id,
                thread_id,
                starter_id,
                prompt,
                model_version,
                turn_seconds,
                max_turns,
                time.time(),
            ),
        )
        jam = await self.get(jam_id)
        assert jam is not None
        return jam

    async def get(self, jam_id: int) -> Jam | None:
        return await self._one("SELECT * FROM jams WHERE id = ?", (jam_id,))

    async def in_thread(self, thread_id: int) -> Jam | None:
        return await self._one("SELECT * FROM jams WHERE thread_id = ?", (thread_id,))

    async def open_jams(self, guild_id: int | None = None) -> list[Jam]:
        """Open jams, oldest first (of one guild, or of all)."""
        parameters: tuple[int, ...] = ()
        if guild_id is None:
            sql = "SELECT * FROM jams WHERE status = 'open' ORDER BY id"
        else:
            sql, parameters = (
                "SELECT * FROM jams WHERE status = 'open' AND guild_id = ? ORDER BY id",
                (guild_id,),
            )
        return [Jam.from_row(row) for row in await self._rows(sql, parameters)]

    async def end(self, jam_id: int, reason: str) -> bool:
        """Close the jam and drop its waiting turns; False if it had already ended."""

        async def end_and_drop() -> bool:
            cursor = await self._db.execute(
                "UPDATE jams SET status = 'ended', end_reason = ?, ended_at = ? WHERE id = ? AND status = 'open'",
                (reason, time.time(), jam_id),
            )
            await self._db.execute(
                "UPDATE jam_turns SET status = 'dropped' WHERE jam_id = ? AND status = 'waiting'", (jam_id,)
            )
            await self._db.commit()
            return cursor.rowcount > 0

        return await self.gate.run(end_and_drop, what=f"ending jam {jam_id}")

    # -- turns --------------------------------------------------------------------------------------
    async def state(self, jam_id: int) -> JamState:
        jam = await self.get(jam_id)
        assert jam is not None
        rows = await self._rows("SELECT * FROM jam_turns WHERE jam_id = ? ORDER BY id", (jam_id,))
        return JamState(jam, [JamTurn.from_row(row) for row in rows])

    async def add_turn(
        self, jam: Jam, *, user_id: int, user_name: str, prompt: str | None, seconds: int
    ) -> JamTurn:
        # A new turn waits (the column's default): its guild is counted from before the row is written.
        if self._guilds_with_waiting_turns is not None:
            self._guilds_with_waiting_turns.add(jam.guild_id)
        turn_id = await self._insert(
            "INSERT INTO jam_turns (jam_id, user_id, user_name, prompt, seconds, asked_at) VALUES (?, ?, ?, ?, ?, ?)",
            (jam.id, user_id, user_name, prompt, seconds, time.time()),
        )
        turn = await self.turn(turn_id)
        assert turn is not None
        return turn

    async def turn(self, turn_id: int) -> JamTurn | None:
        rows = await self._rows("SELECT * FROM jam_turns WHERE id = ?", (turn_id,))
        return JamTurn.from_row(rows[0]) if rows else None

    async def turn_of_job(self, job_id: int) -> JamTurn | None:
        rows = await self._rows("SELECT * FROM jam_turns WHERE job_id = ?", (job_id,))
        return JamTurn.from_row(rows[0]) if rows else None

    async def waiting_turn_counts(self, guild_id: int, user_id: int) -> tuple[int, int]:
        """Turns still waiting for their place in this guild's jams: the member's, and everyone's.

        They count towards the caps and the daily quota as jobs: each holds its place in line.
        """
        known = self._guilds_with_waiting_turns
        if known is not None and guild_id not in known:
            return (0, 0)
        # On the reader: admission counts these before acknowledging a command (see `Database.reader`).
        async with self._reader.execute(
            "SELECT COALESCE(SUM(jam_turns.user_id = ?), 0), COUNT(*) FROM jam_turns "
            "JOIN jams ON jams.id = jam_turns.jam_id WHERE jams.guild_id = ? AND jam_turns.status = 'waiting'",
            (user_id, guild_id),
        ) as cursor:
            row = await cursor.fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def waiting_turns_of(self, guild_id: int, user_id: int) -> list[tuple[Jam, JamTurn]]:
        """The member's turns still waiting for their place in this guild's jams, oldest first."""
        rows = await self._rows(
            "SELECT jam_turns.* FROM jam_turns JOIN jams ON jams.id = jam_turns.jam_id "
            "WHERE jams.guild_id = ? AND jam_turns.user_id = ? AND jam_turns.status = 'waiting' "
            "ORDER BY jam_turns.id",
            (guild_id, user_id),
        )
        turns = [JamTurn.from_row(row) for row in rows]
        jams = {jam_id: await self.get(jam_id) for jam_id in {turn.jam_id for turn in turns}}
        return [(jam, turn) for turn in turns if (jam := jams[turn.jam_id]) is not None]

    async def set_turn_message(self, turn_id: int, message_id: int) -> None:
        await self._update("UPDATE jam_turns SET status_message_id = ? WHERE id = ?", (message_id, turn_id))

    async def mark_started(self, turn_id: int, job_id: int) -> bool:
        return await self._update(
            "UPDATE jam_turns SET status = 'started', job_id = ? WHERE id = ? AND status = 'waiting'",
            (job_id, turn_id),
        )

    async def mark_done(
        self, turn_id: int, *, number: int, start_s: float, end_s: float, piece_path: str
    ) -> bool:
        """Record the turn's part of the piece (again, with the same values, when its job is retried)."""
        return await self._update(
            "UPDATE jam_turns SET status = 'done', number = ?, start_s = ?, end_s = ?, piece_path = ? "
            "WHERE id = ? AND status IN ('started', 'done')",
            (number, start_s, end_s, piece_path, turn_id),
        )

    async def mark_failed(self, turn_id: int) -> bool:
        """The turn adds nothing: its job failed or was cancelled, or it could not be queued at all."""
        return await self._update(
            "UPDATE jam_turns SET status = 'failed' WHERE id = ? AND status IN ('waiting', 'started')",
            (turn_id,),
        )

    async def contributors(self, jam_id: int) -> list[Contributor]:
        """Everyone with a part in the piece, in the order they first played."""
        rows = await self._rows(
            "SELECT user_id, user_name, turns, seconds FROM jam_contributors WHERE jam_id = ? ORDER BY first_turn",
            (jam_id,),
        )
        return [record_from_row(Contributor, row) for row in rows]

    # -- plumbing: every statement through the gate -------------------------------------------------
    async def _one(self, sql: str, parameters: tuple[Any, ...]) -> Jam | None:
        rows = await self._rows(sql, parameters)
        return Jam.from_row(rows[0]) if rows else None

    async def _rows(self, sql: str, parameters: tuple[Any, ...]) -> list[aiosqlite.Row]:
        async def read() -> list[aiosqlite.Row]:
            async with self._db.execute(sql, parameters) as cursor:
                return list(await cursor.fetchall())

        return await self.gate.run(read, what=sql_summary(sql))

    async def _insert(self, sql: str, parameters: tuple[Any, ...]) -> int:
        """A new jam or turn: a member waits on it, so it gives up after the gate's patience."""

        async def insert() -> int:
            cursor = await self._db.execute(sql, parameters)
            await self._db.commit()
            assert cursor.lastrowid is not None
            return cursor.lastrowid

        return await self.gate.run(insert, what=sql_summary(sql), member_waits=True)

    async def _update(self, sql: str, parameters: tuple[Any, ...]) -> bool:
        """A turn's progress: waits until the database takes it."""

        async def update() -> bool:
            cursor = await self._db.execute(sql, parameters)
            await self._db.commit()
            return cursor.rowcount > 0

        return await self.gate.run(update, what=sql_summary(sql))
