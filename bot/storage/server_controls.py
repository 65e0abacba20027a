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
        # The allow-list, switches and quota, as read: every command reads them before its
        # acknowledgement and only this class writes them (each setter forgets its guild's once its
        # change is committed), so a burst of commands does not queue hundreds of reads on the
        # database's thread.
        self._channels: dict[int, list[int]] = {}
        self._switches: dict[tuple[int, Feature], bool] = {}
        self._quotas: dict[int, int | None] = {}
        # Changes committed per guild: a read that a change overtook (it began before the commit) is
        # returned but not kept, or the old value would outlive the change.
        self._changes: dict[int, int] = {}
        # After `load`: a guild that is in neither table has the defaults (no query needed), unless a
        # change made since has sent it back to the database.
        self._loaded = False
        self._changed_since_load: set[int] = set()

    async def load(self) -> None:
        """Read every server's allow-list, switches and quota at start-up, so that a burst of commands
        right after a restart is not a burst of queries (one per server) before its acknowledgements."""
        async with self._reader.execute(
            "SELECT guild_id, channel_id FROM guild_channels ORDER BY channel_id"
        ) as cursor:
            for guild_id, channel_id in await cursor.fetchall():
                self._channels.setdefault(guild_id, []).append(channel_id)
        columns = ", ".join(FEATURE_COLUMNS.values())
        async with self._reader.execute(
            f"SELECT guild_id, daily_quota, {columns} FROM guild_settings"
        ) as cursor:
            for guild_id, quota, *switches in await cursor.fetchall():
                self._quotas[guild_id] = quota
                for feature, enabled in zip(FEATURE_COLUMNS, switches, strict=True):
                    self._switches[guild_id, feature] = bool(enabled)
        self._loaded = True

    def _has_defaults(self, guild_id: int) -> bool:
        """Known, without a query, to have no row in either table."""
        return self._loaded and guild_id not in self._changed_since_load

    def _forget(self, guild_id: int) -> None:
        self._changes[guild_id] = self._changes.get(guild_id, 0) + 1
        self._changed_since_load.add(guild_id)
        self._channels.pop(guild_id, None)
        self._quotas.pop(guild_id, None)
        self._switches = {key: on for key, on in self._switches.items() if key[0] != guild_id}

    # -- channels ---------------------------------------------------------------------------------
    async def channels(self, guild_id: int) -> list[int]:
        """The channels the bot works in here; empty means everywhere."""
        if guild_id in self._channels:
            return list(self._channels[guild_id])
        if self._has_defaults(guild_id):
            return []
        seen = self._changes.get(guild_id, 0)
        async with self._reader.execute(
            "SELECT channel_id FROM guild_channels WHERE guild_id = ? ORDER BY channel_id", (guild_id,)
        ) as cursor:
            channels = [row[0] for row in await cursor.fetchall()]
        if self._changes.get(guild_id, 0) == seen:
            self._channels[guild_id] = channels
        return list(channels)

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
        if (guild_id, feature) in self._switches:
            return self._switches[guild_id, feature]
        if self._has_defaults(guild_id):
            return True
        seen = self._changes.get(guild_id, 0)
        async with self._reader.execute(
            f"SELECT {FEATURE_COLUMNS[feature]} FROM guild_settings WHERE guild_id = ?", (guild_id,)
        ) as cursor:
            row = await cursor.fetchone()
        enabled = True if row is None else bool(row[0])
        if self._changes.get(guild_id, 0) == seen:
            self._switches[guild_id, feature] = enabled
        return enabled

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
        if guild_id in self._quotas:
            return self._quotas[guild_id]
        if self._has_defaults(guild_id):
            return None
        seen = self._changes.get(guild_id, 0)
        async with self._reader.execute(
            "SELECT daily_quota FROM guild_settings WHERE guild_id = ?", (guild_id,)
        ) as cursor:
            row = await cursor.fetchone()
        quota: int | None = None if row is None else row[0]
        if self._changes.get(guild_id, 0) == seen:
            self._quotas[guild_id] = quota
        return quota

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
        # After the commit: a read on the reader until then saw (and kept) the old values.
        self._forget(guild_id)

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
