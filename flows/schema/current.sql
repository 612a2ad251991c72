-- flows: the database as it is now, in one file to read.
--
-- Nothing applies this file. The migrations (flows/migrations/NNN_*.sql,
-- applied in name order by `flows migrate`) are the immutable steps that
-- reach it; tests/integration/test_schema_file.py loads it into an empty
-- database and compares the catalogue (tables, columns, defaults,
-- constraints, indexes, functions with their bodies) with a freshly
-- migrated database and with one upgraded from the oldest release fixture.
-- A schema change is a new migration plus the same change here, in one
-- commit; a function whose contract changes gets a new name (the old one
-- stays for the previous release's workers: docs/upgrading.md).
--
-- Left out: flows_schema_migrations, the runner's record of applied files
-- (flows/migrate.py), and the Citus distribution: migrations 050 and 051
-- distribute the workflow tables and `children` by their shard key,
-- colocated with workflows, only when the database has the citus extension
-- (docs/citus.md); worker_heartbeats and schedules stay on the coordinator.
--
-- Conventions. Every workflow table carries the shard key (workflows.name,
-- elsewhere workflow_name: the sharded name "<base>-shard-<k>") first in its
-- primary key and in every index, and tenant_id; ids are UUIDv7 made in
-- Python. Every statement of the functions names one shard value, and a
-- function reads the clock once (v_now), so they run on Citus as on plain
-- PostgreSQL. Columns are listed in the order the migrations added them
-- (the order `SELECT *` returns).


-- ===========================================================================
-- The workflow tables (sharded)
-- ===========================================================================

-- One row per workflow id: where its replay stands, its end.
CREATE TABLE workflows (
    name             text        NOT NULL,          -- the shard key: <base>-shard-<k>
    id               uuid        NOT NULL,
    tenant_id        uuid        NOT NULL,
    version          integer     NOT NULL DEFAULT 1,  -- a worker claims only the versions it runs
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    input            jsonb,                          -- the current run's
    output           jsonb,
    error            text,
    sequence_num     integer     NOT NULL DEFAULT 0,  -- the last step reached, across runs
    activity_results jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- {"<step>": output}, written when it ends
    waiting_for      text,                           -- where the replay stopped: 'signal:<name>', 'timer', ...
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),  -- with last_event, the stamp of its latest step
    completed_at     timestamptz,
    result_waiters   integer     NOT NULL DEFAULT 0,  -- Engine.result() callers: its end is NOTIFYed only if > 0
    run              integer     NOT NULL DEFAULT 1,  -- continue-as-new: the current run,
    run_step_base    integer     NOT NULL DEFAULT 0,  --   its steps numbered after this one
    run_first_event  integer     NOT NULL DEFAULT 0,  --   and its history starting at this event
    last_event       integer,                        -- the last event its latest step wrote (NULL: not trusted)
    parent_name      text,                           -- a child's parent: its shard, id,
    parent_id        uuid,
    parent_step      integer,                        --   and the step that started it
    PRIMARY KEY (name, id)
);
-- The workflow list, newest first, one index-ordered scan per shard (keyset
-- on created_at, id); by status for a filtered list and for prune.
CREATE INDEX workflows_by_created ON workflows (name, created_at DESC, id DESC);
CREATE INDEX workflows_by_status ON workflows (name, status, created_at DESC, id DESC);

-- An activity per step that called one; `attempt` counts failed attempts.
-- task_queue.deliveries is the fencing token of its current attempt.
CREATE TABLE activities (
    workflow_name    text        NOT NULL,
    id               uuid        NOT NULL,
    workflow_id      uuid        NOT NULL,
    tenant_id        uuid        NOT NULL,
    name             text        NOT NULL,
    sequence_num     integer     NOT NULL,          -- the step
    status           text        NOT NULL DEFAULT 'scheduled'
                     CHECK (status IN ('scheduled', 'running', 'completed', 'failed', 'cancelled')),
    input            jsonb,
    output           jsonb,
    error            text,
    attempt          integer     NOT NULL DEFAULT 0,   -- failed attempts so far
    max_attempts     integer     NOT NULL DEFAULT 1,
    next_retry_at    timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    started_at       timestamptz,                    -- when the current (or last) attempt started
    heartbeat_at     timestamptz,                    -- its last heartbeat
    heartbeat_details jsonb,                         -- the last heartbeat's details, handed to the next attempt
    PRIMARY KEY (workflow_name, id),
    CONSTRAINT activities_one_per_step UNIQUE (workflow_name, workflow_id, sequence_num)
);

