-- A claim says "more" when another task is due in any of the worker's
-- shards, not only in the claimed task's shard.
--
-- Timers falling due one after another across a worker's shards (500
-- started at once: about one every 2 ms a worker, one every 6 ms a shard)
-- found no other due task in their own shard, so each worker fired them one
-- at a time on its loop thread, looking up the next due time in between,
-- and fell behind by 30-40 ms before its replay threads joined in. Looking
-- at every shard costs up to one index probe a shard.

CREATE OR REPLACE FUNCTION flows_claim_workflow_task(p_shards text[], p_fired_event_id uuid, p_fired_event_type text)
RETURNS text LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    c record;
    w record;
    busy uuid[] := '{}';
    fired_seq integer;
    more boolean;
BEGIN
    LOOP
        SELECT x.* INTO c FROM unnest(p_shards) AS s(shard) CROSS JOIN LATERAL (
            SELECT t.workflow_name, t.id, t.task_type, t.target_id, t.workflow_id
            FROM task_queue t
            WHERE t.workflow_name = s.shard AND t.task_type IN ('workflow', 'timer')
            AND t.visibility_timeout <= now() AND t.id <> ALL (busy)
            ORDER BY t.visibility_timeout LIMIT 1
            FOR UPDATE SKIP LOCKED) x
        LIMIT 1;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        SELECT tenant_id, status INTO w FROM workflows
        WHERE name = c.workflow_name AND id = c.workflow_id FOR UPDATE SKIP LOCKED;
        EXIT WHEN FOUND;
        busy := busy || c.id;
        IF cardinality(busy) >= 8 THEN
            RETURN NULL;
        END IF;
    END LOOP;
    DELETE FROM task_queue WHERE workflow_name = c.workflow_name AND id = c.id;
    IF w.status = 'running' AND c.task_type = 'timer' AND c.target_id IS NOT NULL THEN
        UPDATE timers SET fired = true, fired_at = now()
        WHERE workflow_name = c.workflow_name AND id = c.target_id AND NOT fired
        RETURNING sequence_num INTO fired_seq;
        IF fired_seq IS NOT NULL THEN
            INSERT INTO history_events
                (workflow_name, id, workflow_id, tenant_id, sequence_num, event_type, event_data)
            VALUES (c.workflow_name, p_fired_event_id, c.workflow_id, w.tenant_id, fired_seq, p_fired_event_type,
                    jsonb_build_object('timer_id', c.target_id));
        END IF;
    END IF;
    -- Whether another task is due in any of the caller's shards (held by
    -- others or not; one index probe a shard, up to the first found): the
    -- caller claims again, or starts another replay thread, only then.
    more := EXISTS (SELECT FROM unnest(p_shards) AS s(shard) CROSS JOIN LATERAL (
        SELECT FROM task_queue t
        WHERE t.workflow_name = s.shard AND t.task_type IN ('workflow', 'timer')
        AND t.visibility_timeout <= now() LIMIT 1) due);
    RETURN flows_replay_state(c.workflow_name, c.workflow_id,
                              jsonb_build_array(c.id, c.task_type, c.target_id, more));
END $$;
