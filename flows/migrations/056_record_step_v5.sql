-- A step function's changed contract under a new name, the old name back to
-- what its callers rely on, and the functions no supported release calls
-- dropped.
--
-- 053 changed what flows_record_step_v4 expects under the same name: the
-- attempt that ended (p->'activity') must carry its step (seq), and its
-- activity row is found by (workflow_name, workflow_id, sequence_num, id).
-- A worker from before 053, still running after `flows migrate` as a
-- rolling deploy has it, sends no seq: its steps updated no activity row
-- and raised nothing. Hence:
--   flows_record_step_v5  the contract 053 gave v4 (activity.seq required),
--                         which the code calls from this release on;
--   flows_record_step_v4  both contracts: with activity.seq (the previous
--                         release sends it) as 053 made it; without it, the
--                         activity found by primary key as 051 made it. A
--                         later migration drops it once no supported release
--                         calls it (docs/upgrading.md).

-- Write a replay's decisions for a workflow locked by this transaction; the
-- fields of p are listed in flows/schema/current.sql. The ended attempt's
-- activity is found by both of its unique keys (see 053).
CREATE FUNCTION flows_record_step_v5(p jsonb) RETURNS text LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := now();
    v_shard text := p->>'shard';
    v_wid uuid := (p->>'workflow_id')::uuid;
    v_tenant uuid := (p->>'tenant_id')::uuid;
    v_version integer := (p->>'version')::integer;
    v_status text := p->>'status';
    v_activity_id uuid := (p->'activity'->>'id')::uuid;  -- a plain value, so the update goes by primary key
    v_event integer := flows_next_event(v_shard, v_wid);
    v_base integer;
    v_results jsonb;
    v_seq integer;
    v_waiters integer;
    v_input jsonb;
    r jsonb;