-- The audit trail and what a replay matches on. sequence_num numbers a
-- workflow's events 1, 2, 3... in the order written (flows_next_event);
-- step is the replay step an event belongs to (0: none, e.g.
-- workflow_started; NULL on rows of releases before 009, whose step is
-- their sequence_num).
CREATE TABLE history_events (
    workflow_name    text        NOT NULL,
    id               uuid        NOT NULL,
    workflow_id      uuid        NOT NULL,
    tenant_id        uuid        NOT NULL,
    sequence_num     integer     NOT NULL,
    event_type       text        NOT NULL,
    event_data       jsonb       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    step             integer,
    PRIMARY KEY (workflow_name, id)
);
CREATE INDEX history_events_by_workflow ON history_events (workflow_name, workflow_id, sequence_num, id);

-- ctx.sleep(): fired by the claim of its `timer` task.
CREATE TABLE timers (
    workflow_name    text        NOT NULL,
    id               uuid        NOT NULL,
    workflow_id      uuid        NOT NULL,
    tenant_id        uuid        NOT NULL,
    sequence_num     integer     NOT NULL,
    fire_at          timestamptz NOT NULL,
    fired            boolean     NOT NULL DEFAULT false,
    fired_at         timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_name, id),
    CONSTRAINT timers_one_per_step UNIQUE (workflow_name, workflow_id, sequence_num)
);

-- Signals sent to a workflow; a wait consumes the oldest unconsumed one of
-- its name (consumed_seq: the step that took it). One whose payload does not
-- decode into what the wait expects is rejected: consumed, consumed_seq NULL,
-- the reason in rejected.
CREATE TABLE signals (
    workflow_name    text        NOT NULL,
    id               uuid        NOT NULL,
    workflow_id      uuid        NOT NULL,
    tenant_id        uuid        NOT NULL,
    signal_name      text        NOT NULL,
    payload          jsonb,
    consumed         boolean     NOT NULL DEFAULT false,
    consumed_seq     integer,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    consumed_at      timestamptz,
    dedup_key        text,                           -- at most one signal per workflow id under a key, ever
    rejected         text,                           -- why its wait could not take it
    PRIMARY KEY (workflow_name, id)
);
CREATE INDEX signals_unconsumed ON signals (workflow_name, workflow_id, created_at, id) WHERE NOT consumed;
CREATE INDEX signals_by_workflow ON signals (workflow_name, workflow_id);
CREATE UNIQUE INDEX signals_dedup_key ON signals (workflow_name, workflow_id, dedup_key)
    WHERE dedup_key IS NOT NULL;
CREATE INDEX signals_rejected ON signals (workflow_name, workflow_id) WHERE rejected IS NOT NULL;

-- Work for the fleet. A task is due when visibility_timeout <= now(); a
-- leased task has it pushed forward and lease_owner set. Task types:
--   workflow  a replay;              timer    fire a timer, then replay;
--   timeout   the workflow's execution timeout ran out (lease_seconds: its length);
--   activity  an activity attempt, leased while it runs;
--   child     in a parent's shard, id = the child's id: start the child, or
--             cancel it once the parent has ended (parent_close = 'cancel');
--   parent    in a child's shard, id = the child's id: report its end to the parent.
-- `child` and `parent` tasks are leased while carried, never deleted by
-- their claim. workflow_version (replay tasks) and activity_name (activity
-- tasks) say which worker may take a task; NULL on tasks of releases
-- before 009, filled in by the claim that meets them.
CREATE TABLE task_queue (
    workflow_name      text        NOT NULL,
    id                 uuid        NOT NULL,
    workflow_id        uuid        NOT NULL,
    tenant_id          uuid        NOT NULL,
    task_type          text        NOT NULL
                       CHECK (task_type IN ('workflow', 'activity', 'timer', 'timeout', 'child', 'parent')),
    target_id          uuid,                         -- the activity, timer or child row
    visibility_timeout timestamptz NOT NULL DEFAULT now(),
    lease_owner        text,                         -- worker_heartbeats.owner of the lease
    lease_seconds      double precision,             -- an activity attempt's lease
    created_at         timestamptz NOT NULL DEFAULT now(),
    deliveries         integer     NOT NULL DEFAULT 0,  -- leases so far: the fencing token
    workflow_version   integer,
    activity_name      text,
    PRIMARY KEY (workflow_name, id)
);
CREATE INDEX task_queue_due ON task_queue (workflow_name, visibility_timeout);
CREATE INDEX task_queue_by_workflow ON task_queue (workflow_name, workflow_id);
CREATE INDEX task_queue_by_owner ON task_queue (workflow_name, lease_owner) WHERE lease_owner IS NOT NULL;
-- At most one pending workflow task per workflow.
CREATE UNIQUE INDEX task_queue_one_workflow_task ON task_queue (workflow_name, workflow_id)
    WHERE task_type = 'workflow';
