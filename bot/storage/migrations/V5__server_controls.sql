-- Server controls for members with Manage Server (/musicgen-settings), and a record of every change.

-- The channels the bot takes commands in; a server with no rows here lets it work everywhere.
CREATE TABLE guild_channels (
    guild_id   INTEGER NOT NULL,
    channel_id INTEGER NOT NULL,
    PRIMARY KEY (guild_id, channel_id)
);

-- Switches for features other cogs offer (continuing replies, jams), on unless turned off, and a
-- cap on the jobs one member may start per UTC day (NULL: no cap).
ALTER TABLE guild_settings ADD COLUMN replies_enabled INTEGER NOT NULL DEFAULT 1;
ALTER TABLE guild_settings ADD COLUMN jams_enabled INTEGER NOT NULL DEFAULT 1;
ALTER TABLE guild_settings ADD COLUMN daily_quota INTEGER CHECK (daily_quota IS NULL OR daily_quota >= 1);

-- Who changed which setting of which server, from what to what, and when.
CREATE TABLE settings_audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id   INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    setting    TEXT    NOT NULL,
    old_value  TEXT,
    new_value  TEXT,
    changed_at REAL    NOT NULL
);
CREATE INDEX settings_audit_by_guild ON settings_audit (guild_id, changed_at);
