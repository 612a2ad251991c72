-- The primitives: parallel activities (no schema change), child workflows,
-- signal waits with a timeout, workflow execution timeouts,
-- signal-with-start, schedules.
--
-- As in 009: every statement names one shard value and the clock is read
-- once per call (v_now). A parent and its child live on two shards, so no
-- transaction touches both: a parent's step records its intent in its own
-- shard (a `children` row and a `child` task), and a separate transaction
-- carries it to the child's shard (starting it, idempotently, under an id
-- derived from the parent's id and step); the child's end comes back the
-- same way (a `parent` task in the child's shard, then a transaction in the
-- parent's). The previous release's functions stay for its workers; its
-- workers must not run workflows that use these primitives (they would not
-- know the new task types).

-- New task types:
--   timeout  due when a workflow's execution timeout runs out (lease_seconds: the timeout);
--   child    in a parent's shard, id = the child's id: start the child, or
--            cancel it once the parent has ended (parent_close = 'cancel');
--   parent   in a child's shard, id = the child's id: report its end to the parent.
-- `child` and `parent` tasks are leased while carried (deliveries is the
-- fencing token, as for activities), never deleted by their claim.
ALTER TABLE task_queue DROP CONSTRAINT task_queue_task_type_check;
ALTER TABLE task_queue ADD CONSTRAINT task_queue_task_type_check
    CHECK (task_type IN ('workflow', 'activity', 'timer', 'timeout', 'child', 'parent')) NOT VALID;
ALTER TABLE task_queue VALIDATE CONSTRAINT task_queue_task_type_check;

-- A child knows its parent (the parent's shard, id and the step that started it).
ALTER TABLE workflows ADD COLUMN parent_name text, ADD COLUMN parent_id uuid, ADD COLUMN parent_step integer;

-- A parent's children, in the parent's shard: what its step asked for, and
-- how far it got as the parent last heard.
CREATE TABLE children (
    workflow_name    text        NOT NULL,          -- the parent's shard
    id               uuid        NOT NULL,          -- the child's workflow id
    workflow_id      uuid        NOT NULL,          -- the parent
    tenant_id        uuid        NOT NULL,
    sequence_num     integer     NOT NULL,          -- the parent's step
    child_name       text        NOT NULL,          -- the child's sharded name
    child_version    integer     NOT NULL,
    input            jsonb,
    parent_close     text        NOT NULL DEFAULT 'cancel' CHECK (parent_close IN ('cancel', 'abandon')),
    status           text        NOT NULL DEFAULT 'starting'
                     CHECK (status IN ('starting', 'running', 'completed', 'failed', 'cancelled')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_name, id),
    CONSTRAINT children_one_per_step UNIQUE (workflow_name, workflow_id, sequence_num)
);

-- Schedules: fleet metadata like worker_heartbeats, keyed by the schedule's
-- id, not by a shard key (a handful of rows, read and written by the
-- firing workers, never joined with the workflow tables). Under Citus it
-- stays a plain table on the coordinator; the start of a scheduled run is a
-- transaction of its own on the run's shard.
CREATE TABLE schedules (
    schedule_id      text        NOT NULL PRIMARY KEY,
    tenant_id        uuid        NOT NULL,
    workflow_name    text        NOT NULL,          -- the base name
    workflow_version integer     NOT NULL,
    input            jsonb,
    cron             text        NOT NULL,
    timezone         text        NOT NULL DEFAULT 'UTC',
    overlap          text        NOT NULL CHECK (overlap IN ('skip', 'buffer_one', 'allow')),
    catch_up         text        NOT NULL,          -- 'all', 'latest' or a window in seconds
    paused           boolean     NOT NULL DEFAULT false,
    next_fire_at     timestamptz NOT NULL,          -- the next tick not yet handled
    buffered_tick    timestamptz,                   -- overlap 'buffer_one': a tick waiting for the last run to end
    last_tick        timestamptz,
    last_workflow_id uuid,                          -- the run the last started tick made
    starts           bigint      NOT NULL DEFAULT 0,
    skips            bigint      NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE NOT paused;

-- Start a workflow: its row, start event and first task (and, with
-- p_timeout, its execution timeout's task), and wake its shard. Returns
-- 'created', 'exists' (this tenant's, and this parent's when p_parent_id is
-- given: starting again is a no-op) or 'taken' (the id belongs to another).
CREATE FUNCTION flows_start_workflow(
    p_shard text, p_workflow_id uuid, p_tenant_id uuid, p_version integer, p_input jsonb, p_event_id uuid,
    p_task_id uuid, p_channel text, p_timeout double precision, p_timeout_task_id uuid,
    p_parent_name text, p_parent_id uuid, p_parent_step integer
) RETURNS text LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := now();
    w record;
BEGIN
    INSERT INTO workflows (name, id, tenant_id, version, status, input, parent_name, parent_id, parent_step,
                           created_at, updated_at)
    VALUES (p_shard, p_workflow_id, p_tenant_id, p_version, 'running', p_input, p_parent_name, p_parent_id,
            p_parent_step, v_now, v_now)
    ON CONFLICT (name, id) DO NOTHING;
    IF NOT FOUND THEN
        SELECT tenant_id, parent_name, parent_id INTO w FROM workflows WHERE name = p_shard AND id = p_workflow_id;
        IF w.tenant_id = p_tenant_id AND (p_parent_id IS NULL
                OR (w.parent_id IS NOT DISTINCT FROM p_parent_id AND w.parent_name IS NOT DISTINCT FROM p_parent_name)) THEN
            RETURN 'exists';
        END IF;
        RETURN 'taken';
    END IF;
    INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step, event_type, event_data)
    VALUES (p_shard, p_event_id, p_workflow_id, p_tenant_id, 1, 0, 'workflow_started',
            jsonb_build_object('version', p_version));
    INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, workflow_version, visibility_timeout)
    VALUES (p_shard, p_task_id, p_workflow_id, p_tenant_id, 'workflow', p_version, v_now);
    IF p_timeout IS NOT NULL THEN
        INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, workflow_version, lease_seconds,
                                visibility_timeout)
        VALUES (p_shard, p_timeout_task_id, p_workflow_id, p_tenant_id, 'timeout', p_version, p_timeout,
                v_now + p_timeout * interval '1 second');
    END IF;
    PERFORM pg_notify(p_channel, 'w');
    RETURN 'created';
END $$;

-- Start a workflow if its id is free, and deliver a signal to it, in one
-- transaction: two callers racing on one id make one workflow and two
-- signals. Returns {"start": flows_start_workflow's answer, "status": the
-- workflow's status as flows_send_signal saw it (NULL when 'taken')}.
CREATE FUNCTION flows_signal_with_start(
    p_shard text, p_workflow_id uuid, p_tenant_id uuid, p_version integer, p_input jsonb, p_event_id uuid,
    p_task_id uuid, p_channel text, p_timeout double precision, p_timeout_task_id uuid,
    p_signal_id uuid, p_signal_name text, p_payload jsonb, p_signal_task_id uuid
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_start text;
    v_status text;
BEGIN
    v_start := flows_start_workflow(p_shard, p_workflow_id, p_tenant_id, p_version, p_input, p_event_id, p_task_id,
                                    p_channel, p_timeout, p_timeout_task_id, NULL, NULL, NULL);
    IF v_start <> 'taken' THEN
        v_status := flows_send_signal(p_shard, p_workflow_id, p_tenant_id, p_signal_id, p_signal_name, p_payload,
                                      p_signal_task_id, p_channel);
    END IF;
    RETURN json_build_object('start', v_start, 'status', v_status)::text;
END $$;

-- What a workflow's end sets going, in its own shard (called by the
-- transaction that ends it): its children with the 'cancel' parent-close
-- policy that may still run get their `child` task (due now; a delivery in
-- flight loses its token, so the task is carried again and finds the parent
-- ended), and a child gets the `parent` task that reports its end.
CREATE FUNCTION flows_ended(p_shard text, p_workflow_id uuid, p_tenant_id uuid, p_version integer,
                            p_now timestamptz, p_channel text)
RETURNS void LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    c record;
    v_parent uuid;
    v_wake boolean := false;
BEGIN
    FOR c IN SELECT id FROM children WHERE workflow_name = p_shard AND workflow_id = p_workflow_id
             AND status IN ('starting', 'running') AND parent_close = 'cancel' LOOP
        INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, target_id, workflow_version,
                                visibility_timeout)
        VALUES (p_shard, c.id, p_workflow_id, p_tenant_id, 'child', c.id, p_version, p_now)
        ON CONFLICT (workflow_name, id) DO UPDATE SET visibility_timeout = p_now, lease_owner = NULL,
            deliveries = task_queue.deliveries + 1;
        v_wake := true;
    END LOOP;
    SELECT parent_id INTO v_parent FROM workflows WHERE name = p_shard AND id = p_workflow_id;
    IF v_parent IS NOT NULL THEN
        INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, target_id, workflow_version,
                                visibility_timeout)
        VALUES (p_shard, p_workflow_id, p_workflow_id, p_tenant_id, 'parent', v_parent, p_version, p_now)
        ON CONFLICT (workflow_name, id) DO NOTHING;
        v_wake := true;
    END IF;
    IF v_wake THEN
        PERFORM pg_notify(p_channel, 'w');
    END IF;