-- The claims: the oldest due task of one version, or of one activity, per probe.
CREATE INDEX task_queue_replay_due ON task_queue (workflow_name, workflow_version, visibility_timeout)
    WHERE task_type <> 'activity';
CREATE INDEX task_queue_activity_due ON task_queue (workflow_name, activity_name, visibility_timeout)
    WHERE task_type = 'activity';

-- A failed workflow's record; it stays when the workflow is retried
-- (retried_at: when it was sent back to run).
CREATE TABLE dead_letter_queue (
    workflow_name    text        NOT NULL,
    id               uuid        NOT NULL,
    workflow_id      uuid        NOT NULL,
    tenant_id        uuid        NOT NULL,
    error            text        NOT NULL,
    input            jsonb,
    sequence_num     integer     NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    retried_at       timestamptz,
    PRIMARY KEY (workflow_name, id)
);
CREATE INDEX dead_letter_queue_by_workflow ON dead_letter_queue (workflow_name, workflow_id);

-- A parent's children, in the parent's shard: what its step asked for, and
-- how far the child got as the parent last heard. A parent and its child
-- live on two shards, so no transaction touches both: `child` and `parent`
-- tasks carry the start, the cancellation and the end across.
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


-- ===========================================================================
-- Fleet metadata (not sharded: a handful of rows, never joined with the
-- workflow tables; plain tables on the Citus coordinator)
-- ===========================================================================

-- One row per live worker process, refreshed by its heartbeat (flows_beat):
-- when a whole supervisor dies, another finds the rows stale and releases
-- those workers' leases, in the shards the row lists.
CREATE TABLE worker_heartbeats (
    owner        text        NOT NULL PRIMARY KEY,  -- task_queue.lease_owner of its leases ("host:pid")
    pid          integer     NOT NULL,
    host         text        NOT NULL,
    shard_group  text        NOT NULL,               -- the shard indices served, e.g. '0,2'
    shards       text[]      NOT NULL,               -- the shard names served (sharded workflow names)
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_beat    timestamptz NOT NULL DEFAULT now()
);

-- Schedules, keyed by their id; the start of a scheduled run is a
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


