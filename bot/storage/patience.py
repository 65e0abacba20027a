"""Storage faults (a locked, full or failing SQLite database) hold the job queue instead of draining it.

Every step of a job is a row update. If one of those updates fails and the failure is handled by
writing the job's failure to the same broken database, that second write fails too: the job
leaves the queue while its row still says 'queued', and the next job goes the same way. So the
dispatcher's writes go through a `StorageGate` instead: a write that meets a storage fault is
retried with backoff until the database takes it, the owner's log says so loudly, and the job
waits where it is. Because every job step waits on its write, dispatching pauses by itself, with
every job still in its queue, and resumes when the database is writable again.

Only faults of the storage are waited out (busy/locked, I/O error, full, read-only, cannot open);
an SQL error is a bug and raises at once.

One gate per database (`shared_gate`) serves every store (jobs and jams), so the bot has one storage
state. A write that moves existing work along (a job's or a jam turn's status) waits as long as it
takes. A write a member is waiting on that would make something new (a job row for /generate, a jam,
a turn, a server setting) waits `member_patience_s` at most, then raises `StorageBusy`: the member is
told privately that the bot is busy and to try again, and nothing was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiosqlite

from bot.storage.database import Database
from bot.storage.jobs import Job, JobStore
from inference.request import RequestError

logger = logging.getLogger(__name__)

T = TypeVar("T")

_STORAGE_FAULT_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,  # "database is locked": another process holds the write lock
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,  # the file or its folder became read-only
        sqlite3.SQLITE_IOERR,  # "disk I/O error"
        sqlite3.SQLITE_FULL,  # "database or disk is full"
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)
# Pauses between tries while the database refuses writes; the last one repeats.
STORAGE_RETRY_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)
# How long a member's command waits for the database before being told the bot is busy. A try itself
# may wait SQLite's busy timeout (5 s): this gives a locked database two chances, within ~11 s, well
# inside the 15 minutes a deferred interaction lives.
MEMBER_PATIENCE_S = 10.0
BUSY_TEXT = "The bot is too busy to take this right now, so nothing was done. Please try again in a minute."


class StorageBusy(RequestError):
    """The database refused a write a member waits on for longer than they should wait: nothing was written."""

    def __init__(self, text: str = BUSY_TEXT) -> None:
        super().__init__(text)


def is_storage_fault(error: BaseException) -> bool:
    """The database could not do the work now (locked, full, I/O), as opposed to a wrong statement."""
    if not isinstance(error, sqlite3.OperationalError):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:  # raised by Python's module itself, not SQLite: judge by the words
        return "locked" in str(error) or "disk" in str(error)
    return code & 0xFF in _STORAGE_FAULT_CODES


class StorageGate:
    """Runs writes until the database takes them, and knows whether it currently does.

    Operations run one at a time, so a failed one is rolled back before another starts: the
    rollback can never take another operation's uncommitted statement with it.
    """

    def __init__(
        self,
        connection: aiosqlite.Connection,
        *,
        delays_s: Sequence[float] = STORAGE_RETRY_DELAYS_S,
        member_patience_s: float = MEMBER_PATIENCE_S,
    ):
        self._connection = connection
        self.delays_s = tuple(delays_s)
        self.member_patience_s = member_patience_s
        self.writable = True
        self.failed_since: float | None = None
        self.faults_seen = 0
        self._recovered = asyncio.Event()
        self._recovered.set()
        self._one_at_a_time = asyncio.Lock()
        # Operations between their first fault and their end: while there are none, nobody would
        # see the database recover, so the fault is no longer assumed.
        self._retrying = 0

    async def wait_writable(self) -> None:
        """Return at once while the database is writable; else when a waiting write went through."""
        await self._recovered.wait()

    async def run(self, operation: Callable[[], Awaitable[T]], *, what: str, member_waits: bool = False) -> T:
        """`operation()`, tried again after each storage fault until it succeeds.

        `member_waits`: a member's command waits on it, so after `member_patience_s` it raises
        `StorageBusy` instead (each failed try was rolled back: nothing of it was written).
        """
        started = time.monotonic()
        tries = 0
        try:
            while True:
                async with self._one_at_a_time:
                    try:
                        outcome = await operation()
                    except sqlite3.Error as error:
                        if not is_storage_fault(error):
                            raise
                        await self._roll_back()
                        fault = error
                    else:
                        self._note_success()
                        return outcome
                delay = self.delays_s[min(tries, len(self.delays_s) - 1)]
                tries += 1
                if tries == 1:
                    self._retrying += 1
                self._note_fault(fault, what=what, tries=tries, delay=delay)
                waited_s = time.monotonic() - started
                if member_waits and waited_s + delay > self.member_patience_s:
                    logger.warning(
                        "storage fault: gave up on %s after %.0f s; the member was told the bot is busy",
                        what,
                        waited_s,
                    )
                    raise StorageBusy() from fault
                await asyncio.sleep(delay)
        finally:
            if tries:
                self._retrying -= 1
                if not self._retrying and not self.writable:
                    self._no_longer_waiting()

    def _note_fault(self, error: sqlite3.Error, *, what: str, tries: int, delay: float) -> None:
        self.faults_seen += 1
        if self.writable:
            self.writable = False
            self.failed_since = time.monotonic()
            self._recovered.clear()
            logger.error(
                "STORAGE FAULT: the database refused a write (%s: %s). Jobs stay queued and dispatching "
                "waits; the write is retried until the database takes it (check disk space, file "
                "permissions and other processes holding the database open).",
                what,
                error,
            )
        else:
            assert self.failed_since is not None
            logger.warning(
                "storage fault continues (%s, try %d, %.0f s so far): %s; next try in %.0f s",
                what,
                tries,
                time.monotonic() - self.failed_since,
                error,
                delay,
            )

    def _note_success(self) -> None:
        if self.writable:
            return
        assert self.failed_since is not None
        logger.warning(
            "storage recovered: the database takes writes again after %.0f s; dispatching resumes",
            time.monotonic() - self.failed_since,
        )
        self._mark_writable()

    def _no_longer_waiting(self) -> None:
        # Only writes that gave up (a member's, or a cancelled one) met the fault: no write is left to
        # find out when it ends, so the next one tries afresh (and waits, if it is still there).
        logger.warning("storage: no write waits on the database any more; the next one will try again")
        self._mark_writable()

    def _mark_writable(self) -> None:
        self.writable = True
        self.failed_since = None
        self._recovered.set()

    async def _roll_back(self) -> None:
        # A failed statement can leave the implicit transaction open on an old snapshot (in WAL mode
        # that makes every later write fail as well): start the next try from a clean state.
        if self._connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                await self._connection.rollback()


_GATES: weakref.WeakKeyDictionary[Database, StorageGate] = weakref.WeakKeyDictionary()


def shared_gate(database: Database) -> StorageGate:
    """The one gate of `database`: every store's writes wait out its faults together, with one state."""
    gate = _GATES.get(database)
    if gate is None:
        gate = _GATES[database] = StorageGate(database.connection)
    return gate


