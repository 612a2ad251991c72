-- A signal whose payload cannot decode into what its wait expects is
-- rejected: consumed by no step (consumed_seq stays NULL), with the reason
-- here, while the workflow goes on waiting. The partial index keeps the
-- query of a waiting workflow's rejected signals to an empty scan when it
-- has none.
ALTER TABLE signals ADD COLUMN rejected text;
CREATE INDEX signals_rejected ON signals (workflow_name, workflow_id) WHERE rejected IS NOT NULL;