END $$;

-- Cancel a running workflow: it ends 'cancelled' (error p_reason), its
-- pending work is dropped, its end is announced to result() callers and set
-- going (flows_ended). Returns the status it had ('running' when this call
-- cancelled it), NULL when this tenant (NULL: any) has no such workflow.
CREATE FUNCTION flows_cancel_workflow(p_shard text, p_workflow_id uuid, p_tenant_id uuid, p_event_id uuid,
                                      p_reason text, p_channel text, p_done_channel text)
RETURNS text LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := now();
    w record;
BEGIN
    SELECT tenant_id, status, version, result_waiters INTO w FROM workflows
    WHERE name = p_shard AND id = p_workflow_id AND (p_tenant_id IS NULL OR tenant_id = p_tenant_id) FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF w.status <> 'running' THEN
        RETURN w.status;
    END IF;
    UPDATE workflows SET status = 'cancelled', error = p_reason, waiting_for = NULL, sequence_num = sequence_num + 1,
        updated_at = v_now, completed_at = v_now
    WHERE name = p_shard AND id = p_workflow_id;
    DELETE FROM task_queue WHERE workflow_name = p_shard AND workflow_id = p_workflow_id AND task_type <> 'child';
    UPDATE activities SET status = 'cancelled', updated_at = v_now
    WHERE workflow_name = p_shard AND workflow_id = p_workflow_id AND status IN ('scheduled', 'running');
    INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step, event_type, event_data)
    VALUES (p_shard, p_event_id, p_workflow_id, w.tenant_id, flows_next_event(p_shard, p_workflow_id), 0,
            'workflow_cancelled', jsonb_build_object('reason', p_reason));
    PERFORM flows_ended(p_shard, p_workflow_id, w.tenant_id, w.version, v_now, p_channel);
    IF w.result_waiters > 0 THEN
        PERFORM pg_notify(p_done_channel, '');
    END IF;
    RETURN 'running';
