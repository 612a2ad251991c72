-- Long-lived workflows at constant cost per step, and continue-as-new.
--
-- A worker keeps a workflow it ran in memory (its history, or for long
-- histories its code parked where it waits), so a step need not read the
-- whole history again: the step functions here send only the events written
-- since the worker's last step of that workflow, when the workflow row still
-- shows that step (updated_at and last_event), else the whole history.
-- activity_results is written once, when the workflow ends, instead of
-- being rewritten whole at every step.
--
-- Added beside the 009 functions, which the previous release calls.

-- ctx.continue_as_new() starts the next run of a workflow id: its steps are
-- numbered after run_step_base and its history starts at run_first_event
-- (the earlier runs' events stay, readable, until pruned). last_event is the
-- last history event the latest step wrote (NULL when an older release
-- wrote it: then a worker's memory of the workflow is not trusted).
ALTER TABLE workflows ADD COLUMN run integer NOT NULL DEFAULT 1,
    ADD COLUMN run_step_base integer NOT NULL DEFAULT 0,
    ADD COLUMN run_first_event integer NOT NULL DEFAULT 0,
    ADD COLUMN last_event integer;

-- The replay state as flows_state_v2, for the current run only, with the
-- history either whole or, with p_after, only its events after p_after
-- ("tail": true). The row carries the run and last_event columns.
CREATE FUNCTION flows_state_v3(p_shard text, p_workflow_id uuid, p_task jsonb, p_after integer, p_now timestamptz)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_workflow json;
    v_first integer;
    v_events json;
    v_signals json;
BEGIN
    SELECT to_json(w), w.run_first_event INTO v_workflow, v_first FROM (
        SELECT name, id, tenant_id, version, status, input::text AS input, output::text AS output, error,
               sequence_num, waiting_for, created_at, updated_at, completed_at, run, run_step_base,
               run_first_event, last_event
        FROM workflows WHERE name = p_shard AND id = p_workflow_id) w;
    SELECT coalesce(json_agg(json_build_array(coalesce(step, sequence_num), event_type, event_data)
                             ORDER BY sequence_num, created_at, id), '[]')
    INTO v_events FROM history_events
    WHERE workflow_name = p_shard AND workflow_id = p_workflow_id AND sequence_num >= v_first
    AND sequence_num > coalesce(p_after, -1);
    SELECT coalesce(json_agg(json_build_array(id, signal_name, payload) ORDER BY created_at, id), '[]')
    INTO v_signals FROM signals WHERE workflow_name = p_shard AND workflow_id = p_workflow_id AND NOT consumed;
    RETURN json_build_object('task', p_task, 'now', p_now, 'workflow', v_workflow, 'events', v_events,
                             'signals', v_signals, 'tail', p_after IS NOT NULL)::text;
END $$;

-- flows_claim_replay with the history of the current run whole when it has
-- fewer than p_whole_below events, else only the events written since the
-- workflow's last step (a timer just fired): the worker that ran that step
-- holds the rest, or asks for it (flows_state_v3).
CREATE FUNCTION flows_claim_replay_v3(
    p_shard text, p_versions integer[], p_fired_event_id uuid, p_channel text, p_whole_below integer
) RETURNS text LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := now();
    c record;
    w record;
    v_version integer;
    v_busy uuid[] := '{}';
    v_found boolean;
    v_fired_seq integer;
    v_next timestamptz;
    v_next_event integer;
BEGIN
    LOOP
        v_found := false;
        FOREACH v_version IN ARRAY p_versions || NULL::integer LOOP
            IF v_version IS NULL THEN
                SELECT t.id, t.task_type, t.target_id, t.workflow_id, t.workflow_version INTO c FROM task_queue t
                WHERE t.workflow_name = p_shard AND t.task_type <> 'activity' AND t.workflow_version IS NULL
                AND t.visibility_timeout <= v_now AND t.id <> ALL (v_busy)
                ORDER BY t.visibility_timeout LIMIT 1 FOR UPDATE SKIP LOCKED;
            ELSE
                SELECT t.id, t.task_type, t.target_id, t.workflow_id, t.workflow_version INTO c FROM task_queue t
                WHERE t.workflow_name = p_shard AND t.task_type <> 'activity' AND t.workflow_version = v_version
                AND t.visibility_timeout <= v_now AND t.id <> ALL (v_busy)
                ORDER BY t.visibility_timeout LIMIT 1 FOR UPDATE SKIP LOCKED;
            END IF;
            IF FOUND THEN
                v_found := true;
                EXIT;
            END IF;
        END LOOP;
        IF NOT v_found THEN
            v_next := flows_shard_due(p_shard, p_versions, NULL);
            RETURN json_build_object('next', extract(epoch FROM v_next - v_now))::text;
        END IF;
        SELECT tenant_id, status, version, run_first_event, last_event INTO w FROM workflows
        WHERE name = p_shard AND id = c.workflow_id FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            EXIT WHEN c.workflow_version IS NOT NULL OR w.version = ANY (p_versions);
            UPDATE task_queue SET workflow_version = w.version WHERE workflow_name = p_shard AND id = c.id;
            PERFORM pg_notify(p_channel, 'w');
        END IF;
        v_busy := v_busy || c.id;
        IF cardinality(v_busy) >= 8 THEN
            RETURN json_build_object('next', 0)::text;
        END IF;
    END LOOP;
    DELETE FROM task_queue WHERE workflow_name = p_shard AND id = c.id;
    v_next_event := flows_next_event(p_shard, c.workflow_id);
    IF w.status = 'running' AND c.task_type = 'timer' AND c.target_id IS NOT NULL THEN
        UPDATE timers SET fired = true, fired_at = v_now
        WHERE workflow_name = p_shard AND id = c.target_id AND NOT fired
        RETURNING sequence_num INTO v_fired_seq;
        IF v_fired_seq IS NOT NULL THEN
            INSERT INTO history_events
                (workflow_name, id, workflow_id, tenant_id, sequence_num, step, event_type, event_data)
            VALUES (p_shard, p_fired_event_id, c.workflow_id, w.tenant_id, v_next_event, v_fired_seq, 'timer_fired',
                    jsonb_build_object('timer_id', c.target_id));
        END IF;
    END IF;
    v_next := flows_shard_due(p_shard, p_versions, NULL);
    RETURN flows_state_v3(p_shard, c.workflow_id,
                          jsonb_build_array(c.id, c.task_type, c.target_id, extract(epoch FROM v_next - v_now)),
                          CASE WHEN w.last_event IS NOT NULL AND v_next_event - w.run_first_event >= p_whole_below
                               THEN w.last_event END,
                          v_now);
END $$;

-- flows_lock_activity with the history sent whole, or only its events after
-- p_last_event when the workflow row still shows the step the worker
-- remembers (p_updated_at, p_last_event).
CREATE FUNCTION flows_lock_activity_v3(
    p_shard text, p_workflow_id uuid, p_task_id uuid, p_owner text, p_token integer,
    p_updated_at timestamptz, p_last_event integer
) RETURNS text LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := now();
    w record;
BEGIN
    SELECT updated_at, last_event INTO w FROM workflows WHERE name = p_shard AND id = p_workflow_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- By primary key: a generic plan would otherwise walk task_queue_by_owner
    -- through every task this owner leases (coalesce keeps that index out).
    DELETE FROM task_queue WHERE workflow_name = p_shard AND id = p_task_id AND coalesce(lease_owner, '') = p_owner
    AND deliveries = p_token;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN flows_state_v3(p_shard, p_workflow_id, NULL,
                          CASE WHEN w.updated_at = p_updated_at AND w.last_event = p_last_event THEN p_last_event END,
                          v_now);
END $$;

-- flows_record_step_v2, plus: last_event (the step's last history event)
-- on the workflow row, returned with updated_at as the step's stamp;
-- activity_results written once, when the workflow ends (the current run's
-- completed activities); and status 'continued' (ctx.continue_as_new):
-- the current run ends, its pending work is dropped, and the next run
-- starts with p->'next_input' under the same id (unconsumed signals carry
-- over), its first task queued (p->>'next_task_id').
CREATE FUNCTION flows_record_step_v3(p jsonb) RETURNS text LANGUAGE plpgsql
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
    r jsonb;
BEGIN
    IF v_activity_id IS NOT NULL THEN
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
        WHERE workflow_name = v_shard AND id = v_activity_id;
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
        DELETE FROM task_queue WHERE workflow_name = v_shard AND workflow_id = v_wid AND task_type <> 'workflow';
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
            INSERT INTO dead_letter_queue (workflow_name, id, workflow_id, tenant_id, error, input, sequence_num)
            SELECT name, (p->>'dlq_id')::uuid, id, tenant_id, error, input, sequence_num
            FROM workflows WHERE name = v_shard AND id = v_wid;
        END IF;
        DELETE FROM task_queue WHERE workflow_name = v_shard AND workflow_id = v_wid AND task_type <> 'workflow';
        UPDATE activities SET status = 'cancelled', updated_at = v_now
        WHERE workflow_name = v_shard AND workflow_id = v_wid AND status IN ('scheduled', 'running');
        INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step, event_type,
                                    event_data)
        VALUES (v_shard, (p->'end_event'->>'id')::uuid, v_wid, v_tenant, v_event, 0, p->'end_event'->>'kind',
                p->'end_event'->'data');
        v_event := v_event + 1;
        IF v_waiters > 0 THEN
            PERFORM pg_notify(p->>'done_channel', '');
        END IF;
    END IF;
    IF p->>'wake_channel' IS NOT NULL THEN
        PERFORM pg_notify(p->>'wake_channel', coalesce(p->>'wake_work', ''));
    END IF;
    RETURN json_build_object('updated_at', v_now, 'last_event', v_event - 1)::text;
END $$;