-- ===========================================================================
-- Functions: what a replay reads, and when work falls due
--
-- A step is two calls around the replay in Python: a claim (or, for an
-- activity's end, a lock) and a record. The store (flows/store) is the only
-- caller of these functions. plan_cache_mode = force_generic_plan: a function's
-- statements are planned once per connection, not at each call.
-- ===========================================================================

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

-- What a replay reads, as one JSON document: {task: p_task, now: p_now,
-- workflow: the row, events: the current run's history as [step, type, data]
-- in the order written, signals: its unconsumed signals oldest first as [id,
-- name, payload], tail}. The history is whole, or with p_after only its
-- events after p_after ("tail": true; the worker holds the rest).
--
-- Each statement reads one table filtered by its shard key (Citus cannot
-- plan a subquery in FROM over a distributed table under a generic plan).
-- The history read is bounded on both sides by variables: a generic plan
-- estimates a two-sided range of unknown bounds at 0.5 % of the rows, so it
-- keeps the (workflow_name, workflow_id, sequence_num) index for any history
-- (one bound alone is estimated at a third: a sequential scan once analyzed).
CREATE FUNCTION flows_state_v3(p_shard text, p_workflow_id uuid, p_task jsonb, p_after integer,
                                          p_now timestamptz)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_workflow json;
    v_first integer;
    v_after integer;
    v_until integer := 2147483647;  -- a variable, not a constant: see above
    v_events json;
    v_signals json;
BEGIN
    SELECT json_build_object(
               'name', name, 'id', id, 'tenant_id', tenant_id, 'version', version, 'status', status,
               'input', input::text, 'output', output::text, 'error', error, 'sequence_num', sequence_num,
               'waiting_for', waiting_for, 'created_at', created_at, 'updated_at', updated_at,
               'completed_at', completed_at, 'run', run, 'run_step_base', run_step_base,
               'run_first_event', run_first_event, 'last_event', last_event),
           run_first_event
    INTO v_workflow, v_first
    FROM workflows WHERE name = p_shard AND id = p_workflow_id;
    IF v_first IS NULL THEN
        v_events := '[]';
    ELSE
        v_after := greatest(v_first - 1, coalesce(p_after, -1));
        SELECT coalesce(json_agg(json_build_array(coalesce(step, sequence_num), event_type, event_data)
                                 ORDER BY sequence_num, created_at, id), '[]')
        INTO v_events FROM history_events
        WHERE workflow_name = p_shard AND workflow_id = p_workflow_id
        AND sequence_num > v_after AND sequence_num <= v_until;
    END IF;
    SELECT coalesce(json_agg(json_build_array(id, signal_name, payload) ORDER BY created_at, id), '[]')
    INTO v_signals FROM signals WHERE workflow_name = p_shard AND workflow_id = p_workflow_id AND NOT consumed;
    RETURN json_build_object('task', p_task, 'now', p_now, 'workflow', v_workflow, 'events', v_events,
                             'signals', v_signals, 'tail', p_after IS NOT NULL)::text;
END $$;

-- When the earliest task of one shard falls due, among the workflow versions
-- (replay tasks) or activity names (activity tasks) a worker runs, and the
-- tasks written without either (NULL). One index-ordered probe per version or
-- name.
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


-- ===========================================================================
-- Functions: starting, signalling and cancelling (the client)
-- ===========================================================================

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

-- Store a signal for a workflow that has not ended and, when the workflow
-- waits for exactly this signal, queue its replay (with its version) and wake
-- its shard. The row is locked FOR SHARE: the send waits for a replay in
-- progress, so a replay never misses a signal it should have seen. Returns
-- the workflow's status (the signal is stored unless it ended), NULL when
-- this tenant (NULL: any) has no such workflow. Called by
-- flows_signal_with_start; Engine.send_signal calls flows_send_signal_v2.
CREATE FUNCTION flows_send_signal(
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

-- Store a signal as flows_send_signal does, with two optional conditions,
-- decided under the workflow's row lock (so that concurrent senders cannot
-- both pass a check only one of them should):
--   p_dedup_key        when set and a signal of this workflow already has it,
--                      store nothing: outcome 'duplicate', with that signal's
--                      id and payload (the caller tells a retry of the same
--                      request from a different one).
--   p_only_if_waiting  store only if the workflow's replay is stopped at a
--                      wait for this signal (waiting_for) and no signal of
--                      this name is stored and unconsumed (one already
--                      answers that wait): else outcome 'not-waiting' or
--                      'answered' (with the pending signal's id). The row is
--                      then locked FOR NO KEY UPDATE, which serialises such
--                      senders: of concurrent ones, one is stored per wait.
-- One row: (status, outcome, signal_id, payload, waiting_for); no row when
-- this tenant (NULL: any) has no such workflow. An ended workflow gives its
-- status with outcome NULL and stores nothing.
CREATE FUNCTION flows_send_signal_v2(
    p_shard text, p_workflow_id uuid, p_tenant_id uuid, p_signal_id uuid, p_signal_name text, p_payload jsonb,
    p_task_id uuid, p_channel text, p_dedup_key text, p_only_if_waiting boolean
) RETURNS TABLE (status text, outcome text, signal_id uuid, payload text, waiting_for text)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    w record;
    found_id uuid;
    found_payload text;
BEGIN
    IF p_only_if_waiting THEN
        SELECT wf.tenant_id, wf.status, wf.waiting_for, wf.version INTO w FROM workflows wf
        WHERE wf.name = p_shard AND wf.id = p_workflow_id AND (p_tenant_id IS NULL OR wf.tenant_id = p_tenant_id)
        FOR NO KEY UPDATE;
    ELSE
        SELECT wf.tenant_id, wf.status, wf.waiting_for, wf.version INTO w FROM workflows wf
        WHERE wf.name = p_shard AND wf.id = p_workflow_id AND (p_tenant_id IS NULL OR wf.tenant_id = p_tenant_id)
        FOR SHARE;
    END IF;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF w.status IN ('completed', 'failed', 'cancelled') THEN
        RETURN QUERY SELECT w.status, NULL::text, NULL::uuid, NULL::text, w.waiting_for;
        RETURN;
    END IF;
    IF p_dedup_key IS NOT NULL THEN
        SELECT s.id, s.payload::text INTO found_id, found_payload FROM signals s
        WHERE s.workflow_name = p_shard AND s.workflow_id = p_workflow_id AND s.dedup_key = p_dedup_key;
        IF found_id IS NOT NULL THEN
            RETURN QUERY SELECT w.status, 'duplicate'::text, found_id, found_payload, w.waiting_for;
            RETURN;
        END IF;
    END IF;
    IF p_only_if_waiting THEN
        IF w.waiting_for IS DISTINCT FROM 'signal:' || p_signal_name THEN
            RETURN QUERY SELECT w.status, 'not-waiting'::text, NULL::uuid, NULL::text, w.waiting_for;
            RETURN;
        END IF;
        SELECT s.id INTO found_id FROM signals s
        WHERE s.workflow_name = p_shard AND s.workflow_id = p_workflow_id AND NOT s.consumed
        AND s.signal_name = p_signal_name
        ORDER BY s.created_at, s.id LIMIT 1;
        IF found_id IS NOT NULL THEN
            RETURN QUERY SELECT w.status, 'answered'::text, found_id, NULL::text, w.waiting_for;
            RETURN;
        END IF;
    END IF;
    INSERT INTO signals (workflow_name, id, workflow_id, tenant_id, signal_name, payload, dedup_key)
    VALUES (p_shard, p_signal_id, p_workflow_id, w.tenant_id, p_signal_name, p_payload, p_dedup_key)
    ON CONFLICT (workflow_name, workflow_id, dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING;
    IF NOT FOUND THEN  -- a concurrent sender stored this key first (and has committed)
        SELECT s.id, s.payload::text INTO found_id, found_payload FROM signals s
        WHERE s.workflow_name = p_shard AND s.workflow_id = p_workflow_id AND s.dedup_key = p_dedup_key;
        RETURN QUERY SELECT w.status, 'duplicate'::text, found_id, found_payload, w.waiting_for;
        RETURN;
    END IF;
    IF w.waiting_for = 'signal:' || p_signal_name THEN  -- otherwise the next replay finds it
        INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, workflow_version)
        VALUES (p_shard, p_task_id, p_workflow_id, w.tenant_id, 'workflow', w.version)
        ON CONFLICT (workflow_name, workflow_id) WHERE task_type = 'workflow' DO NOTHING;
        PERFORM pg_notify(p_channel, 'w');
    END IF;
    RETURN QUERY SELECT w.status, 'stored'::text, p_signal_id, NULL::text, w.waiting_for;
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


-- ===========================================================================
-- Functions: claims (the worker)
-- ===========================================================================

-- Claim one due task of one shard for a replay worker (any type but
-- `activity`), oldest first, of a version the caller runs or written without
-- one (then the workflow's version decides; a task of a version the caller
-- does not run is labelled with it, and the shard woken, for a worker that
-- runs it), skipping rows others hold:
-- - workflow, timer, timeout: lock the workflow row and delete the task; a
--   timer task fires its timer (a timer_fired event). A task whose workflow
--   is busy (an activity's end being recorded) stays locked, and so skipped
--   by others, until this transaction ends; the next is tried, up to 8.
--   Returns the replay state (flows_state_v3) with task = [id, type, target,
--   seconds until the shard's next task of these versions is due (NULL:
--   none), lease_seconds (a timeout's length)]; the history whole when the
--   current run has fewer than p_whole_below events (or the row no
--   last_event), else only the events after the workflow's last step.
-- - child, parent: leased to p_owner for 60 s (deliveries is the fencing
--   token) without locking the workflow (carrying it takes transactions on
--   another shard): {"carry": {id, type, token, info}, "next": seconds}.
-- Nothing due: {"next": seconds or NULL}; 8 busy workflows: {"next": 0}.
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

-- Up to p_limit claims of flows_claim_replay_v4 in one transaction, for a
-- worker that finds a backlog in a shard: one claim and one commit for many
-- replays (one at a time while the queue is short, so a wake-up is never
-- held up by others' work). A `child` or `parent` task ends the batch,
-- leased, as "carry". Returns {"states": [state, ...], "carry": {...} or
-- null, "next": seconds until the shard's next task is due, or null}.
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

-- Lease up to p_limit due activity tasks of one shard, of the activities the
-- caller runs (or written without a name: then the activity row's name
-- decides, and a task of another activity gets it filled in), and mark their
-- activities running, each by primary key. Returns {"tasks": [[task id,
-- workflow id, tenant, activity id, name, step, input, failed attempts so
-- far, fencing token, earlier deliveries that never reported back, the owner
-- whose lease ran out (NULL: released by a supervisor, or none), heartbeat
-- details of an earlier attempt], ...], "next": seconds until the shard's
-- next activity task falls due}.
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


-- ===========================================================================
-- Functions: activity attempts
-- ===========================================================================

-- Lock a workflow to record the end of an activity attempt, and take
-- (delete) the task if this delivery (p_token) still holds its lease. NULL
-- when it does not: the lease ran out and the attempt was recorded as timed
-- out, or another worker took the task, or the workflow ended. The history
-- comes whole, or only its events after p_last_event when the workflow row
-- still shows the step the worker remembers (p_updated_at, p_last_event).
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


-- ===========================================================================
-- Functions: recording a step
-- ===========================================================================

-- Write a replay's decisions for a workflow locked by this transaction, and
-- return the stamp the step leaves on the row, {"updated_at", "last_event"}
-- (a worker's copy of the workflow stays good while the row shows it). p:
--   shard, workflow_id, tenant_id, version  (new timer and child tasks carry the version)
--   activity      the attempt that ended {id, seq, status, output?, error?, attempt,
--                 details?}; its row is named by both unique keys (id; workflow_id
--                 and the step seq), so a generic plan looks up one row whichever
--                 index it takes
--   retry         or a failed attempt to retry {id, attempt, error, delay, task_id,
--                 name, lease_seconds, event {id, seq, kind, data}, details?}, with
--                 status NULL (no replay: the row only shows the step)
--   activities    new activities [{id, task_id, name, seq, input, max_attempts,
--                 lease_seconds, lease_owner}] (leased at once when lease_owner is set)
--   signals       consumed signals [{id, seq}]
--   timers        new timers [{id, task_id, seq, fire_at}]
--   cancel_timers [timer id] dropped with their tasks (a signal won the race with
--                 its timeout)
--   children      [{id, name, version, seq, input, parent_close}]: a `children` row
--                 and a `child` task each
--   events        history [{id, seq, kind, data}] in order (seq: the step)
--   status        running | completed | failed | continued | NULL; seq (the step
--                 reached); waiting_for
--   output/error  and end_event {id, kind, data} when it ended; dlq_id when it failed
--   continued     (ctx.continue_as_new) the run ends, its pending work is dropped
--                 but its `child` tasks (its children run on) and its execution
--                 timeout, and the next run starts under the same id with
--                 next_input and start_event, its first task next_task_id
--                 (unconsumed signals carry over)
--   wake_channel  NOTIFY this channel (new due work), with wake_work as the
--                 payload (which kind of task); done_channel when it ended and an
--                 Engine.result() caller waits; channel: the shard's wake-up
--                 channel, for what its end sets going
-- When it ends, activity_results gets the current run's completed
-- activities, its tasks but `child` ones are dropped, its open activities
-- cancelled, a failed one gets a dead letter, and flows_ended sets its
-- children's and its parent's tasks going. Rows go in one INSERT ... VALUES
-- each, the dead letter from values read first (Citus runs INSERT ... SELECT
-- through the coordinator, and cannot plan one over workflows under a
-- generic plan).
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

-- The previous release's step function, kept while a supported release calls
-- it (docs/upgrading.md): as flows_record_step_v5, and an ended attempt sent
-- without its step (seq), as workers from before migration 053 send it, is
-- found by primary key.
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


-- ===========================================================================
-- Functions: children and parents
--
-- A parent and its child live on two shards: the parent's step records its
-- intent in its own shard (a `children` row and a `child` task), a separate
-- transaction carries it to the child's shard (starting it, idempotently,
-- under an id derived from the parent's id and step); the child's end comes
-- back the same way (a `parent` task in the child's shard, then a
-- transaction in the parent's).
-- ===========================================================================

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


-- ===========================================================================
-- Functions: the fleet and operators
-- ===========================================================================

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

-- Every sharded workflow name in use, by a skip scan of workflows' primary
-- key: one probe per name, not a read of every workflow. A loop of
-- single-table statements rather than a recursive CTE, which Citus refuses on
-- distributed tables.
CREATE FUNCTION flows_shard_names() RETURNS SETOF text LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_name text;
BEGIN
    SELECT min(name) INTO v_name FROM workflows;
    WHILE v_name IS NOT NULL LOOP
        RETURN NEXT v_name;
        SELECT min(name) INTO v_name FROM workflows WHERE name > v_name;
    END LOOP;
END $$;
