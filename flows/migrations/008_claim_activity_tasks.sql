-- Lease due activity tasks and mark their activities running, each by its
-- primary key.
--
-- As one statement (a data-modifying CTE joined to activities) the planner
-- could not know how many tasks the CTE returns, and with 300,000 rows in
-- activities it sometimes chose a merge join that walked activities_pkey from
-- the start of the shard to the claimed rows: 146 ms a claim instead of 0.9
-- (pg_stat_statements, `python -m loadtest backlog --own-server`), which
-- took the worker fleet to 40 % of its throughput for the rest of the run.
-- Here each leased task's activity is updated by primary key in a loop.
CREATE FUNCTION flows_claim_activity_tasks(p_owner text, p_shards text[], p_limit integer)
RETURNS TABLE (r_shard text, r_task_id uuid, r_workflow_id uuid, r_tenant_id uuid, r_activity_id uuid,
               r_name text, r_sequence_num integer, r_input text, r_attempt integer, r_lost integer)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    t record;
BEGIN
    FOR t IN
        UPDATE task_queue q SET lease_owner = p_owner, deliveries = q.deliveries + 1,
            visibility_timeout = now() + q.lease_seconds * interval '1 second'
        WHERE (q.workflow_name, q.id) IN (
            SELECT d.workflow_name, d.id FROM task_queue d
            WHERE d.workflow_name = ANY(p_shards) AND d.task_type = 'activity' AND d.visibility_timeout <= now()
            ORDER BY d.visibility_timeout LIMIT p_limit FOR UPDATE SKIP LOCKED)
        RETURNING q.workflow_name, q.id, q.workflow_id, q.tenant_id, q.target_id, q.deliveries
    LOOP
        RETURN QUERY
            UPDATE activities a SET status = 'running', updated_at = now()
            WHERE a.workflow_name = t.workflow_name AND a.id = t.target_id
            RETURNING t.workflow_name, t.id, t.workflow_id, t.tenant_id, a.id, a.name, a.sequence_num,
                      a.input::text, a.attempt, t.deliveries - 1;
    END LOOP;
END $$;
