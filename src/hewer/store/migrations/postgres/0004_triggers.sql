-- Where a run came from: the task that spawned it, or the event that triggered it.
ALTER TABLE runs ADD COLUMN parent_run_id text;
ALTER TABLE runs ADD COLUMN parent_task_id text;
ALTER TABLE runs ADD COLUMN child_index integer;
ALTER TABLE runs ADD COLUMN child_key text;
ALTER TABLE runs ADD COLUMN event_id text;
ALTER TABLE runs ADD COLUMN event_key text;
ALTER TABLE runs ADD COLUMN triggered_by text NOT NULL DEFAULT 'manual';
-- A child key names one child per parent task: a repeated spawn finds the first.
CREATE INDEX runs_child_key ON runs (parent_task_id, child_key) WHERE child_key IS NOT NULL;
CREATE INDEX runs_parent_task ON runs (parent_task_id) WHERE parent_task_id IS NOT NULL;
CREATE INDEX runs_event ON runs (event_id) WHERE event_id IS NOT NULL;

CREATE TABLE events (
    id                  text COLLATE "C" PRIMARY KEY,
    tenant_id           text NOT NULL,
    key                 text NOT NULL,
    payload             text NOT NULL,
    additional_metadata text,
    priority            integer,
    scope               text,
    created_at          double precision NOT NULL
);
CREATE INDEX events_tenant_created ON events (tenant_id, created_at);

-- Runs to start once, at trigger_at; run_id is set when one did.
CREATE TABLE scheduled_runs (
    id                  text COLLATE "C" PRIMARY KEY,
    tenant_id           text NOT NULL,
    workflow_name       text NOT NULL,
    trigger_at          double precision NOT NULL,
    input               text NOT NULL,
    additional_metadata text,
    priority            integer,
    created_at          double precision NOT NULL,
    run_id              text
);
CREATE INDEX scheduled_runs_due ON scheduled_runs (trigger_at) WHERE run_id IS NULL;
CREATE INDEX scheduled_runs_tenant ON scheduled_runs (tenant_id, trigger_at);

-- Runs to start at every tick of a cron expression; next_at is the next tick to fire.
CREATE TABLE crons (
    id                  text COLLATE "C" PRIMARY KEY,
    tenant_id           text NOT NULL,
    workflow_name       text NOT NULL,
    name                text NOT NULL,
    expression          text NOT NULL,
    input               text NOT NULL,
    additional_metadata text,
    priority            integer,
    created_at          double precision NOT NULL,
    next_at             double precision NOT NULL,
    declared            boolean NOT NULL DEFAULT false,
    enabled             boolean NOT NULL DEFAULT true,
    UNIQUE (tenant_id, workflow_name, name)
);
CREATE INDEX crons_due ON crons (next_at) WHERE enabled;

-- Idempotency keys of workflows: which run took a key, and until when it holds it.
CREATE TABLE idempotency_keys (
    tenant_id   text COLLATE "C" NOT NULL,
    workflow_id text COLLATE "C" NOT NULL,
    key         text NOT NULL,
    run_id      text COLLATE "C" NOT NULL,
    expires_at  double precision NOT NULL,
    method      text NOT NULL,
    PRIMARY KEY (tenant_id, workflow_id, key)
);

-- A task waiting on its conditions once its parents are done: what it has seen so far;
-- when its next sleep is due is a table of its own (an index on a column of tasks would
-- cost every update of the hot path).
ALTER TABLE tasks ADD COLUMN waiting text;
CREATE TABLE task_wakes (
    task_id text COLLATE "C" PRIMARY KEY,
    wake_at double precision NOT NULL
);
CREATE INDEX task_wakes_due ON task_wakes (wake_at);
-- Which waiting tasks an event of a key may wake.
CREATE TABLE task_event_waits (
    tenant_id text COLLATE "C" NOT NULL,
    event_key text NOT NULL,
    task_id   text COLLATE "C" NOT NULL,
    PRIMARY KEY (tenant_id, event_key, task_id)
);
CREATE INDEX task_event_waits_task ON task_event_waits (task_id);

-- Event filters; the payload of the one that let an event's run through.
ALTER TABLE runs ADD COLUMN filter_payload text;
CREATE TABLE event_filters (
    id          text COLLATE "C" PRIMARY KEY,
    tenant_id   text COLLATE "C" NOT NULL,
    workflow_id text COLLATE "C" NOT NULL,
    scope       text NOT NULL,
    expression  text NOT NULL,
    payload     text NOT NULL,
    declarative boolean NOT NULL DEFAULT false,
    created_at  double precision NOT NULL,
    updated_at  double precision NOT NULL
);
CREATE INDEX event_filters_workflow ON event_filters (tenant_id, workflow_id, scope);