class PatientJobStore(JobStore):
    """The bot's job store: reads and writes wait out storage faults instead of raising them.

    A new job row, or a server setting, that a member's command waits on gives up after the gate's
    `member_patience_s` with `StorageBusy` (nothing written).
    """

    def __init__(self, database: Database, *, gate: StorageGate | None = None) -> None:
        super().__init__(database)
        self.gate = gate or shared_gate(database)

    async def get(self, job_id: int) -> Job | None:
        return await self.gate.run(
            lambda: super(PatientJobStore, self).get(job_id), what=f"reading job {job_id}"
        )

    async def _select(self, sql: str, parameters: tuple[Any, ...]) -> list[Job]:
        return await self.gate.run(
            lambda: super(PatientJobStore, self)._select(sql, parameters), what=sql_summary(sql)
        )

    async def _insert(self, sql: str, parameters: tuple[Any, ...]) -> int:
        return await self.gate.run(
            lambda: super(PatientJobStore, self)._insert(sql, parameters),
            what=sql_summary(sql),
            member_waits=True,
        )

    async def _insert_takes(self, rows: list[dict[str, Any]]) -> list[int]:
        return await self.gate.run(
            lambda: super(PatientJobStore, self)._insert_takes(rows),
            what=f"inserting {len(rows)} takes",
            member_waits=True,
        )

    async def _update(self, sql: str, parameters: tuple[Any, ...], *, member_waits: bool = False) -> bool:
        return await self.gate.run(
            lambda: super(PatientJobStore, self)._update(sql, parameters),
            what=sql_summary(sql),
            member_waits=member_waits,
        )


def sql_summary(sql: str) -> str:
    """'UPDATE jobs SET status = 'running'…' → the first words, enough to tell the writes apart."""
    words = sql.split()
    return " ".join(words[:6]) + ("…" if len(words) > 6 else "")
