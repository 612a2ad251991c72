-- A workflow step in two statements instead of about fourteen.
--
-- A step (claim or record, replay, write) used to send each read and write
-- as its own statement; the load test found the workers spending most of
-- their CPU in the driver's per-statement work, not in PostgreSQL. These
-- functions take the step's reads and its writes as one call each:
--
--   flows_claim_workflow_task   claim a due workflow/timer task, lock its
--                               workflow, fire the timer; return the replay state
--   flows_lock_activity_step    lock a workflow for recording a leased
--                               activity's end; return the replay state
--                               (without the history the worker still holds)
--   flows_record_step           write what the replay decided
--
-- flows/store.py is still the only caller, and every statement here filters
-- by the shard key (workflows.name, elsewhere workflow_name).

-- The workflow row, the database clock, its history in order and its
-- unconsumed signals oldest first (both NULL unless p_history), as one JSON
-- document.
CREATE FUNCTION flows_replay_state(p_shard text, p_workflow_id uuid, p_task jsonb, p_history boolean DEFAULT true)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'task', p_task,
        'now', now(),
        'workflow', (SELECT to_json(w) FROM (
            SELECT name, id, tenant_id, version, status, input::text AS input, output::text AS output, error,
                   sequence_num, waiting_for, created_at, updated_at, completed_at
            FROM workflows WHERE name = p_shard AND id = p_workflow_id) w),
        'events', CASE WHEN p_history THEN (
            SELECT coalesce(json_agg(json_build_array(sequence_num, event_type, event_data)
                                     ORDER BY sequence_num, created_at, id), '[]')
            FROM history_events WHERE workflow_name = p_shard AND workflow_id = p_workflow_id) END,
        'signals', CASE WHEN p_history THEN (
            SELECT coalesce(json_agg(json_build_array(id, signal_name, payload) ORDER BY created_at, id), '[]')
            FROM signals WHERE workflow_name = p_shard AND workflow_id = p_workflow_id AND NOT consumed) END
    )::text
$$;

-- Claim one due workflow or timer task of the given shards (tried in order,
-- each by an index-ordered scan that stops at the first free task), lock its
-- workflow row, both skipping rows others hold, and delete the task. A timer
-- task fires its timer (the event id and type come from the caller). NULL
-- when nothing is due.
--
-- The task and its workflow are locked by two primary-key-or-index lookups
-- rather than one join: on tables not yet analyzed the planner joined the
-- task to every workflow of its shard (1.5 ms a claim at 2,000 due tasks).
-- A task whose workflow is busy (an activity's end being recorded) stays
-- locked, and so skipped by others, until this transaction ends; the next is
-- tried, up to 8.
CREATE FUNCTION flows_claim_workflow_task(p_shards text[], p_fired_event_id uuid, p_fired_event_type text)
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
    -- caller claims again, or starts another replay thread, only then. Not
    -- only this task's shard: timers falling due one after another across a
    -- worker's shards (500 started at once: one every 2 ms a worker, every
    -- 6 ms a shard) were otherwise fired one at a time, 30-40 ms behind.
    more := EXISTS (SELECT FROM unnest(p_shards) AS s(shard) CROSS JOIN LATERAL (
        SELECT FROM task_queue t
        WHERE t.workflow_name = s.shard AND t.task_type IN ('workflow', 'timer')
        AND t.visibility_timeout <= now() LIMIT 1) due);
    RETURN flows_replay_state(c.workflow_name, c.workflow_id,
                              jsonb_build_array(c.id, c.task_type, c.target_id, more));
END $$;

-- Lock a workflow to record the end of an activity attempt leased to
-- p_owner, and take (delete) that leased task. NULL when the lease was lost
-- (it ran out and another worker took the task, or the workflow ended).
--
-- p_sequence_num, p_events, p_signals describe the copy of the replay state
-- the worker kept from the step that leased it the activity. When the
-- workflow still matches it (same sequence_num, as many history events and
-- unconsumed signals: nothing was written since), the history and signals
-- are left out of the answer (NULL) and the worker replays from its copy.
CREATE FUNCTION flows_lock_activity_step(
    p_shard text, p_workflow_id uuid, p_task_id uuid, p_owner text,
    p_sequence_num integer DEFAULT NULL, p_events integer DEFAULT NULL, p_signals integer DEFAULT NULL
) RETURNS text LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_sequence_num integer;
BEGIN
    SELECT sequence_num INTO v_sequence_num FROM workflows WHERE name = p_shard AND id = p_workflow_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- By primary key: a generic plan would otherwise walk task_queue_by_owner
    -- through every task this owner leases (coalesce keeps that index out).
    DELETE FROM task_queue WHERE workflow_name = p_shard AND id = p_task_id AND coalesce(lease_owner, '') = p_owner;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN flows_replay_state(p_shard, p_workflow_id, NULL, (
        v_sequence_num = p_sequence_num
        AND (SELECT count(*) FROM history_events WHERE workflow_name = p_shard AND workflow_id = p_workflow_id)
            = p_events
        AND (SELECT count(*) FROM signals WHERE workflow_name = p_shard AND workflow_id = p_workflow_id
             AND NOT consumed) = p_signals) IS NOT TRUE);
END $$;

