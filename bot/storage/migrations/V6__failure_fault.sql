-- Whose fault a failed job was: 'member' (their request could not be made, e.g. a clip the worker
-- could not read) or 'bot' (a crash, a deadline, a storage or delivery failure, an internal error).
-- A member's daily quota counts their own failures only. NULL for jobs that did not fail, and for
-- failures recorded before this column existed (counted, as they were then).
ALTER TABLE jobs ADD COLUMN failed_by TEXT CHECK (failed_by IS NULL OR failed_by IN ('member', 'bot'));
