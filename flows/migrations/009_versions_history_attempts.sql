-- Day-2 safety: versioned claims, history in the order things happened,
-- activity attempts with timeouts, heartbeats and fencing tokens.
--
-- Code of the previous release keeps working on this schema while a deploy
-- rolls (old and new workers side by side): columns are added nullable, the
-- old functions stay and a later migration drops them. The new functions
-- have new names; flows_replay_state and flows_send_signal are replaced in
-- place because old code calling them must see (and write) the new layout.
--
-- Every statement names one shard value (workflows.name, elsewhere
-- workflow_name) and the clock is read once per call (v_now), so the same
-- functions can run on Citus, where each statement is routed to one shard.

-- history_events.sequence_num numbers a workflow's events 1, 2, 3... in the
-- order they were written (the audit trail's order); `step` is the replay
-- step an event belongs to (0: none, like workflow_started). Rows written
-- before this migration have step NULL, their step being their sequence_num.
ALTER TABLE history_events ADD COLUMN step integer;

-- Which code may take a task: the workflow version for workflow and timer
-- tasks (a worker claims only versions it runs), the activity's name for
-- activity tasks (a worker claims only activities it has). NULL on tasks an
-- older release wrote: a claim looks those up once and fills them in.
ALTER TABLE task_queue ADD COLUMN workflow_version integer, ADD COLUMN activity_name text;
UPDATE task_queue t SET workflow_version = w.version FROM workflows w
WHERE t.task_type <> 'activity' AND w.name = t.workflow_name AND w.id = t.workflow_id;
UPDATE task_queue t SET activity_name = a.name FROM activities a
WHERE t.task_type = 'activity' AND a.workflow_name = t.workflow_name AND a.id = t.target_id;
CREATE INDEX task_queue_replay_due ON task_queue (workflow_name, workflow_version, visibility_timeout)
    WHERE task_type <> 'activity';
CREATE INDEX task_queue_activity_due ON task_queue (workflow_name, activity_name, visibility_timeout)
    WHERE task_type = 'activity';

-- An activity's attempts: when the current (or last) one started, its last
-- heartbeat, and the details of the last heartbeat of any attempt (handed
-- to the next attempt). task_queue.deliveries, counted up by every lease,
-- is the fencing token: only the delivery holding the current lease may
-- record a result.
ALTER TABLE activities ADD COLUMN started_at timestamptz, ADD COLUMN heartbeat_at timestamptz,
    ADD COLUMN heartbeat_details jsonb;

-- The previous release's replay state, reading the step of rows written by
-- this release from their own column (a worker of that release replaying a
-- history this one wrote must see the same steps).
CREATE OR REPLACE FUNCTION flows_replay_state(p_shard text, p_workflow_id uuid, p_task jsonb, p_history boolean DEFAULT true)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'task', p_task,
        'now', now(),
        'workflow', (SELECT to_json(w) FROM (
            SELECT name, id, tenant_id, version, status, input::text AS input, output::text AS output, error,
                   sequence_num, waiting_for, created_at, updated_at, completed_at
            FROM workflows WHERE name = p_shard AND id = p_workflow_id) w),
        'events', CASE WHEN p_history THEN (
            SELECT coalesce(json_agg(json_build_array(coalesce(step, sequence_num), event_type, event_data)
                                     ORDER BY sequence_num, created_at, id), '[]')
            FROM history_events WHERE workflow_name = p_shard AND workflow_id = p_workflow_id) END,
        'signals', CASE WHEN p_history THEN (
            SELECT coalesce(json_agg(json_build_array(id, signal_name, payload) ORDER BY created_at, id), '[]')
            FROM signals WHERE workflow_name = p_shard AND workflow_id = p_workflow_id AND NOT consumed) END
    )::text
$$;

-- The number the next history event of a workflow gets.
CREATE FUNCTION flows_next_event(p_shard text, p_workflow_id uuid) RETURNS integer
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_last integer;
BEGIN
    SELECT sequence_num INTO v_last FROM history_events
    WHERE workflow_name = p_shard AND workflow_id = p_workflow_id ORDER BY sequence_num DESC LIMIT 1;
    RETURN coalesce(v_last, 0) + 1;
