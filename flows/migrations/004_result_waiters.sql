-- How many Engine.result() callers are waiting on a workflow. Its end is
-- announced (NOTIFY flows-done:<shard>) only when someone waits: every
-- NOTIFY costs each listening backend of the database a transaction.
ALTER TABLE workflows ADD COLUMN result_waiters integer NOT NULL DEFAULT 0;
