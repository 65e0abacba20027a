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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiosqlite

from bot.database import Database
from bot.jobs import Job, JobStore

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


def is_storage_fault(error: BaseException) -> bool:
    """The database could not do the work now (locked, full, I/O), as opposed to a wrong statement."""
    if not isinstance(error, sqlite3.OperationalError):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:  # raised by Python's module itself, not SQLite: judge by the words
        return "locked" in str(error) or "disk" in str(error)
    return code & 0xFF in _STORAGE_FAULT_CODES


class StorageGate:
    """Runs writes until the database takes them, and knows whether it currently does."""

    def __init__(
        self, connection: aiosqlite.Connection, *, delays_s: Sequence[float] = STORAGE_RETRY_DELAYS_S
    ):
        self._connection = connection
        self.delays_s = tuple(delays_s)
        self.writable = True
        self.failed_since: float | None = None
        self.faults_seen = 0
        self._recovered = asyncio.Event()
        self._recovered.set()

    async def wait_writable(self) -> None:
        """Return at once while the database is writable; else when a waiting write went through."""
        await self._recovered.wait()

    async def run(self, operation: Callable[[], Awaitable[T]], *, what: str) -> T:
        """`operation()`, tried again after each storage fault until it succeeds."""
        tries = 0
        while True:
            try:
                outcome = await operation()
            except sqlite3.Error as error:
                if not is_storage_fault(error):
                    raise
                await self._roll_back()
                delay = self.delays_s[min(tries, len(self.delays_s) - 1)]
                tries += 1
                self._note_fault(error, what=what, tries=tries, delay=delay)
                await asyncio.sleep(delay)
                continue
            self._note_success()
            return outcome

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
        self.writable = True
        self.failed_since = None
        self._recovered.set()

    async def _roll_back(self) -> None:
        # A failed statement can leave the implicit transaction open on an old snapshot (in WAL mode
        # that makes every later write fail as well): start the next try from a clean state.
        if self._connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                await self._connection.rollback()


class PatientJobStore(JobStore):
    """The dispatcher's job store: reads and writes wait out storage faults instead of raising them."""

    def __init__(self, database: Database, *, delays_s: Sequence[float] = STORAGE_RETRY_DELAYS_S) -> None:
        super().__init__(database)
        self.gate = StorageGate(database.connection, delays_s=delays_s)

    async def get(self, job_id: int) -> Job | None:
        return await self.gate.run(
            lambda: super(PatientJobStore, self).get(job_id), what=f"reading job {job_id}"
        )

    async def _select(self, sql: str, parameters: tuple[Any, ...]) -> list[Job]:
        return await self.gate.run(
            lambda: super(PatientJobStore, self)._select(sql, parameters), what=_summary(sql)
        )

    async def _update(self, sql: str, parameters: tuple[Any, ...]) -> bool:
        return await self.gate.run(
            lambda: super(PatientJobStore, self)._update(sql, parameters), what=_summary(sql)
        )


def _summary(sql: str) -> str:
    """'UPDATE jobs SET status = 'running'…' → the first words, enough to tell the writes apart."""
    words = sql.split()
    return " ".join(words[:6]) + ("…" if len(words) > 6 else "")