END $$;

-- What a replay reads, as one JSON document: the claimed task (or NULL),
-- the database clock, the workflow row, its history as [step, type, data]
-- in the order written, and its unconsumed signals oldest first (history
-- and signals NULL unless p_history). `last_event` and `history_count`
-- describe the history for a worker's copy of it.
CREATE FUNCTION flows_state_v2(p_shard text, p_workflow_id uuid, p_task jsonb, p_history boolean, p_now timestamptz)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_workflow json;
    v_events json;
    v_signals json;
BEGIN
    SELECT to_json(w) INTO v_workflow FROM (
        SELECT name, id, tenant_id, version, status, input::text AS input, output::text AS output, error,
               sequence_num, waiting_for, created_at, updated_at, completed_at
        FROM workflows WHERE name = p_shard AND id = p_workflow_id) w;
    IF p_history THEN
        SELECT coalesce(json_agg(json_build_array(coalesce(step, sequence_num), event_type, event_data)
                                 ORDER BY sequence_num, created_at, id), '[]')
        INTO v_events FROM history_events WHERE workflow_name = p_shard AND workflow_id = p_workflow_id;
        SELECT coalesce(json_agg(json_build_array(id, signal_name, payload) ORDER BY created_at, id), '[]')
        INTO v_signals FROM signals WHERE workflow_name = p_shard AND workflow_id = p_workflow_id AND NOT consumed;
    END IF;
    RETURN json_build_object('task', p_task, 'now', p_now, 'workflow', v_workflow, 'events', v_events,
                             'signals', v_signals)::text;
END $$;

-- When the earliest task of one shard falls due, among the workflow versions
-- (replay tasks) or activity names (activity tasks) a worker runs, and the
-- tasks an older release wrote without either (NULL). One index-ordered
-- probe per version or name.
CREATE FUNCTION flows_shard_due(p_shard text, p_versions integer[], p_names text[]) RETURNS timestamptz
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_version integer;
    v_name text;
    v_due timestamptz;
    v_min timestamptz;
BEGIN
    IF p_versions IS NOT NULL THEN
        FOREACH v_version IN ARRAY p_versions LOOP
            SELECT visibility_timeout INTO v_due FROM task_queue
            WHERE workflow_name = p_shard AND task_type <> 'activity' AND workflow_version = v_version
            ORDER BY visibility_timeout LIMIT 1;
            IF FOUND AND (v_min IS NULL OR v_due < v_min) THEN
                v_min := v_due;
            END IF;
        END LOOP;
        SELECT visibility_timeout INTO v_due FROM task_queue
        WHERE workflow_name = p_shard AND task_type <> 'activity' AND workflow_version IS NULL
        ORDER BY visibility_timeout LIMIT 1;
        IF FOUND AND (v_min IS NULL OR v_due < v_min) THEN
            v_min := v_due;
        END IF;
    END IF;
    IF p_names IS NOT NULL THEN
        FOREACH v_name IN ARRAY p_names LOOP
            SELECT visibility_timeout INTO v_due FROM task_queue
            WHERE workflow_name = p_shard AND task_type = 'activity' AND activity_name = v_name
            ORDER BY visibility_timeout LIMIT 1;
            IF FOUND AND (v_min IS NULL OR v_due < v_min) THEN
                v_min := v_due;
            END IF;
        END LOOP;
        SELECT visibility_timeout INTO v_due FROM task_queue
        WHERE workflow_name = p_shard AND task_type = 'activity' AND activity_name IS NULL
        ORDER BY visibility_timeout LIMIT 1;
        IF FOUND AND (v_min IS NULL OR v_due < v_min) THEN
            v_min := v_due;
        END IF;
    END IF;
    RETURN v_min;
END $$;

