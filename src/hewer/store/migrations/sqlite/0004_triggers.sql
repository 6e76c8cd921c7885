-- Where a run came from: the task that spawned it, or the event that triggered it.
ALTER TABLE runs ADD COLUMN parent_run_id TEXT;
ALTER TABLE runs ADD COLUMN parent_task_id TEXT;
ALTER TABLE runs ADD COLUMN child_index INTEGER;
ALTER TABLE runs ADD COLUMN child_key TEXT;
ALTER TABLE runs ADD COLUMN event_id TEXT;
ALTER TABLE runs ADD COLUMN event_key TEXT;
ALTER TABLE runs ADD COLUMN triggered_by TEXT NOT NULL DEFAULT 'manual';
-- A child key names one child per parent task: a repeated spawn finds the first.
CREATE INDEX runs_child_key ON runs (parent_task_id, child_key) WHERE child_key IS NOT NULL;
CREATE INDEX runs_parent_task ON runs (parent_task_id) WHERE parent_task_id IS NOT NULL;
CREATE INDEX runs_event ON runs (event_id) WHERE event_id IS NOT NULL;

CREATE TABLE events (
    id                  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL,
    key                 TEXT NOT NULL,
    payload             TEXT NOT NULL,
    additional_metadata TEXT,
    priority            INTEGER,
    scope               TEXT,
    created_at          REAL NOT NULL
);
CREATE INDEX events_tenant_created ON events (tenant_id, created_at);

-- Runs to start once, at trigger_at; run_id is set when one did.
CREATE TABLE scheduled_runs (
    id                  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL,
    workflow_name       TEXT NOT NULL,
    trigger_at          REAL NOT NULL,
    input               TEXT NOT NULL,
    additional_metadata TEXT,
    priority            INTEGER,
    created_at          REAL NOT NULL,
    run_id              TEXT
);
CREATE INDEX scheduled_runs_due ON scheduled_runs (trigger_at) WHERE run_id IS NULL;
CREATE INDEX scheduled_runs_tenant ON scheduled_runs (tenant_id, trigger_at);

-- Runs to start at every tick of a cron expression; next_at is the next tick to fire.
CREATE TABLE crons (
    id                  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL,
    workflow_name       TEXT NOT NULL,
    name                TEXT NOT NULL,
    expression          TEXT NOT NULL,
    input               TEXT NOT NULL,
    additional_metadata TEXT,
    priority            INTEGER,
    created_at          REAL NOT NULL,
    next_at             REAL NOT NULL,
    declared            INTEGER NOT NULL DEFAULT 0,
    enabled             INTEGER NOT NULL DEFAULT 1,
    UNIQUE (tenant_id, workflow_name, name)
);
CREATE INDEX crons_due ON crons (next_at) WHERE enabled = 1;

-- Idempotency keys of workflows: which run took a key, and until when it holds it.
CREATE TABLE idempotency_keys (
    tenant_id   TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    key         TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    expires_at  REAL NOT NULL,
    method      TEXT NOT NULL,
    PRIMARY KEY (tenant_id, workflow_id, key)
);

-- A task waiting on its conditions once its parents are done: what it has seen so far;
-- when its next sleep is due is a table of its own (an index on a column of tasks would
-- cost every update of the hot path).
ALTER TABLE tasks ADD COLUMN waiting TEXT;
CREATE TABLE task_wakes (
    task_id TEXT PRIMARY KEY,
    wake_at REAL NOT NULL
);
CREATE INDEX task_wakes_due ON task_wakes (wake_at);
-- Which waiting tasks an event of a key may wake.
CREATE TABLE task_event_waits (
    tenant_id TEXT NOT NULL,
    event_key TEXT NOT NULL,
    task_id   TEXT NOT NULL,
    PRIMARY KEY (tenant_id, event_key, task_id)
);
CREATE INDEX task_event_waits_task ON task_event_waits (task_id);

-- Event filters; the payload of the one that let an event's run through.
ALTER TABLE runs ADD COLUMN filter_payload TEXT;
CREATE TABLE event_filters (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    scope       TEXT NOT NULL,
    expression  TEXT NOT NULL,
    payload     TEXT NOT NULL,
    declarative INTEGER NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE INDEX event_filters_workflow ON event_filters (tenant_id, workflow_id, scope);