BEGIN
    IF v_activity_id IS NOT NULL THEN
        UPDATE activities SET status = p->'activity'->>'status', output = p->'activity'->'output',
            error = p->'activity'->>'error', attempt = (p->'activity'->>'attempt')::integer,
            heartbeat_details = coalesce(p->'activity'->'details', heartbeat_details),
            next_retry_at = NULL, updated_at = v_now, completed_at = v_now
        WHERE workflow_name = v_shard AND workflow_id = v_wid AND sequence_num = (p->'activity'->>'seq')::integer
        AND id = v_activity_id;
    END IF;
    r := p->'retry';
    IF r IS NOT NULL THEN
        v_activity_id := (r->>'id')::uuid;
        UPDATE activities SET status = 'scheduled', attempt = (r->>'attempt')::integer, error = r->>'error',
            heartbeat_details = coalesce(r->'details', heartbeat_details),
            next_retry_at = v_now + (r->>'delay')::double precision * interval '1 second', updated_at = v_now
        WHERE workflow_name = v_shard AND workflow_id = v_wid AND sequence_num = (r->'event'->>'seq')::integer
        AND id = v_activity_id;
        INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, target_id, activity_name,
                                lease_seconds, visibility_timeout)
        VALUES (v_shard, (r->>'task_id')::uuid, v_wid, v_tenant, 'activity', v_activity_id, r->>'name',
                (r->>'lease_seconds')::double precision,
                v_now + (r->>'delay')::double precision * interval '1 second');
        INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step, event_type,
                                    event_data)
        VALUES (v_shard, (r->'event'->>'id')::uuid, v_wid, v_tenant, v_event, (r->'event'->>'seq')::integer,
                r->'event'->>'kind', r->'event'->'data');
        v_event := v_event + 1;
    END IF;
    FOR r IN SELECT * FROM jsonb_array_elements(p->'activities') LOOP
        INSERT INTO activities (workflow_name, id, workflow_id, tenant_id, name, sequence_num, input, max_attempts,
                                status, started_at)
        VALUES (v_shard, (r->>'id')::uuid, v_wid, v_tenant, r->>'name', (r->>'seq')::integer, r->'input',
                (r->>'max_attempts')::integer,
                CASE WHEN r->>'lease_owner' IS NULL THEN 'scheduled' ELSE 'running' END,
                CASE WHEN r->>'lease_owner' IS NULL THEN NULL ELSE v_now END);
        INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, target_id, activity_name,
                                lease_seconds, lease_owner, deliveries, visibility_timeout)
        VALUES (v_shard, (r->>'task_id')::uuid, v_wid, v_tenant, 'activity', (r->>'id')::uuid, r->>'name',
                (r->>'lease_seconds')::double precision, r->>'lease_owner',
                CASE WHEN r->>'lease_owner' IS NULL THEN 0 ELSE 1 END,
                CASE WHEN r->>'lease_owner' IS NULL THEN v_now
                     ELSE v_now + (r->>'lease_seconds')::double precision * interval '1 second' END);
    END LOOP;
    FOR r IN SELECT * FROM jsonb_array_elements(p->'signals') LOOP
        UPDATE signals SET consumed = true, consumed_seq = (r->>'seq')::integer, consumed_at = v_now
        WHERE workflow_name = v_shard AND id = (r->>'id')::uuid;
    END LOOP;
    FOR r IN SELECT * FROM jsonb_array_elements(p->'timers') LOOP
        INSERT INTO timers (workflow_name, id, workflow_id, tenant_id, sequence_num, fire_at)
        VALUES (v_shard, (r->>'id')::uuid, v_wid, v_tenant, (r->>'seq')::integer, (r->>'fire_at')::timestamptz);
        INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, target_id, workflow_version,
                                visibility_timeout)
        VALUES (v_shard, (r->>'task_id')::uuid, v_wid, v_tenant, 'timer', (r->>'id')::uuid, v_version,
                (r->>'fire_at')::timestamptz);
    END LOOP;
    FOR r IN SELECT * FROM jsonb_array_elements(p->'cancel_timers') LOOP
        DELETE FROM task_queue WHERE workflow_name = v_shard AND workflow_id = v_wid AND task_type = 'timer'
        AND target_id = (r #>> '{}')::uuid;
        DELETE FROM timers WHERE workflow_name = v_shard AND id = (r #>> '{}')::uuid AND NOT fired;
    END LOOP;
    FOR r IN SELECT * FROM jsonb_array_elements(p->'children') LOOP
        INSERT INTO children (workflow_name, id, workflow_id, tenant_id, sequence_num, child_name, child_version,
                              input, parent_close, created_at, updated_at)
        VALUES (v_shard, (r->>'id')::uuid, v_wid, v_tenant, (r->>'seq')::integer, r->>'name',
                (r->>'version')::integer, r->'input', r->>'parent_close', v_now, v_now);
        INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, target_id, workflow_version,
                                visibility_timeout)
        VALUES (v_shard, (r->>'id')::uuid, v_wid, v_tenant, 'child', (r->>'id')::uuid, v_version, v_now);
    END LOOP;
    FOR r IN SELECT * FROM jsonb_array_elements(p->'events') LOOP
        INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step, event_type,
                                    event_data)
        VALUES (v_shard, (r->>'id')::uuid, v_wid, v_tenant, v_event, (r->>'seq')::integer, r->>'kind', r->'data');
        v_event := v_event + 1;
    END LOOP;
    IF v_status = 'running' THEN
        UPDATE workflows SET sequence_num = GREATEST(sequence_num, (p->>'seq')::integer),
            waiting_for = p->>'waiting_for', updated_at = v_now, last_event = v_event - 1
        WHERE name = v_shard AND id = v_wid;
    ELSIF v_status = 'continued' THEN
        DELETE FROM task_queue WHERE workflow_name = v_shard AND workflow_id = v_wid
        AND task_type NOT IN ('workflow', 'child', 'timeout');
        UPDATE activities SET status = 'cancelled', updated_at = v_now
        WHERE workflow_name = v_shard AND workflow_id = v_wid AND status IN ('scheduled', 'running');
        INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step, event_type,
                                    event_data)
        VALUES (v_shard, (p->'end_event'->>'id')::uuid, v_wid, v_tenant, v_event, 0, p->'end_event'->>'kind',
                p->'end_event'->'data');
        UPDATE workflows SET input = p->'next_input', run = run + 1,
            sequence_num = GREATEST(sequence_num, (p->>'seq')::integer),
            run_step_base = GREATEST(sequence_num, (p->>'seq')::integer), run_first_event = v_event + 1,
            waiting_for = NULL, updated_at = v_now, last_event = v_event + 1
        WHERE name = v_shard AND id = v_wid;
        INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step, event_type,
                                    event_data)
        VALUES (v_shard, (p->'start_event'->>'id')::uuid, v_wid, v_tenant, v_event + 1, 0,
                p->'start_event'->>'kind', p->'start_event'->'data');
        v_event := v_event + 2;
        INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, workflow_version)
        VALUES (v_shard, (p->>'next_task_id')::uuid, v_wid, v_tenant, 'workflow', v_version)
        ON CONFLICT (workflow_name, workflow_id) WHERE task_type = 'workflow' DO NOTHING;
    ELSIF v_status IS NULL THEN  -- an attempt to retry: no replay, but the row shows the step
        UPDATE workflows SET updated_at = v_now, last_event = v_event - 1 WHERE name = v_shard AND id = v_wid;
    ELSE
        SELECT run_step_base INTO v_base FROM workflows WHERE name = v_shard AND id = v_wid;
        SELECT coalesce(jsonb_object_agg(sequence_num::text, output), '{}') INTO v_results FROM activities
        WHERE workflow_name = v_shard AND workflow_id = v_wid AND status = 'completed' AND sequence_num > v_base;
        UPDATE workflows SET status = v_status, output = p->'output', error = p->>'error', waiting_for = NULL,
            sequence_num = GREATEST(sequence_num, (p->>'seq')::integer) + 1, updated_at = v_now,
            completed_at = v_now, activity_results = v_results, last_event = v_event
        WHERE name = v_shard AND id = v_wid
        RETURNING sequence_num, result_waiters INTO v_seq, v_waiters;
        IF v_status = 'failed' THEN
            SELECT input INTO v_input FROM workflows WHERE name = v_shard AND id = v_wid;
            INSERT INTO dead_letter_queue (workflow_name, id, workflow_id, tenant_id, error, input, sequence_num)
            VALUES (v_shard, (p->>'dlq_id')::uuid, v_wid, v_tenant, p->>'error', v_input, v_seq);
        END IF;
        DELETE FROM task_queue WHERE workflow_name = v_shard AND workflow_id = v_wid
        AND task_type NOT IN ('workflow', 'child');
        UPDATE activities SET status = 'cancelled', updated_at = v_now
        WHERE workflow_name = v_shard AND workflow_id = v_wid AND status IN ('scheduled', 'running');
        INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step, event_type,
                                    event_data)
        VALUES (v_shard, (p->'end_event'->>'id')::uuid, v_wid, v_tenant, v_event, 0, p->'end_event'->>'kind',
                p->'end_event'->'data');
        v_event := v_event + 1;
        PERFORM flows_ended(v_shard, v_wid, v_tenant, v_version, v_now, p->>'channel');
        IF v_waiters > 0 THEN
            PERFORM pg_notify(p->>'done_channel', '');
        END IF;
    END IF;
    IF p->>'wake_channel' IS NOT NULL THEN
        PERFORM pg_notify(p->>'wake_channel', coalesce(p->>'wake_work', ''));
    END IF;
    RETURN json_build_object('updated_at', v_now, 'last_event', v_event - 1)::text;