-- Seconds until each of a worker's shards has a task due (negative: due
-- already; no row: none), for replays (kind 'w') and activities ('a').
-- p_shards, p_versions: the shard names and, aligned, the versions each runs
-- as a JSON array per shard ('[1,2]'); p_names the activity names it runs.
CREATE FUNCTION flows_due_times(p_shards text[], p_versions text[], p_names text[])
RETURNS TABLE (r_shard text, r_kind text, r_due_in double precision)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_due timestamptz;
    i integer;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_shards, 1), 0) LOOP
        v_due := flows_shard_due(p_shards[i], ARRAY(SELECT json_array_elements_text(p_versions[i]::json)::integer),
                                 NULL);
        IF v_due IS NOT NULL THEN
            r_shard := p_shards[i]; r_kind := 'w'; r_due_in := extract(epoch FROM v_due - v_now);
            RETURN NEXT;
        END IF;
        IF cardinality(p_names) > 0 THEN
            v_due := flows_shard_due(p_shards[i], NULL, p_names);
            IF v_due IS NOT NULL THEN
                r_shard := p_shards[i]; r_kind := 'a'; r_due_in := extract(epoch FROM v_due - v_now);
                RETURN NEXT;
            END IF;
        END IF;
    END LOOP;
END $$;

-- Claim one due workflow or timer task of one shard, of a version the
-- caller runs (or written without one by an older release: then the
-- workflow's version decides, and a task of a version the caller does not
-- run gets it filled in, for a worker that does), lock its workflow row,
-- both skipping rows others hold, and delete it; a timer task fires its
-- timer. Returns the replay state, with task = [id, type, target, seconds
-- until the shard's next task of these versions is due (NULL: none)]; when
-- nothing could be claimed, only {"next": seconds or NULL}.
--
-- A task whose workflow is busy (an activity's end being recorded) stays
-- locked, and so skipped by others, until this transaction ends; the next is
-- tried, up to 8.
CREATE FUNCTION flows_claim_replay(p_shard text, p_versions integer[], p_fired_event_id uuid, p_channel text)
RETURNS text LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := now();
    c record;
    w record;
    v_version integer;
    v_busy uuid[] := '{}';
    v_found boolean;
    v_fired_seq integer;
    v_next timestamptz;
BEGIN
    LOOP
        v_found := false;
        -- The oldest due task of each version in turn, then of none.
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
        SELECT tenant_id, status, version INTO w FROM workflows
        WHERE name = p_shard AND id = c.workflow_id FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            EXIT WHEN c.workflow_version IS NOT NULL OR w.version = ANY (p_versions);
            -- Written by an older release, for a version we do not run: label
            -- it for the workers that do, and wake them.
            UPDATE task_queue SET workflow_version = w.version WHERE workflow_name = p_shard AND id = c.id;
            PERFORM pg_notify(p_channel, 'w');
        END IF;
        v_busy := v_busy || c.id;
        IF cardinality(v_busy) >= 8 THEN
            RETURN json_build_object('next', 0)::text;
        END IF;
    END LOOP;
    DELETE FROM task_queue WHERE workflow_name = p_shard AND id = c.id;
    IF w.status = 'running' AND c.task_type = 'timer' AND c.target_id IS NOT NULL THEN
        UPDATE timers SET fired = true, fired_at = v_now
        WHERE workflow_name = p_shard AND id = c.target_id AND NOT fired
        RETURNING sequence_num INTO v_fired_seq;
        IF v_fired_seq IS NOT NULL THEN
            INSERT INTO history_events
                (workflow_name, id, workflow_id, tenant_id, sequence_num, step, event_type, event_data)
            VALUES (p_shard, p_fired_event_id, c.workflow_id, w.tenant_id, flows_next_event(p_shard, c.workflow_id),
                    v_fired_seq, 'timer_fired', jsonb_build_object('timer_id', c.target_id));
        END IF;
    END IF;
    v_next := flows_shard_due(p_shard, p_versions, NULL);
    RETURN flows_state_v2(p_shard, c.workflow_id,
                          jsonb_build_array(c.id, c.task_type, c.target_id, extract(epoch FROM v_next - v_now)),
                          true, v_now);
END $$;

-- Lease up to p_limit due activity tasks of one shard, of the activities the
-- caller runs (or written without a name by an older release: then the
-- activity row's name decides, and a task of another activity gets it filled
-- in), and mark their activities running, each by primary key. Returns
-- {"tasks": [[task id, workflow id, tenant, activity id, name, step, input,
-- failed attempts so far, fencing token, earlier deliveries that never
-- reported back, the owner whose lease ran out (NULL: released by a
-- supervisor, or none), heartbeat details of an earlier attempt], ...],
-- "next": seconds until the shard's next activity task falls due}.
CREATE FUNCTION flows_claim_activities(p_shard text, p_names text[], p_owner text, p_limit integer, p_channel text)
RETURNS text LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := now();
    v_name text;
    v_tasks jsonb := '[]';
    v_left integer := p_limit;
    v_due refcursor;
    c record;
    a record;
    v_next timestamptz;
BEGIN
    -- The oldest due tasks of each activity in turn, then of none (one
    -- index-ordered scan each).
    FOREACH v_name IN ARRAY p_names || NULL::text LOOP
        EXIT WHEN v_left <= 0;
        IF v_name IS NULL THEN
            OPEN v_due FOR
                SELECT t.id, t.workflow_id, t.tenant_id, t.target_id, t.deliveries, t.lease_owner, t.lease_seconds,
                       t.activity_name
                FROM task_queue t
                WHERE t.workflow_name = p_shard AND t.task_type = 'activity' AND t.activity_name IS NULL
                AND t.visibility_timeout <= v_now
                ORDER BY t.visibility_timeout LIMIT v_left FOR UPDATE SKIP LOCKED;
        ELSE
            OPEN v_due FOR
                SELECT t.id, t.workflow_id, t.tenant_id, t.target_id, t.deliveries, t.lease_owner, t.lease_seconds,
                       t.activity_name
                FROM task_queue t
                WHERE t.workflow_name = p_shard AND t.task_type = 'activity' AND t.activity_name = v_name
                AND t.visibility_timeout <= v_now
                ORDER BY t.visibility_timeout LIMIT v_left FOR UPDATE SKIP LOCKED;
        END IF;
        LOOP
            FETCH v_due INTO c;
            EXIT WHEN NOT FOUND;
            IF c.activity_name IS NULL THEN
                SELECT name INTO a FROM activities WHERE workflow_name = p_shard AND id = c.target_id;
                IF NOT (a.name = ANY (p_names)) THEN  -- another worker's: label it and wake them
                    UPDATE task_queue SET activity_name = a.name WHERE workflow_name = p_shard AND id = c.id;
                    PERFORM pg_notify(p_channel, 'a');
                    CONTINUE;
                END IF;
            END IF;
            UPDATE task_queue SET lease_owner = p_owner, deliveries = c.deliveries + 1,
                visibility_timeout = v_now + coalesce(c.lease_seconds, 300) * interval '1 second'
            WHERE workflow_name = p_shard AND id = c.id;
            UPDATE activities SET status = 'running', started_at = v_now, updated_at = v_now
            WHERE workflow_name = p_shard AND id = c.target_id
            RETURNING name, sequence_num, input::text AS input, attempt, heartbeat_details::text AS details INTO a;
            v_tasks := v_tasks || jsonb_build_array(jsonb_build_array(
                c.id, c.workflow_id, c.tenant_id, c.target_id, a.name, a.sequence_num, a.input, a.attempt,
                c.deliveries + 1, c.deliveries, CASE WHEN c.deliveries > 0 THEN c.lease_owner END, a.details));
            v_left := v_left - 1;
        END LOOP;
        CLOSE v_due;
    END LOOP;
    v_next := flows_shard_due(p_shard, NULL, p_names);
    RETURN json_build_object('tasks', v_tasks, 'next', extract(epoch FROM v_next - v_now))::text;
END $$;

-- Lock a workflow to record the end of an activity attempt, and take (delete)
-- the task if this delivery (p_token) still holds its lease. NULL when it
-- does not: the lease ran out and the attempt was recorded as timed out, or
-- another worker took the task, or the workflow ended.
--
-- p_sequence_num, p_events, p_signals describe the copy of the replay state
-- the worker kept from the step that leased it the activity. When the
-- workflow still matches it (nothing was written since), the history and
-- signals are left out of the answer and the worker replays from its copy.
CREATE FUNCTION flows_lock_activity(
    p_shard text, p_workflow_id uuid, p_task_id uuid, p_owner text, p_token integer,
    p_sequence_num integer, p_events integer, p_signals integer
) RETURNS text LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := now();
    v_sequence_num integer;
    v_events integer;
    v_signals integer;
BEGIN
    SELECT sequence_num INTO v_sequence_num FROM workflows WHERE name = p_shard AND id = p_workflow_id FOR UPDATE;
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
    IF p_sequence_num IS NOT NULL AND v_sequence_num = p_sequence_num THEN
        SELECT count(*) INTO v_events FROM history_events WHERE workflow_name = p_shard AND workflow_id = p_workflow_id;
        SELECT count(*) INTO v_signals FROM signals
        WHERE workflow_name = p_shard AND workflow_id = p_workflow_id AND NOT consumed;
    END IF;
    RETURN flows_state_v2(p_shard, p_workflow_id, NULL,
                          (v_events = p_events AND v_signals = p_signals) IS NOT TRUE, v_now);
END $$;

-- An activity attempt's heartbeat: keep its details (for the next attempt
-- and for inspection) and, while this delivery holds the lease, extend it to
-- p_extend seconds from now, never past the attempt's start plus p_cap
-- seconds. False when the lease is no longer ours: the attempt should stop.
CREATE FUNCTION flows_heartbeat_activity(
    p_shard text, p_task_id uuid, p_activity_id uuid, p_owner text, p_token integer, p_details jsonb,
    p_extend double precision, p_cap double precision
) RETURNS boolean LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := now();
    v_started timestamptz;
BEGIN
    PERFORM FROM task_queue WHERE workflow_name = p_shard AND id = p_task_id AND lease_owner = p_owner
    AND deliveries = p_token FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE activities SET heartbeat_at = v_now, heartbeat_details = p_details
    WHERE workflow_name = p_shard AND id = p_activity_id
    RETURNING started_at INTO v_started;
    IF p_extend IS NOT NULL THEN
        UPDATE task_queue SET visibility_timeout =
            least(v_now + p_extend * interval '1 second', coalesce(v_started, v_now) + p_cap * interval '1 second')
        WHERE workflow_name = p_shard AND id = p_task_id;
    END IF;
    RETURN true;
END $$;

-- Write a replay's decisions for a workflow locked by this transaction:
--   version       the workflow's version (its new timer tasks carry it)
--   activity      the attempt that just ended {id, status, output?, error?, attempt, details?}
--   retry         or a failed attempt to retry {id, attempt, error, delay, task_id, name,
--                 lease_seconds, event {id, kind, data}, details?} (no replay then)
--   activities    new activities [{id, task_id, name, seq, input, max_attempts,
--                 lease_seconds, lease_owner}] (leased at once when lease_owner is set)
--   signals       consumed signals [{id, seq}]
--   timers        new timers [{id, task_id, seq, fire_at}]
--   events        history [{id, seq, kind, data}] in order (seq: the step)
--   status        running | completed | failed; seq; waiting_for; results
--                 ({"<seq>": output} for activity_results)
--   output/error  and end_event {id, kind, data} when it ended
--   wake_channel  NOTIFY this channel (new due work), with wake_work as the
--                 payload (which kind of task); done_channel when it
--                 ended and an Engine.result() caller waits
-- Rows go in one INSERT ... VALUES each (not INSERT ... SELECT from a table
-- function, which Citus runs through the coordinator as a distributed
-- transaction).
CREATE FUNCTION flows_record_step_v2(p jsonb) RETURNS void LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := now();
    v_shard text := p->>'shard';
    v_wid uuid := (p->>'workflow_id')::uuid;
    v_tenant uuid := (p->>'tenant_id')::uuid;
    v_version integer := (p->>'version')::integer;
    v_activity_id uuid := (p->'activity'->>'id')::uuid;  -- a plain value, so the update goes by primary key
    v_event integer := flows_next_event(v_shard, v_wid);
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
    IF p->>'status' = 'running' THEN
        UPDATE workflows SET sequence_num = GREATEST(sequence_num, (p->>'seq')::integer),
            waiting_for = p->>'waiting_for', updated_at = v_now,
            activity_results = CASE WHEN p->'results' IS NULL THEN activity_results
                                    ELSE activity_results || (p->'results') END
        WHERE name = v_shard AND id = v_wid;
    ELSIF p->>'status' IS NOT NULL THEN
        UPDATE workflows SET status = p->>'status', output = p->'output', error = p->>'error', waiting_for = NULL,
            sequence_num = GREATEST(sequence_num, (p->>'seq')::integer) + 1, updated_at = v_now,
            completed_at = v_now,
            activity_results = CASE WHEN p->'results' IS NULL THEN activity_results
                                    ELSE activity_results || (p->'results') END
        WHERE name = v_shard AND id = v_wid
        RETURNING sequence_num, result_waiters INTO v_seq, v_waiters;
        IF p->>'status' = 'failed' THEN
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
        IF v_waiters > 0 THEN
            PERFORM pg_notify(p->>'done_channel', '');
        END IF;
    END IF;
    IF p->>'wake_channel' IS NOT NULL THEN
        PERFORM pg_notify(p->>'wake_channel', coalesce(p->>'wake_work', ''));
    END IF;
END $$;

-- Signals as before; the replay they ask for carries the workflow's version.
CREATE OR REPLACE FUNCTION flows_send_signal(
    p_shard text, p_workflow_id uuid, p_tenant_id uuid, p_signal_id uuid, p_signal_name text, p_payload jsonb,
    p_task_id uuid, p_channel text
) RETURNS text LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    w record;
BEGIN
    SELECT tenant_id, status, waiting_for, version INTO w FROM workflows
    WHERE name = p_shard AND id = p_workflow_id AND (p_tenant_id IS NULL OR tenant_id = p_tenant_id)
    FOR SHARE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF w.status IN ('completed', 'failed', 'cancelled') THEN
        RETURN w.status;
    END IF;
    INSERT INTO signals (workflow_name, id, workflow_id, tenant_id, signal_name, payload)
    VALUES (p_shard, p_signal_id, p_workflow_id, w.tenant_id, p_signal_name, p_payload);
    IF w.waiting_for = 'signal:' || p_signal_name THEN  -- otherwise the next replay finds it
        INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, workflow_version)
        VALUES (p_shard, p_task_id, p_workflow_id, w.tenant_id, 'workflow', w.version)
        ON CONFLICT (workflow_name, workflow_id) WHERE task_type = 'workflow' DO NOTHING;
        PERFORM pg_notify(p_channel, 'w');
    END IF;
    RETURN w.status;
END $$;

-- A worker's heartbeat in one statement: refresh its row, and say whether
-- another live worker serves one of its shards, whether some worker has been
-- silent for p_stale seconds (its leases are then released by whoever
-- notices), and whether a task of its shards is due (the safety net for a
-- missed notification). NULL when its row is gone (taken for dead): register
-- again.
CREATE FUNCTION flows_beat(p_owner text, p_shards text[], p_versions text[], p_names text[], p_stale double precision)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_due boolean;
BEGIN
    UPDATE worker_heartbeats SET last_beat = now() WHERE owner = p_owner;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_due := EXISTS (SELECT FROM flows_due_times(p_shards, p_versions, p_names) d WHERE d.r_due_in <= 0);
    RETURN json_build_object(
        'shared', EXISTS (SELECT FROM worker_heartbeats o WHERE o.owner <> p_owner AND o.shards && p_shards),
        'stale', EXISTS (SELECT FROM worker_heartbeats o
                         WHERE o.last_beat < now() - p_stale * interval '1 second' AND o.owner <> p_owner),
        'due', v_due)::text;
END $$;
