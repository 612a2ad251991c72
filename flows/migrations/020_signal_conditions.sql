-- Conditional signals: a deduplication key, and "only if the workflow waits
-- for it". Both are decided in the statement that stores the signal, under
-- the workflow's row lock, so concurrent senders cannot both pass a check
-- that only one of them should (a status read followed by a send can).
--
-- flows_send_signal (006, as 009 left it) stays for code that still calls
-- it; it stores signals without a key.

-- At most one signal per workflow id under one key, ever (across its runs).
ALTER TABLE signals ADD COLUMN dedup_key text;
CREATE UNIQUE INDEX signals_dedup_key ON signals (workflow_name, workflow_id, dedup_key)
    WHERE dedup_key IS NOT NULL;

-- Store a signal for a workflow that has not ended, like flows_send_signal
-- (the replay it asks for carries the workflow's version), with two optional
-- conditions:
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
