-- A step's read of the end of its history keeps a cached plan again, and
-- the plan is an index range scan whatever the statistics.
--
-- 054 made the tail read EXECUTE ... USING so that a generic plan could not
-- turn it into a sequential scan. But a plan made at each call is not
-- cheap: with the bound past the column's histogram the planner reads the
-- index's end to estimate it, and on a 20,000-event history one call of
-- flows_state_v3 took 1.16 ms, most of it planning. The read is static SQL
-- again, with the range bounded on both sides by variables: a generic plan
-- estimates a two-sided range of unknown bounds at 0.5 % of the rows (one
-- side alone: a third), so it takes the (workflow_name, workflow_id,
-- sequence_num) index for any history, and is made once per connection.
-- The same call takes 0.03 ms there. Otherwise as in 054.
CREATE OR REPLACE FUNCTION flows_state_v3(p_shard text, p_workflow_id uuid, p_task jsonb, p_after integer,
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
