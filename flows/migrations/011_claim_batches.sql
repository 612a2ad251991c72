-- Claiming several due workflow tasks of one shard in one transaction, when
-- a worker finds a backlog there: one claim and one commit for up to
-- p_limit replays instead of one each (one at a time while the queue is
-- short, so a wake-up is never held up by others' work).

-- Up to p_limit claims as flows_claim_replay_v3 makes one, each task with
-- its workflow locked; returns {"states": [state, ...], "next": seconds
-- until the shard's next task of these versions is due (NULL: none)}.
CREATE FUNCTION flows_claim_replays(
    p_shard text, p_versions integer[], p_fired_event_ids uuid[], p_channel text, p_whole_below integer,
    p_limit integer
) RETURNS text LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now timestamptz := now();
    v_states text[] := '{}';
    v_state text;
    v_next timestamptz;
    i integer;
BEGIN
    FOR i IN 1 .. p_limit LOOP
        v_state := flows_claim_replay_v3(p_shard, p_versions, p_fired_event_ids[i], p_channel, p_whole_below);
        EXIT WHEN v_state LIKE '{"next"%';
        v_states := v_states || v_state;
    END LOOP;
    v_next := flows_shard_due(p_shard, p_versions, NULL);
    RETURN '{"states": [' || array_to_string(v_states, ',') || '], "next": '
        || coalesce(extract(epoch FROM v_next - v_now)::text, 'null') || '}';
END $$;
