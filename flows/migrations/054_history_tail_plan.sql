-- A step reads only the new end of a long history, whatever the statistics.
--
-- flows_state_v3 runs under the claims' and locks' plan_cache_mode =
-- force_generic_plan. Once autovacuum has analyzed history_events, the
-- generic plan of the tail read (sequence_num past two unknown bounds) can
-- be a sequential scan: with one busy workflow in its shard the planner
-- guesses a third of a third of the table matches. Each step of a loop of
-- 10,000 activities then read the whole history to return a few rows, and
-- the lock before the step went from 0.18 to 2.4 ms per call over the loop.
-- The read is now planned for its actual bounds at each call (EXECUTE ...
-- USING), so it is an index range scan of the workflow's last events; the
-- planning costs a few tens of microseconds. On Citus the statement is
-- still routed to the one shard of p_shard. Otherwise as in 012.
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
    IF v_first IS NULL THEN
        v_events := '[]';
    ELSE
        EXECUTE 'SELECT coalesce(json_agg(json_build_array(coalesce(step, sequence_num), event_type, event_data)'
                ' ORDER BY sequence_num, created_at, id), ''[]'') FROM history_events'
                ' WHERE workflow_name = $1 AND workflow_id = $2 AND sequence_num > $3'
            INTO v_events USING p_shard, p_workflow_id, greatest(v_first - 1, coalesce(p_after, -1));
    END IF;
    SELECT coalesce(json_agg(json_build_array(id, signal_name, payload) ORDER BY created_at, id), '[]')
    INTO v_signals FROM signals WHERE workflow_name = p_shard AND workflow_id = p_workflow_id AND NOT consumed;
    RETURN json_build_object('task', p_task, 'now', p_now, 'workflow', v_workflow, 'events', v_events,
                             'signals', v_signals, 'tail', p_after IS NOT NULL)::text;
END $$;