END $$;

-- A parent ended with the 'cancel' policy: cancel its child, in the child's
-- shard. A child not started yet is written as cancelled, so a start
-- carried late finds its id taken and does nothing. Returns the child's
-- status before ('absent' when it had not started).
CREATE FUNCTION flows_cancel_child(p_shard text, p_child_id uuid, p_tenant_id uuid, p_version integer,
                                   p_parent_name text, p_parent_id uuid, p_parent_step integer, p_event_id uuid,
                                   p_reason text, p_channel text, p_done_channel text)
RETURNS text LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := now();
BEGIN
    INSERT INTO workflows (name, id, tenant_id, version, status, error, parent_name, parent_id, parent_step,
                           created_at, updated_at, completed_at)
    VALUES (p_shard, p_child_id, p_tenant_id, p_version, 'cancelled', p_reason, p_parent_name, p_parent_id,
            p_parent_step, v_now, v_now, v_now)
    ON CONFLICT (name, id) DO NOTHING;
    IF FOUND THEN
        RETURN 'absent';
    END IF;
    RETURN flows_cancel_workflow(p_shard, p_child_id, p_tenant_id, p_event_id, p_reason, p_channel, p_done_channel);
END $$;

-- A `child` task was carried (in the parent's shard): drop it if this
-- delivery (p_token) still holds it, and note the child's new status
-- (p_status: 'running' once started, 'cancelled'; NULL: unchanged). False
-- when the task moved on (the parent ended meanwhile): it is carried again.
CREATE FUNCTION flows_child_carried(p_shard text, p_child_id uuid, p_token integer, p_status text)
RETURNS boolean LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := now();
BEGIN
    DELETE FROM task_queue WHERE workflow_name = p_shard AND id = p_child_id AND task_type = 'child'
    AND deliveries = p_token;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF p_status = 'running' THEN
        UPDATE children SET status = 'running', updated_at = v_now
        WHERE workflow_name = p_shard AND id = p_child_id AND status = 'starting';
    ELSIF p_status IS NOT NULL THEN
        UPDATE children SET status = p_status, updated_at = v_now
        WHERE workflow_name = p_shard AND id = p_child_id AND status IN ('starting', 'running');
    END IF;
    RETURN true;
END $$;

-- A child ended (or could not start): in the parent's shard, note it on the
-- `children` row and, while the parent runs and the step is still open,
-- record the child's end at the parent's step and ask for its replay.
-- Idempotent: a second report finds the row ended and does nothing.
CREATE FUNCTION flows_child_ended(p_shard text, p_parent_id uuid, p_child_id uuid, p_status text, p_output jsonb,
                                  p_error text, p_event_id uuid, p_task_id uuid, p_channel text)
RETURNS void LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := now();
    w record;
    v_step integer;
BEGIN
    SELECT tenant_id, status, version INTO w FROM workflows WHERE name = p_shard AND id = p_parent_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE children SET status = p_status, updated_at = v_now
    WHERE workflow_name = p_shard AND id = p_child_id AND workflow_id = p_parent_id
    AND status IN ('starting', 'running')
    RETURNING sequence_num INTO v_step;
    IF v_step IS NULL OR w.status <> 'running' THEN
        RETURN;
    END IF;
    INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step, event_type, event_data)
    VALUES (p_shard, p_event_id, p_parent_id, w.tenant_id, flows_next_event(p_shard, p_parent_id), v_step,
            CASE WHEN p_status = 'completed' THEN 'child_completed' ELSE 'child_failed' END,
            CASE WHEN p_status = 'completed'
                 THEN jsonb_build_object('workflow_id', p_child_id, 'output', p_output)
                 ELSE jsonb_build_object('workflow_id', p_child_id, 'status', p_status, 'error', p_error) END);
    INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, workflow_version)
    VALUES (p_shard, p_task_id, p_parent_id, w.tenant_id, 'workflow', w.version)
    ON CONFLICT (workflow_name, workflow_id) WHERE task_type = 'workflow' DO NOTHING;
    PERFORM pg_notify(p_channel, 'w');
