-- The worker fleet: one row per live worker process, refreshed by its
-- heartbeat, so that when a whole supervisor (or its machine) dies, another
-- supervisor finds the rows gone stale and releases those workers' leases.
--
-- Keyed by owner (the lease owner string, "host:pid"), not by a shard key:
-- a row describes a process, not a workflow, and one process serves many
-- shards. It is fleet metadata: a handful of rows, written by heartbeats and
-- read only by supervisors, never joined with the workflow tables. Under
-- Citus it stays a plain table on the coordinator (a reference table would
-- replicate every heartbeat to every node). The statements that act on the
-- sharded tables on its behalf still filter by the shard key: `shards` lists
-- the shard names the worker served, which is where its leases are.

CREATE TABLE worker_heartbeats (
    owner        text        NOT NULL PRIMARY KEY,  -- task_queue.lease_owner of its leases
    pid          integer     NOT NULL,
    host         text        NOT NULL,
    shard_group  text        NOT NULL,               -- the shard indices served, e.g. '0,2'
    shards       text[]      NOT NULL,               -- the shard names served (sharded workflow names)
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_beat    timestamptz NOT NULL DEFAULT now()
);
