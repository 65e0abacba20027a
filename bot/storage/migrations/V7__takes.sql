-- Takes: several variations of one request (`/generate takes:N`), each its own job row with its own
-- seed, made in one batch and posted together in one message. take_group is the first take's job id
-- (the takes' ids follow it), take_number this take's place (1..take_count). All NULL for a job made
-- alone, as every job before this migration was.
ALTER TABLE jobs ADD COLUMN take_group INTEGER REFERENCES jobs (id);
ALTER TABLE jobs ADD COLUMN take_number INTEGER CHECK (take_number IS NULL OR take_number >= 1);
ALTER TABLE jobs ADD COLUMN take_count INTEGER CHECK (take_count IS NULL OR take_count >= 2);

CREATE INDEX jobs_by_take_group ON jobs (take_group);
