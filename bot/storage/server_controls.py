"""What a server's admins decide about the bot: where it works, which features are on, how much
one member may ask for per day; every change recorded in `settings_audit`.

Other cogs ask `ServerControls.feature_enabled(guild_id, "replies" | "jams")` before offering a
feature; `bot.admission` reads the allow-list, the switches and the quota before taking a job.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Literal

import aiosqlite

from bot.storage.database import Database

Feature = Literal["replies", "jams"]
FEATURE_COLUMNS: dict[Feature, str] = {"replies": "replies_enabled", "jams": "jams_enabled"}


def start_of_utc_day(now: float | None = None) -> float:
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


class ServerControls:
    """Reads and writes guild_channels, the switches and quota in guild_settings, and settings_audit."""

    def __init__(self, database: Database) -> None:
        self._db: aiosqlite.Connection = database.connection
        # Admission reads these before acknowledging a command: on the reader, they never wait
        # behind another query (see `Database.reader`).
        self._reader: aiosqlite.Connection = database.reader
        # Every server's allow-list, switches and quota, read at start-up (`load`) and again for a
        # server once a change to it is committed: every command reads them before its
        # acknowledgement, so none of those reads waits on the database. Only this class writes
        # them; a server absent here has the defaults.
        self._channels: dict[int, list[int]] = {}
        self._switches: dict[tuple[int, Feature], bool] = {}
        self._quotas: dict[int, int | None] = {}

    async def load(self) -> None:
        """Read every server's allow-list, switches and quota (at start-up, before any lookup)."""
        await self._read()

    async def _read(self, guild_id: int | None = None) -> None:
        """Read the allow-list, switches and quota of one server, or of every server (None)."""
        where, args = ("", ()) if guild_id is None else (" WHERE guild_id = ?", (guild_id,))
        channels: dict[int, list[int]] = {}
        async with self._reader.execute(
            f"SELECT guild_id, channel_id FROM guild_channels{where} ORDER BY channel_id", args
        ) as cursor:
            for guild, channel_id in await cursor.fetchall():
                channels.setdefault(guild, []).append(channel_id)
        columns = ", ".join(FEATURE_COLUMNS.values())
        async with self._reader.execute(
            f"SELECT guild_id, daily_quota, {columns} FROM guild_settings{where}", args
        ) as cursor:
            settings = await cursor.fetchall()
        if guild_id is not None:  # what the server no longer has must not outlive the change
            self._channels.pop(guild_id, None)
            self._quotas.pop(guild_id, None)
            for feature in FEATURE_COLUMNS:
                self._switches.pop((guild_id, feature), None)
        self._channels.update(channels)
        for guild, quota, *switches in settings:
            self._quotas[guild] = quota
            for feature, enabled in zip(FEATURE_COLUMNS, switches, strict=True):
                self._switches[guild, feature] = bool(enabled)

    # -- channels ---------------------------------------------------------------------------------
    async def channels(self, guild_id: int) -> list[int]:
        """The channels the bot works in here; empty means everywhere."""
        return list(self._channels.get(guild_id, ()))

    async def set_channel(self, guild_id: int, channel_id: int, allowed: bool, *, by: int) -> list[int]:
        before = await self.channels(guild_id)
        if allowed:
            await self._db.execute(
                "INSERT OR IGNORE INTO guild_channels (guild_id, channel_id) VALUES (?, ?)",
                (guild_id, channel_id),
            )
        else:
            await self._db.execute(
                "DELETE FROM guild_channels WHERE guild_id = ? AND channel_id = ?", (guild_id, channel_id)
            )
        after = sorted({*before, channel_id} if allowed else set(before) - {channel_id})
        await self.record(guild_id, by, "channels", _channel_list(before), _channel_list(after))
        return after

    # -- switches and quota -------------------------------------------------------------------------
    async def feature_enabled(self, guild_id: int, feature: Feature) -> bool:
        """Whether the server's admins leave `feature` on (it is, unless they turned it off)."""
        return self._switches.get((guild_id, feature), True)

    async def set_feature(self, guild_id: int, feature: Feature, enabled: bool, *, by: int) -> None:
        column = FEATURE_COLUMNS[feature]
        before = await self.feature_enabled(guild_id, feature)
        await self._db.execute(
            f"INSERT INTO guild_settings (guild_id, {column}) VALUES (?, ?) "
            f"ON CONFLICT(guild_id) DO UPDATE SET {column} = excluded.{column}",
            (guild_id, int(enabled)),
        )
        await self.record(guild_id, by, feature, _switch(before), _switch(enabled))

    async def daily_quota(self, guild_id: int) -> int | None:
        return self._quotas.get(guild_id)

    async def set_daily_quota(self, guild_id: int, quota: int | None, *, by: int) -> None:
        before = await self.daily_quota(guild_id)
        await self._db.execute(
            "INSERT INTO guild_settings (guild_id, daily_quota) VALUES (?, ?) "
            "ON CONFLICT(guild_id) DO UPDATE SET daily_quota = excluded.daily_quota",
            (guild_id, quota),
        )
        await self.record(guild_id, by, "daily_quota", _optional(before), _optional(quota))

    async def jobs_today(self, guild_id: int, user_id: int) -> int:
        """Jobs the member started here since midnight UTC, towards their daily quota.

        Cancelled jobs do not count, nor jobs the bot failed through no fault of the member (a crash,
        a deadline, storage or delivery): those they may run again. Their own failures count.
        """
        async with self._reader.execute(
            "SELECT COUNT(*) FROM jobs WHERE guild_id = ? AND user_id = ? AND created_at >= ? "
            "AND status != 'cancelled' AND COALESCE(failed_by, 'member') != 'bot'",
            (guild_id, user_id, start_of_utc_day()),
        ) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    # -- audit ----------------------------------------------------------------------------------------
    async def record(
        self, guild_id: int, user_id: int, setting: str, old: str | None, new: str | None
    ) -> None:
        """Record a change: the ones above, and those made elsewhere (the queue cap, the default model)."""
        await self._db.execute(
            "INSERT INTO settings_audit (guild_id, user_id, setting, old_value, new_value, changed_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (guild_id, user_id, setting, old, new, time.time()),
        )
        await self._db.commit()
        await self._read(guild_id)  # after the commit, which the reader sees from now on

    async def recent_changes(self, guild_id: int, limit: int = 5) -> list[aiosqlite.Row]:
        async with self._db.execute(
            "SELECT * FROM settings_audit WHERE guild_id = ? ORDER BY id DESC LIMIT ?", (guild_id, limit)
        ) as cursor:
            return list(await cursor.fetchall())


