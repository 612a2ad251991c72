-- What the console and the operator's CLI read (flows list, the workflow
-- page, prune), each by an index that leads with the shard key.

-- The workflow list, newest first, one index-ordered scan per shard that
-- stops after a page (keyset on created_at, id); with a status filter the
-- second index keeps the scan to that status (a few running workflows among
-- 100,000 finished ones), and prune finds finished workflows by it.
CREATE INDEX workflows_by_created ON workflows (name, created_at DESC, id DESC);
CREATE INDEX workflows_by_status ON workflows (name, status, created_at DESC, id DESC);

-- Every signal of a workflow, consumed or not (the workflow page, export,
-- prune); signals_unconsumed covers the pending ones only.
CREATE INDEX signals_by_workflow ON signals (workflow_name, workflow_id);

-- A dead letter stays after its workflow is retried, as the record of that
-- failure: retried_at says when it was sent back to run.
ALTER TABLE dead_letter_queue ADD COLUMN retried_at timestamptz;
