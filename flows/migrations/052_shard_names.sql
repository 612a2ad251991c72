-- Every sharded workflow name in use, by a skip scan of workflows' primary
-- key: one probe per name, not a read of every workflow. A PL/pgSQL loop of
-- single-table statements rather than a recursive CTE, which Citus refuses
-- on distributed tables (on Citus each probe asks every shard for its
-- least name past the last one, still one index probe a shard).
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
