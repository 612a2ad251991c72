-- Sending a signal in one statement (it was six round trips: BEGIN, lock,
-- insert, enqueue, notify, COMMIT), so the sender's commit, and with it the
-- workflow's wake-up, comes that much sooner.
--
-- Locks the workflow row (FOR SHARE: it waits for a replay in progress, so a
-- replay never misses a signal it should have seen), and, while it runs,
-- stores the signal and, when the workflow waits for exactly this signal,
-- asks for a replay and wakes the shard's workers. Returns the workflow's
-- status (the signal is stored unless the workflow ended), NULL when this tenant
-- (NULL: any) has no such workflow.
CREATE FUNCTION flows_send_signal(
    p_shard text, p_workflow_id uuid, p_tenant_id uuid, p_signal_id uuid, p_signal_name text, p_payload jsonb,
    p_task_id uuid, p_channel text
) RETURNS text LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    w record;
BEGIN
    SELECT tenant_id, status, waiting_for INTO w FROM workflows
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
        INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type)
        VALUES (p_shard, p_task_id, p_workflow_id, w.tenant_id, 'workflow')
        ON CONFLICT (workflow_name, workflow_id) WHERE task_type = 'workflow' DO NOTHING;
        PERFORM pg_notify(p_channel, 'w');
    END IF;
    RETURN w.status;
END $$;