END $$;

-- Drop a carried `parent` task if this delivery still holds it.
CREATE FUNCTION flows_parent_told(p_shard text, p_child_id uuid, p_token integer)
RETURNS boolean LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    DELETE FROM task_queue WHERE workflow_name = p_shard AND id = p_child_id AND task_type = 'parent'
    AND deliveries = p_token;
    RETURN FOUND;
END $$;

-- flows_claim_replay_v3 (migration 010) with the new task types: a
-- `timeout` task is claimed like a timer (the worker then fails the
-- workflow); a `child` or `parent` task is leased to p_owner for 60 s
-- instead (its workflow row is not locked: carrying it takes transactions
-- on another shard) and returned as {"carry": {id, type, token, info},
-- "next": ...}. The task array of a replay has a fifth element, the task's
-- lease_seconds (a timeout's length).
CREATE FUNCTION flows_claim_replay_v4(
    p_shard text, p_versions integer[], p_fired_event_id uuid, p_channel text, p_whole_below integer, p_owner text
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
    v_token integer;
    v_info json;
BEGIN
    LOOP
        v_found := false;
        FOREACH v_version IN ARRAY p_versions || NULL::integer LOOP
            IF v_version IS NULL THEN
                SELECT t.id, t.task_type, t.target_id, t.workflow_id, t.workflow_version, t.lease_seconds INTO c
                FROM task_queue t
                WHERE t.workflow_name = p_shard AND t.task_type <> 'activity' AND t.workflow_version IS NULL
                AND t.visibility_timeout <= v_now AND t.id <> ALL (v_busy)
                ORDER BY t.visibility_timeout LIMIT 1 FOR UPDATE SKIP LOCKED;
            ELSE
                SELECT t.id, t.task_type, t.target_id, t.workflow_id, t.workflow_version, t.lease_seconds INTO c
                FROM task_queue t
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
        IF c.task_type IN ('child', 'parent') THEN
            UPDATE task_queue SET visibility_timeout = v_now + interval '60 seconds', lease_owner = p_owner,
                deliveries = deliveries + 1
            WHERE workflow_name = p_shard AND id = c.id
            RETURNING deliveries INTO v_token;
            IF c.task_type = 'child' THEN
                SELECT json_build_object('child_name', ch.child_name, 'child_id', ch.id, 'version', ch.child_version,
                                         'input', ch.input, 'parent_close', ch.parent_close, 'status', ch.status,
                                         'tenant_id', ch.tenant_id, 'parent_id', ch.workflow_id,
                                         'step', ch.sequence_num)
                INTO v_info FROM children ch WHERE ch.workflow_name = p_shard AND ch.id = c.target_id;
                SELECT status INTO w FROM workflows WHERE name = p_shard AND id = c.workflow_id;
                v_info := (v_info::jsonb || jsonb_build_object('parent_status', w.status))::json;
            ELSE
                SELECT json_build_object('status', status, 'output', output, 'error', error,
                                         'parent_name', parent_name, 'parent_id', parent_id, 'child_id', id)
                INTO v_info FROM workflows WHERE name = p_shard AND id = c.workflow_id;
            END IF;
            v_next := flows_shard_due(p_shard, p_versions, NULL);
            RETURN json_build_object('carry', json_build_object('id', c.id, 'type', c.task_type, 'token', v_token,
                                                                'info', v_info),
                                     'next', extract(epoch FROM v_next - v_now))::text;
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
                          jsonb_build_array(c.id, c.task_type, c.target_id, extract(epoch FROM v_next - v_now),
                                            c.lease_seconds),
                          CASE WHEN w.last_event IS NOT NULL AND v_next_event - w.run_first_event >= p_whole_below
                               THEN w.last_event END,
                          v_now);
END $$;

-- flows_claim_replays (migration 011) on flows_claim_replay_v4: a `child` or
-- `parent` task ends the batch, leased, as "carry" beside the states.
CREATE FUNCTION flows_claim_replays_v2(
    p_shard text, p_versions integer[], p_fired_event_ids uuid[], p_channel text, p_whole_below integer,
    p_limit integer, p_owner text
) RETURNS text LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := now();
    v_states text[] := '{}';
    v_state text;
    v_carry text := 'null';
    v_next timestamptz;
    i integer;
BEGIN
    FOR i IN 1 .. p_limit LOOP
        v_state := flows_claim_replay_v4(p_shard, p_versions, p_fired_event_ids[i], p_channel, p_whole_below,
                                         p_owner);
        EXIT WHEN v_state LIKE '{"next"%';
        IF v_state LIKE '{"carry"%' THEN
            v_carry := (v_state::json -> 'carry')::text;
            EXIT;
        END IF;
        v_states := v_states || v_state;
    END LOOP;
    v_next := flows_shard_due(p_shard, p_versions, NULL);
    RETURN '{"states": [' || array_to_string(v_states, ',') || '], "carry": ' || v_carry || ', "next": '
        || coalesce(extract(epoch FROM v_next - v_now)::text, 'null') || '}';
END $$;

-- flows_record_step_v3 (migration 010) with, in p:
--   cancel_timers  [timer id] that go with their tasks (a signal won the race with its timeout)
--   children       [{id, name, version, seq, input, parent_close}]: a `children` row and a `child` task each
--   channel        the workflow's shard's wake-up channel (for what its end sets going)
-- and, when the workflow ends, its `child` tasks kept and flows_ended
-- called; a run that continues as new keeps its `child` tasks (its
-- children run on) and its execution timeout.
CREATE FUNCTION flows_record_step_v4(p jsonb) RETURNS text LANGUAGE plpgsql
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
            INSERT INTO dead_letter_queue (workflow_name, id, workflow_id, tenant_id, error, input, sequence_num)
            SELECT name, (p->>'dlq_id')::uuid, id, tenant_id, error, input, sequence_num
            FROM workflows WHERE name = v_shard AND id = v_wid;
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
