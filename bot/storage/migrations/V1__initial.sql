-- Jobs are rows before they are queued: every input of the request is a column (queryable), the
-- whole request is also kept as JSON (what the worker receives, replayed by /replay).
CREATE TABLE jobs (
    id                       INTEGER PRIMARY KEY AUTOINCREMENT,
    status                   TEXT    NOT NULL DEFAULT 'queued'
                             CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    guild_id                 INTEGER NOT NULL,
    channel_id               INTEGER NOT NULL,
    user_id                  INTEGER NOT NULL,
    -- The interaction token is a short-lived credential: it is kept in memory only.
    application_id           INTEGER,
    interaction_id           INTEGER,
    -- The public "queued / progress" message (the deferred interaction response).
    status_message_id        INTEGER,
    -- The message that carries the audio.
    result_message_id        INTEGER,
    replay_of                INTEGER REFERENCES jobs (id),

    model_version            TEXT    NOT NULL,
    prompt                   TEXT,
    input_audio              TEXT,     -- stored copy of the upload, in the data dir (kept for /replay)
    input_audio_filename     TEXT,     -- the name it had on Discord
    duration                 INTEGER NOT NULL,
    continuation             INTEGER NOT NULL,
    continuation_start       REAL    NOT NULL,
    continuation_end         REAL,
    normalization_strategy   TEXT    NOT NULL,
    top_k                    INTEGER NOT NULL,
    top_p                    REAL    NOT NULL,
    temperature              REAL    NOT NULL,
    classifier_free_guidance REAL    NOT NULL,
    output_format            TEXT    NOT NULL,
    -- The seed actually used (chosen at submission when the member asked for a random one).
    seed                     INTEGER NOT NULL,
    seed_was_random          INTEGER NOT NULL,
    request_json             TEXT    NOT NULL,

    attempts                 INTEGER NOT NULL DEFAULT 0,
    error                    TEXT,
    output_path              TEXT,
    posted_format            TEXT,     -- wav/mp3 as posted (mp3 when a wav was over the upload limit)
    created_at               REAL    NOT NULL,
    started_at               REAL,
    finished_at              REAL
);

CREATE INDEX jobs_by_status ON jobs (status, created_at);
CREATE INDEX jobs_by_member ON jobs (guild_id, user_id, created_at);

-- Admin overrides per guild (NULL = the config's default).
CREATE TABLE guild_settings (
    guild_id    INTEGER PRIMARY KEY,
    max_pending INTEGER CHECK (max_pending IS NULL OR max_pending >= 1)
);

-- Small key/value state, e.g. the hash of the last synced command payload.
CREATE TABLE bot_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