-- Write a replay's decisions for a workflow locked by this transaction:
--   activity      the attempt that just ended {id, status, output?, error?, attempt}
--   activities    new activities [{id, task_id, name, seq, input, max_attempts,
--                 lease_seconds, lease_owner}] (leased at once when lease_owner is set)
--   signals       consumed signals [{id, seq}]
--   timers        new timers [{id, task_id, seq, fire_at}]
--   events        history [{id, seq, kind, data}], in order
--   status        running | completed | failed; seq; waiting_for; results
--                 ({"<seq>": output} for activity_results)
--   output/error  and end_event {id, kind, data} when it ended
--   wake_channel  NOTIFY this channel (new due work), with wake_work as the
--                 payload (which kind of task); done_channel when it
--                 ended and an Engine.result() caller waits
CREATE FUNCTION flows_record_step(p jsonb) RETURNS void LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_shard text := p->>'shard';
    v_wid uuid := (p->>'workflow_id')::uuid;
    v_tenant uuid := (p->>'tenant_id')::uuid;
    v_activity_id uuid := (p->'activity'->>'id')::uuid;  -- a plain value, so the update goes by primary key
    v_seq integer;
    v_waiters integer;
BEGIN
    IF v_activity_id IS NOT NULL THEN
        UPDATE activities SET status = p->'activity'->>'status', output = p->'activity'->'output',
            error = p->'activity'->>'error', attempt = (p->'activity'->>'attempt')::integer,
            next_retry_at = NULL, updated_at = now(), completed_at = now()
        WHERE workflow_name = v_shard AND id = v_activity_id AND workflow_id = v_wid;
    END IF;
    IF jsonb_array_length(p->'activities') > 0 THEN
        INSERT INTO activities
            (workflow_name, id, workflow_id, tenant_id, name, sequence_num, input, max_attempts, status)
        SELECT v_shard, a.id, v_wid, v_tenant, a.name, a.seq, a.input, a.max_attempts,
               CASE WHEN a.lease_owner IS NULL THEN 'scheduled' ELSE 'running' END
        FROM jsonb_to_recordset(p->'activities')
            AS a(id uuid, name text, seq integer, input jsonb, max_attempts integer, lease_owner text);
        INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, target_id, lease_seconds,
                                lease_owner, deliveries, visibility_timeout)
        SELECT v_shard, a.task_id, v_wid, v_tenant, 'activity', a.id, a.lease_seconds, a.lease_owner,
               CASE WHEN a.lease_owner IS NULL THEN 0 ELSE 1 END,
               CASE WHEN a.lease_owner IS NULL THEN now() ELSE now() + a.lease_seconds * interval '1 second' END
        FROM jsonb_to_recordset(p->'activities')
            AS a(id uuid, task_id uuid, lease_seconds double precision, lease_owner text);
    END IF;
    IF jsonb_array_length(p->'signals') > 0 THEN
        UPDATE signals s SET consumed = true, consumed_seq = c.seq, consumed_at = now()
        FROM jsonb_to_recordset(p->'signals') AS c(id uuid, seq integer)
        WHERE s.workflow_name = v_shard AND s.id = c.id;
    END IF;
    IF jsonb_array_length(p->'timers') > 0 THEN
        INSERT INTO timers (workflow_name, id, workflow_id, tenant_id, sequence_num, fire_at)
        SELECT v_shard, t.id, v_wid, v_tenant, t.seq, t.fire_at
        FROM jsonb_to_recordset(p->'timers') AS t(id uuid, seq integer, fire_at timestamptz);
        INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, target_id, visibility_timeout)
        SELECT v_shard, t.task_id, v_wid, v_tenant, 'timer', t.id, t.fire_at
        FROM jsonb_to_recordset(p->'timers') AS t(id uuid, task_id uuid, fire_at timestamptz);
    END IF;
    IF jsonb_array_length(p->'events') > 0 THEN
        INSERT INTO history_events
            (workflow_name, id, workflow_id, tenant_id, sequence_num, event_type, event_data)
        SELECT v_shard, e.id, v_wid, v_tenant, e.seq, e.kind, e.data
        FROM jsonb_to_recordset(p->'events') AS e(id uuid, seq integer, kind text, data jsonb);
    END IF;
    IF p->>'status' = 'running' THEN
        UPDATE workflows SET sequence_num = GREATEST(sequence_num, (p->>'seq')::integer),
            waiting_for = p->>'waiting_for', updated_at = now(),
            activity_results = activity_results || coalesce(p->'results', '{}')
        WHERE name = v_shard AND id = v_wid;
    ELSE
        UPDATE workflows SET status = p->>'status', output = p->'output', error = p->>'error', waiting_for = NULL,
            sequence_num = GREATEST(sequence_num, (p->>'seq')::integer) + 1, updated_at = now(),
            completed_at = now(), activity_results = activity_results || coalesce(p->'results', '{}')
        WHERE name = v_shard AND id = v_wid
        RETURNING sequence_num, result_waiters INTO v_seq, v_waiters;
        IF p->>'status' = 'failed' THEN
            INSERT INTO dead_letter_queue (workflow_name, id, workflow_id, tenant_id, error, input, sequence_num)
            SELECT name, (p->>'dlq_id')::uuid, id, tenant_id, error, input, sequence_num
            FROM workflows WHERE name = v_shard AND id = v_wid;
        END IF;
        DELETE FROM task_queue WHERE workflow_name = v_shard AND workflow_id = v_wid AND task_type <> 'workflow';
        INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, event_type, event_data)
        VALUES (v_shard, (p->'end_event'->>'id')::uuid, v_wid, v_tenant, v_seq, p->'end_event'->>'kind',
                p->'end_event'->'data');
        IF v_waiters > 0 THEN
            PERFORM pg_notify(p->>'done_channel', '');
        END IF;
    END IF;
    IF p->>'wake_channel' IS NOT NULL THEN
        PERFORM pg_notify(p->>'wake_channel', coalesce(p->>'wake_work', ''));
    END IF;
END $$;

