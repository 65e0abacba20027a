"""The bot's SQLite database: one aiosqlite connection and versioned SQL migrations.

Schema changes live in `bot/storage/migrations/V<n>__<what>.sql`, applied in version order, each in its own
transaction together with its row in `schema_version`, so a failed migration leaves nothing behind.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_MIGRATION_NAME = re.compile(r"^V(?P<version>\d+)__(?P<name>\w+)\.sql$")


_Record = TypeVar("_Record")


def record_from_row(cls: type[_Record], row: aiosqlite.Row, **converted: Any) -> _Record:
    """A dataclass from a row: each field from the column of its name, unless given in `converted`."""
    names = [field.name for field in fields(cls) if field.name not in converted]  # type: ignore[arg-type]
    return cls(**{name: row[name] for name in names}, **converted)


class MigrationError(RuntimeError):
    """The migrations folder or a migration in it is broken."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


def discover_migrations(folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations in a folder, sorted by version; duplicate versions are an error."""
    migrations: dict[int, Migration] = {}
    for path in folder.glob("*.sql"):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named V<number>__<name>.sql")
        version = int(match["version"])
        if version in migrations:
            raise MigrationError(
                f"two migrations have version {version}: {migrations[version].path.name}, {path.name}"
            )
        migrations[version] = Migration(version, match["name"], path)
    return [migrations[v] for v in sorted(migrations)]


async def _open_reader(path: Path) -> aiosqlite.Connection:
    reader = await aiosqlite.connect(path)
    reader.row_factory = aiosqlite.Row
    await reader.execute("PRAGMA query_only=ON")
    return reader


class Database:
    """An open aiosqlite connection with the schema migrated; `connection` is used by the stores.

    `reader` is a second, read-only connection for the checks a command makes before Discord's 3 s
    acknowledgement (the channel allow-list, the switches, the quota): aiosqlite runs one query at a
    time per connection, so on their own connection they never wait behind a long query or a write
    of the dispatcher's (WAL lets a reader see every committed row while another connection writes).
    """

    def __init__(
        self, connection: aiosqlite.Connection, path: Path, reader: aiosqlite.Connection | None = None
    ) -> None:
        self.connection = connection
        self.path = path
        self.reader = reader or connection

    @classmethod
    async def open(
        cls, path: str | Path, *, migrations_dir: Path = MIGRATIONS_DIR, upgrade: bool = True
    ) -> Database:
        """Open (creating if needed) the database file and apply pending migrations."""
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        connection = await aiosqlite.connect(path)
        connection.row_factory = aiosqlite.Row
        # WAL keeps readers (/queue, /history) from blocking the dispatcher's writes.
        await connection.execute("PRAGMA journal_mode=WAL")
        await connection.execute("PRAGMA foreign_keys=ON")
        database = cls(connection, path)
        try:
            if upgrade:
                await database.upgrade(migrations_dir)
            if str(path) != ":memory:":
                database.reader = await _open_reader(path)
        except BaseException:
            await connection.close()
            raise
        return database

    async def close(self) -> None:
        if self.reader is not self.connection:
            await self.reader.close()
        await self.connection.close()

    async def applied_versions(self) -> list[int]:
        await self._ensure_version_table()
        async with self.connection.execute("SELECT version FROM schema_version ORDER BY version") as cursor:
            return [row[0] for row in await cursor.fetchall()]

    async def upgrade(self, migrations_dir: Path = MIGRATIONS_DIR) -> list[int]:
        """Apply the migrations not yet recorded in schema_version, in order; returns what was applied."""
        applied = set(await self.applied_versions())
        newly_applied: list[int] = []
        for migration in discover_migrations(migrations_dir):
            if migration.version in applied:
                continue
            sql = migration.path.read_text(encoding="utf-8")
            record = (
                "INSERT INTO schema_version (version, name, applied_at) "
                f"VALUES ({migration.version}, '{migration.name}', {time.time()!r});"
            )
            try:
                # executescript commits first, then runs the script as written: the explicit
                # transaction makes the migration and its schema_version row one unit.
                await self.connection.executescript(f"BEGIN;\n{sql}\n;{record}\nCOMMIT;")
            except Exception as error:
                if self.connection.in_transaction:
                    await self.connection.rollback()
                raise MigrationError(f"migration {migration.path.name} failed: {error}") from error
            logger.info("applied database migration %s", migration.path.name)
            newly_applied.append(migration.version)
        return newly_applied

    async def _ensure_version_table(self) -> None:
        await self.connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        await self.connection.commit()

    # -- small key/value state (e.g. the hash of the last synced command payload) ------------------
    async def get_state(self, key: str) -> str | None:
        async with self.connection.execute("SELECT value FROM bot_state WHERE key = ?", (key,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def set_state(self, key: str, value: str) -> None:
        await self.connection.execute(
            "INSERT INTO bot_state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
        await self.connection.commit()
