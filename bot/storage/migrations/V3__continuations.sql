-- Continuations of audio posted on Discord (a member's clip, a voice message, one of the bot's own
-- results). The request's input_audio is the stored copy of the whole source and its
-- continuation_start is where the tail given to the model begins; the result posted is the whole
-- piece: the full source followed by the new seconds. All NULL for other jobs.
ALTER TABLE jobs ADD COLUMN source_message_id INTEGER;  -- the message whose audio is continued
ALTER TABLE jobs ADD COLUMN source_channel_id INTEGER;
ALTER TABLE jobs ADD COLUMN source_seconds REAL;        -- length of the whole source at 32 kHz
ALTER TABLE jobs ADD COLUMN context_start_s REAL;       -- the context window: from this second
ALTER TABLE jobs ADD COLUMN context_s REAL;             -- ... for this many seconds (to the end)