END $$;

-- The previous release's step function, which callers from before 053 also
-- reach: as flows_record_step_v5, and an ended attempt sent without its
-- step (seq) is found by primary key.
CREATE OR REPLACE FUNCTION flows_record_step_v4(p jsonb) RETURNS text LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := now();
    v_shard text := p->>'shard';
    v_wid uuid := (p->>'workflow_id')::uuid;
    v_tenant uuid := (p->>'tenant_id')::uuid;
    v_version integer := (p->>'version')::integer;
    v_status text := p->>'status';
    v_activity_id uuid := (p->'activity'->>'id')::uuid;  -- a plain value, so the update goes by primary key
    v_event integer := flows_next_event(v_shard, v_wid);
    v_base integer;
    v_results jsonb;
    v_seq integer;
    v_waiters integer;
    v_input jsonb;
    r jsonb;
BEGIN
    IF v_activity_id IS NOT NULL AND p->'activity' ? 'seq' THEN  -- the previous release: both unique keys
        UPDATE activities SET status = p->'activity'->>'status', output = p->'activity'->'output',
            error = p->'activity'->>'error', attempt = (p->'activity'->>'attempt')::integer,
            heartbeat_details = coalesce(p->'activity'->'details', heartbeat_details),
            next_retry_at = NULL, updated_at = v_now, completed_at = v_now
        WHERE workflow_name = v_shard AND workflow_id = v_wid AND sequence_num = (p->'activity'->>'seq')::integer
        AND id = v_activity_id;
    ELSIF v_activity_id IS NOT NULL THEN  -- callers from before 053 send no seq
        UPDATE activities SET status = p->'activity'->>'status', output = p->'activity'->'output',
            error = p->'activity'->>'error', attempt = (p->'activity'->>'attempt')::integer,
            heartbeat_details = coalesce(p->'activity'->'details', heartbeat_details),
            next_retry_at = NULL, updated_at = v_now, completed_at = v_now
        WHERE workflow_name = v_shard AND id = v_activity_id AND workflow_id = v_wid;
    END IF;
    r := p->'retry';
    IF r IS NOT NULL THEN
        v_activity_id := (r->>'id')::uuid;
        UPDATE activities SET status = 'scheduled', attempt = (r->>'attempt')::integer, error = r->>'error',
            heartbeat_details = coalesce(r->'details', heartbeat_details),
            next_retry_at = v_now + (r->>'delay')::double precision * interval '1 second', updated_at = v_now
        WHERE workflow_name = v_shard AND workflow_id = v_wid AND sequence_num = (r->'event'->>'seq')::integer
        AND id = v_activity_id;
        INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, target_id, activity_name,
                                lease_seconds, visibility_timeout)
        VALUES (v_shard, (r->>'task_id')::uuid, v_wid, v_tenant, 'activity', v_activity_id, r->>'name',
                (r->>'lease_seconds')::double precision,
                v_now + (r->>'delay')::double precision * interval '1 second');
        INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step, event_type,
                                    event_data)
        VALUES (v_shard, (r->'event'->>'id')::uuid, v_wid, v_tenant, v_event, (r->'event'->>'seq')::integer,
                r->'event'->>'kind', r->'event'->'data');
        v_event := v_event + 1;
    END IF;
    FOR r IN SELECT * FROM jsonb_array_elements(p->'activities') LOOP
        INSERT INTO activities (workflow_name, id, workflow_id, tenant_id, name, sequence_num, input, max_attempts,
                                status, started_at)
        VALUES (v_shard, (r->>'id')::uuid, v_wid, v_tenant, r->>'name', (r->>'seq')::integer, r->'input',
                (r->>'max_attempts')::integer,
                CASE WHEN r->>'lease_owner' IS NULL THEN 'scheduled' ELSE 'running' END,
                CASE WHEN r->>'lease_owner' IS NULL THEN NULL ELSE v_now END);
        INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, target_id, activity_name,
                                lease_seconds, lease_owner, deliveries, visibility_timeout)
        VALUES (v_shard, (r->>'task_id')::uuid, v_wid, v_tenant, 'activity', (r->>'id')::uuid, r->>'name',
                (r->>'lease_seconds')::double precision, r->>'lease_owner',
                CASE WHEN r->>'lease_owner' IS NULL THEN 0 ELSE 1 END,
                CASE WHEN r->>'lease_owner' IS NULL THEN v_now
                     ELSE v_now + (r->>'lease_seconds')::double precision * interval '1 second' END);
    END LOOP;
    FOR r IN SELECT * FROM jsonb_array_elements(p->'signals') LOOP
        UPDATE signals SET consumed = true, consumed_seq = (r->>'seq')::integer, consumed_at = v_now
        WHERE workflow_name = v_shard AND id = (r->>'id')::uuid;
    END LOOP;
    FOR r IN SELECT * FROM jsonb_array_elements(p->'timers') LOOP
        INSERT INTO timers (workflow_name, id, workflow_id, tenant_id, sequence_num, fire_at)
        VALUES (v_shard, (r->>'id')::uuid, v_wid, v_tenant, (r->>'seq')::integer, (r->>'fire_at')::timestamptz);
        INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, target_id, workflow_version,
                                visibility_timeout)
        VALUES (v_shard, (r->>'task_id')::uuid, v_wid, v_tenant, 'timer', (r->>'id')::uuid, v_version,
                (r->>'fire_at')::timestamptz);
    END LOOP;
    FOR r IN SELECT * FROM jsonb_array_elements(p->'cancel_timers') LOOP
        DELETE FROM task_queue WHERE workflow_name = v_shard AND workflow_id = v_wid AND task_type = 'timer'
        AND target_id = (r #>> '{}')::uuid;
        DELETE FROM timers WHERE workflow_name = v_shard AND id = (r #>> '{}')::uuid AND NOT fired;
    END LOOP;
    FOR r IN SELECT * FROM jsonb_array_elements(p->'children') LOOP
        INSERT INTO children (workflow_name, id, workflow_id, tenant_id, sequence_num, child_name, child_version,
                              input, parent_close, created_at, updated_at)
        VALUES (v_shard, (r->>'id')::uuid, v_wid, v_tenant, (r->>'seq')::integer, r->>'name',
                (r->>'version')::integer, r->'input', r->>'parent_close', v_now, v_now);
        INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, target_id, workflow_version,
                                visibility_timeout)
        VALUES (v_shard, (r->>'id')::uuid, v_wid, v_tenant, 'child', (r->>'id')::uuid, v_version, v_now);
    END LOOP;
    FOR r IN SELECT * FROM jsonb_array_elements(p->'events') LOOP
        INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step, event_type,
                                    event_data)
        VALUES (v_shard, (r->>'id')::uuid, v_wid, v_tenant, v_event, (r->>'seq')::integer, r->>'kind', r->'data');
        v_event := v_event + 1;
    END LOOP;
    IF v_status = 'running' THEN
        UPDATE workflows SET sequence_num = GREATEST(sequence_num, (p->>'seq')::integer),
            waiting_for = p->>'waiting_for', updated_at = v_now, last_event = v_event - 1
        WHERE name = v_shard AND id = v_wid;
    ELSIF v_status = 'continued' THEN
        DELETE FROM task_queue WHERE workflow_name = v_shard AND workflow_id = v_wid
        AND task_type NOT IN ('workflow', 'child', 'timeout');
        UPDATE activities SET status = 'cancelled', updated_at = v_now
        WHERE workflow_name = v_shard AND workflow_id = v_wid AND status IN ('scheduled', 'running');
        INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step, event_type,
                                    event_data)
        VALUES (v_shard, (p->'end_event'->>'id')::uuid, v_wid, v_tenant, v_event, 0, p->'end_event'->>'kind',
                p->'end_event'->'data');
        UPDATE workflows SET input = p->'next_input', run = run + 1,
            sequence_num = GREATEST(sequence_num, (p->>'seq')::integer),
            run_step_base = GREATEST(sequence_num, (p->>'seq')::integer), run_first_event = v_event + 1,
            waiting_for = NULL, updated_at = v_now, last_event = v_event + 1
        WHERE name = v_shard AND id = v_wid;
        INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step, event_type,
                                    event_data)
        VALUES (v_shard, (p->'start_event'->>'id')::uuid, v_wid, v_tenant, v_event + 1, 0,
                p->'start_event'->>'kind', p->'start_event'->'data');
        v_event := v_event + 2;
        INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, workflow_version)
        VALUES (v_shard, (p->>'next_task_id')::uuid, v_wid, v_tenant, 'workflow', v_version)
        ON CONFLICT (workflow_name, workflow_id) WHERE task_type = 'workflow' DO NOTHING;
    ELSIF v_status IS NULL THEN  -- an attempt to retry: no replay, but the row shows the step
        UPDATE workflows SET updated_at = v_now, last_event = v_event - 1 WHERE name = v_shard AND id = v_wid;
    ELSE
        SELECT run_step_base INTO v_base FROM workflows WHERE name = v_shard AND id = v_wid;
        SELECT coalesce(jsonb_object_agg(sequence_num::text, output), '{}') INTO v_results FROM activities
        WHERE workflow_name = v_shard AND workflow_id = v_wid AND status = 'completed' AND sequence_num > v_base;
        UPDATE workflows SET status = v_status, output = p->'output', error = p->>'error', waiting_for = NULL,
            sequence_num = GREATEST(sequence_num, (p->>'seq')::integer) + 1, updated_at = v_now,
            completed_at = v_now, activity_results = v_results, last_event = v_event
        WHERE name = v_shard AND id = v_wid
        RETURNING sequence_num, result_waiters INTO v_seq, v_waiters;
        IF v_status = 'failed' THEN
            SELECT input INTO v_input FROM workflows WHERE name = v_shard AND id = v_wid;
            INSERT INTO dead_letter_queue (workflow_name, id, workflow_id, tenant_id, error, input, sequence_num)
            VALUES (v_shard, (p->>'dlq_id')::uuid, v_wid, v_tenant, p->>'error', v_input, v_seq);
        END IF;
        DELETE FROM task_queue WHERE workflow_name = v_shard AND workflow_id = v_wid
        AND task_type NOT IN ('workflow', 'child');
        UPDATE activities SET status = 'cancelled', updated_at = v_now
        WHERE workflow_name = v_shard AND workflow_id = v_wid AND status IN ('scheduled', 'running');
        INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step, event_type,
                                    event_data)
        VALUES (v_shard, (p->'end_event'->>'id')::uuid, v_wid, v_tenant, v_event, 0, p->'end_event'->>'kind',
                p->'end_event'->'data');
        v_event := v_event + 1;
        PERFORM flows_ended(v_shard, v_wid, v_tenant, v_version, v_now, p->>'channel');
        IF v_waiters > 0 THEN
            PERFORM pg_notify(p->>'done_channel', '');
        END IF;
    END IF;
    IF p->>'wake_channel' IS NOT NULL THEN
        PERFORM pg_notify(p->>'wake_channel', coalesce(p->>'wake_work', ''));
    END IF;
    RETURN json_build_object('updated_at', v_now, 'last_event', v_event - 1)::text;
