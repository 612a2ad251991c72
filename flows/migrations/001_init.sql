-- flows schema. Every table carries the shard key (workflows.name, elsewhere
-- workflow_name) first in its primary key and in every index, and tenant_id,
-- so each workflow's rows stay together when distributed with Citus.

CREATE TABLE workflows (
    name             text        NOT NULL,          -- sharded: <base>-shard-<k>
    id               uuid        NOT NULL,          -- UUIDv7
    tenant_id        uuid        NOT NULL,
    version          integer     NOT NULL DEFAULT 1,
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    input            jsonb,
    output           jsonb,
    error            text,
    sequence_num     integer     NOT NULL DEFAULT 0,
    activity_results jsonb       NOT NULL DEFAULT '{}'::jsonb,
    waiting_for      text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    PRIMARY KEY (name, id)
);

CREATE TABLE activities (
    workflow_name    text        NOT NULL,
    id               uuid        NOT NULL,
    workflow_id      uuid        NOT NULL,
    tenant_id        uuid        NOT NULL,
    name             text        NOT NULL,
    sequence_num     integer     NOT NULL,
    status           text        NOT NULL DEFAULT 'scheduled'
                     CHECK (status IN ('scheduled', 'running', 'completed', 'failed', 'cancelled')),
    input            jsonb,
    output           jsonb,
    error            text,
    attempt          integer     NOT NULL DEFAULT 0,   -- failed attempts so far
    max_attempts     integer     NOT NULL DEFAULT 1,
    next_retry_at    timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    PRIMARY KEY (workflow_name, id),
    CONSTRAINT activities_one_per_step UNIQUE (workflow_name, workflow_id, sequence_num)
);

CREATE TABLE history_events (
    workflow_name    text        NOT NULL,
    id               uuid        NOT NULL,
    workflow_id      uuid        NOT NULL,
    tenant_id        uuid        NOT NULL,
    sequence_num     integer     NOT NULL,
    event_type       text        NOT NULL,
    event_data       jsonb       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (workflow_name, id)
);
CREATE INDEX history_events_by_workflow ON history_events (workflow_name, workflow_id, sequence_num, id);

CREATE TABLE timers (
    workflow_name    text        NOT NULL,
    id               uuid        NOT NULL,
    workflow_id      uuid        NOT NULL,
    tenant_id        uuid        NOT NULL,
    sequence_num     integer     NOT NULL,
    fire_at          timestamptz NOT NULL,
    fired            boolean     NOT NULL DEFAULT false,
    fired_at         timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_name, id),
    CONSTRAINT timers_one_per_step UNIQUE (workflow_name, workflow_id, sequence_num)
);

CREATE TABLE signals (
    workflow_name    text        NOT NULL,
    id               uuid        NOT NULL,
    workflow_id      uuid        NOT NULL,
    tenant_id        uuid        NOT NULL,
    signal_name      text        NOT NULL,
    payload          jsonb,
    consumed         boolean     NOT NULL DEFAULT false,
    consumed_seq     integer,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    consumed_at      timestamptz,
    PRIMARY KEY (workflow_name, id)
);
CREATE INDEX signals_unconsumed ON signals (workflow_name, workflow_id, created_at, id) WHERE NOT consumed;

-- Work for the fleet. A task is due when visibility_timeout <= now(); a
-- leased activity task has it pushed forward and lease_owner set.
CREATE TABLE task_queue (
    workflow_name      text        NOT NULL,
    id                 uuid        NOT NULL,
    workflow_id        uuid        NOT NULL,
    tenant_id          uuid        NOT NULL,
    task_type          text        NOT NULL CHECK (task_type IN ('workflow', 'activity', 'timer')),
    target_id          uuid,                         -- the activity or timer row
    visibility_timeout timestamptz NOT NULL DEFAULT now(),
    lease_owner        text,
    lease_seconds      double precision,             -- an activity attempt's lease
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_name, id)
);
CREATE INDEX task_queue_due ON task_queue (workflow_name, visibility_timeout);
CREATE INDEX task_queue_by_workflow ON task_queue (workflow_name, workflow_id);
CREATE INDEX task_queue_by_owner ON task_queue (workflow_name, lease_owner) WHERE lease_owner IS NOT NULL;
-- At most one pending workflow task per workflow.
CREATE UNIQUE INDEX task_queue_one_workflow_task ON task_queue (workflow_name, workflow_id)
    WHERE task_type = 'workflow';

CREATE TABLE dead_letter_queue (
    workflow_name    text        NOT NULL,
    id               uuid        NOT NULL,
    workflow_id      uuid        NOT NULL,
    tenant_id        uuid        NOT NULL,
    error            text        NOT NULL,
    input            jsonb,
    sequence_num     integer     NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_name, id)
);
CREATE INDEX dead_letter_queue_by_workflow ON dead_letter_queue (workflow_name, workflow_id);
