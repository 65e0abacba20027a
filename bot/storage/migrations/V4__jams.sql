-- Jam sessions: members grow one piece together in a thread, one turn at a time.
CREATE TABLE jams (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id          INTEGER NOT NULL,
    channel_id        INTEGER NOT NULL,          -- the channel the thread hangs off
    thread_id         INTEGER NOT NULL UNIQUE,   -- everything of the jam is posted here
    starter_id        INTEGER NOT NULL,
    prompt            TEXT    NOT NULL,
    model_version     TEXT    NOT NULL,
    turn_seconds      INTEGER NOT NULL CHECK (turn_seconds >= 1),
    max_turns         INTEGER NOT NULL CHECK (max_turns >= 1),
    status            TEXT    NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'ended')),
    end_reason        TEXT,
    created_at        REAL    NOT NULL,
    ended_at          REAL
);

CREATE INDEX jams_by_guild ON jams (guild_id, status);

-- Turns in the order they were asked for. A turn becomes a job (job_id) only when the turns before
-- it are finished, since it continues the piece they leave; until then it is 'waiting'.
CREATE TABLE jam_turns (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    jam_id            INTEGER NOT NULL REFERENCES jams (id),
    user_id           INTEGER NOT NULL,
    user_name         TEXT    NOT NULL,           -- for the picture's labels (mentions use user_id)
    prompt            TEXT,
    seconds           INTEGER NOT NULL CHECK (seconds >= 1),
    status            TEXT    NOT NULL DEFAULT 'waiting'
                      CHECK (status IN ('waiting', 'started', 'done', 'failed', 'dropped')),
    job_id            INTEGER UNIQUE REFERENCES jobs (id),
    status_message_id INTEGER,                    -- "your turn is #2 in line", then its progress
    asked_at          REAL    NOT NULL,
    -- Once done: its number in the piece (1 = the opening), where its part lies, the whole piece after it.
    number            INTEGER,
    start_s           REAL,
    end_s             REAL,
    piece_path        TEXT
);

CREATE INDEX jam_turns_by_jam ON jam_turns (jam_id, status, id);

-- Who added what: every member with a finished turn, their turns and seconds.
CREATE VIEW jam_contributors AS
SELECT jam_id, user_id, MIN(user_name) AS user_name, COUNT(*) AS turns, SUM(end_s - start_s) AS seconds,
       MIN(number) AS first_turn
FROM jam_turns
WHERE status = 'done'
GROUP BY jam_id, user_id;
