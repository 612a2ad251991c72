-- On Citus (the `citus` extension is installed in this database): distribute
-- the seven workflow tables by their shard key, all colocated with
-- workflows, so one workflow's rows (its sharded name) live in one shard
-- group on one node. worker_heartbeats (fleet metadata, keyed by the lease
-- owner) and flows_schema_migrations stay plain tables on the coordinator.
-- On plain PostgreSQL this does nothing.
--
-- A table already distributed (by hand, before migrating) is left as it is.
-- Rows a table holds are copied into its shards and the copies left on the
-- coordinator emptied (flows/migrate.py runs the transaction in Citus'
-- sequential mode, which later DDL in it needs after such a copy). Running
-- this file again by hand (psql -f) distributes a database that was
-- migrated before it had the extension (docs/citus.md).
DO $$
DECLARE
    t record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    FOR t IN
        SELECT * FROM (VALUES (1, 'workflows', 'name'), (2, 'activities', 'workflow_name'),
            (3, 'history_events', 'workflow_name'), (4, 'timers', 'workflow_name'), (5, 'signals', 'workflow_name'),
            (6, 'task_queue', 'workflow_name'), (7, 'dead_letter_queue', 'workflow_name')) v(n, tab, col)
        WHERE NOT EXISTS (SELECT FROM pg_dist_partition p WHERE p.logicalrelid = to_regclass(v.tab))
        ORDER BY n
    LOOP
        IF t.tab = 'workflows' THEN
            PERFORM create_distributed_table(t.tab, t.col);
        ELSE
            PERFORM create_distributed_table(t.tab, t.col, colocate_with => 'workflows');
        END IF;
        PERFORM truncate_local_data_after_distributing_table(t.tab::regclass);
    END LOOP;
END $$;
