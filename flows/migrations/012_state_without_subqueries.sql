-- The replay state built from plain single-table statements.
--
-- On Citus, a function running with plan_cache_mode = force_generic_plan
-- (the claims, which flows_state_v3 inherits it from) cannot plan a
-- subquery in FROM over a distributed table ("could not create distributed
-- plan"), while a statement on one table filtered by its shard key is
-- routed to that shard. Same answer as before; on plain PostgreSQL the
-- same cost.
CREATE OR REPLACE FUNCTION flows_state_v3(p_shard text, p_workflow_id uuid, p_task jsonb, p_after integer,
                                          p_now timestamptz)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_workflow json;
    v_first integer;
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