class BotHealth:
    """The numbers /musicgen-status shows, read from the jobs table."""

    def __init__(self, database: Database) -> None:
        self._db: aiosqlite.Connection = database.connection

    async def pending_by_guild(self) -> dict[int, tuple[int, int]]:
        """guild id -> (queued, running)."""
        counts: dict[int, tuple[int, int]] = {}
        async with self._db.execute(
            "SELECT guild_id, SUM(status = 'queued'), SUM(status = 'running') FROM jobs "
            "WHERE status IN ('queued', 'running') GROUP BY guild_id"
        ) as cursor:
            for guild_id, queued, running in await cursor.fetchall():
                counts[guild_id] = (int(queued), int(running))
        return counts

    async def models_run_since(self, since: float) -> list[str]:
        async with self._db.execute(
            "SELECT DISTINCT model_version FROM jobs WHERE status = 'done' AND finished_at >= ? ORDER BY model_version",
            (since,),
        ) as cursor:
            return [row[0] for row in await cursor.fetchall()]

    async def last_failure(self, guild_id: int) -> aiosqlite.Row | None:
        async with self._db.execute(
            "SELECT id, error, finished_at FROM jobs WHERE guild_id = ? AND status = 'failed' "
            "ORDER BY finished_at DESC LIMIT 1",
            (guild_id,),
        ) as cursor:
            return await cursor.fetchone()


def _channel_list(channel_ids: list[int]) -> str:
    return ",".join(str(channel_id) for channel_id in channel_ids) or "everywhere"


def _switch(enabled: bool) -> str:
    return "on" if enabled else "off"


def _optional(value: int | None) -> str:
    return "none" if value is None else str(value)