END $$;

-- Called by neither this release's code nor the previous release's, nor by
-- any function left: the step functions of 005-011 that later ones replaced.
DROP FUNCTION IF EXISTS flows_replay_state(text, uuid, jsonb, boolean);                                  -- 005
DROP FUNCTION IF EXISTS flows_claim_workflow_task(text[], uuid, text);                                   -- 005
DROP FUNCTION IF EXISTS flows_lock_activity_step(text, uuid, uuid, text, integer, integer, integer);      -- 005
DROP FUNCTION IF EXISTS flows_record_step(jsonb);                                                        -- 005
DROP FUNCTION IF EXISTS flows_claim_activity_tasks(text, text[], integer);                               -- 008
DROP FUNCTION IF EXISTS flows_state_v2(text, uuid, jsonb, boolean, timestamptz);                         -- 009
DROP FUNCTION IF EXISTS flows_claim_replay(text, integer[], uuid, text);                                 -- 009
DROP FUNCTION IF EXISTS flows_lock_activity(text, uuid, uuid, text, integer, integer, integer, integer);  -- 009
DROP FUNCTION IF EXISTS flows_record_step_v2(jsonb);                                                     -- 009
DROP FUNCTION IF EXISTS flows_claim_replay_v3(text, integer[], uuid, text, integer);                     -- 010
DROP FUNCTION IF EXISTS flows_record_step_v3(jsonb);                                                     -- 010
DROP FUNCTION IF EXISTS flows_claim_replays(text, integer[], uuid[], text, integer, integer);            -- 011
