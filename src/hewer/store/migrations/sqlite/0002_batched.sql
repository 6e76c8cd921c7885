-- 0002: workflow versions are immutable rows of their own; a task row keeps its state only
-- (its definition lives in the run's version), and an attempt gets a row of its own only
-- once it has ended while its task went on (or while its body may still run). A run's
-- tasks are consecutive rows (first_seq onwards), so no index on tasks.run_id is needed.
-- No foreign keys on the hot tables: every insert would pay for a lookup the engine
-- already made.

CREATE TABLE workflow_versions (
    id          TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    tenant_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    definition  TEXT NOT NULL,
    checksum    TEXT NOT NULL,
    created_at  REAL NOT NULL
);
INSERT INTO workflow_versions (id, workflow_id, tenant_id, name, definition, checksum, created_at)
SELECT version_id, id, tenant_id, name, definition, '', updated_at FROM workflows;

CREATE TABLE workflows_v2 (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    name       TEXT NOT NULL,
    version_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (tenant_id, name)
);
INSERT INTO workflows_v2 (id, tenant_id, name, version_id, created_at, updated_at)
SELECT id, tenant_id, name, version_id, created_at, updated_at FROM workflows;

CREATE TABLE runs_v2 (
    id                  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL,
    workflow_id         TEXT NOT NULL,
    workflow_name       TEXT NOT NULL,
    version_id          TEXT NOT NULL,
    status              TEXT NOT NULL,   -- queued until finished; RUNNING is read off tasks
    input               TEXT NOT NULL,
    additional_metadata TEXT,
    priority            INTEGER NOT NULL,
    task_count          INTEGER NOT NULL,
    first_seq           INTEGER NOT NULL,    -- its tasks: first_seq .. + task_count - 1
    sticky              TEXT,            -- soft | hard: later tasks go to sticky_worker_id
    sticky_worker_id    TEXT,
    desired_labels      TEXT,            -- the trigger's, JSON; win over the tasks' own
    created_at          REAL NOT NULL,
    finished_at         REAL
);
INSERT INTO runs_v2 (id, tenant_id, workflow_id, workflow_name, version_id, status, input,
                     additional_metadata, priority, task_count, first_seq, sticky,
                     sticky_worker_id,
                     desired_labels, created_at, finished_at)
SELECT r.id, r.tenant_id, r.workflow_id, r.workflow_name, w.version_id,
       CASE r.status WHEN 'running' THEN 'queued' ELSE r.status END,
       r.input, r.additional_metadata, r.priority,
       (SELECT count(*) FROM tasks t WHERE t.run_id = r.id),
       coalesce((SELECT min(seq) FROM tasks t WHERE t.run_id = r.id), 0),
       r.sticky, r.sticky_worker_id, NULL, r.created_at, r.finished_at
FROM runs r JOIN workflows w ON w.id = r.workflow_id;

CREATE TABLE tasks_v2 (
    seq               INTEGER PRIMARY KEY,
    id                TEXT NOT NULL UNIQUE,
    tenant_id         TEXT NOT NULL,
    run_id            TEXT NOT NULL,
    readable_id       TEXT NOT NULL,
    action_id         TEXT NOT NULL,
    status            TEXT NOT NULL,
    priority          INTEGER NOT NULL,
    retry_count       INTEGER NOT NULL DEFAULT 0,  -- the live attempt; fences late reports
    app_retries       INTEGER NOT NULL DEFAULT 0,  -- attempts that failed in user code
    reassignments     INTEGER NOT NULL DEFAULT 0,  -- attempts lost with their worker
    worker_id         TEXT,
    acked             INTEGER NOT NULL DEFAULT 0,  -- the worker said STARTED
    slot_released     INTEGER NOT NULL DEFAULT 0,
    desired_worker_id TEXT,
    claims            TEXT,                        -- concurrency and rate-limit claims
    available_at      REAL NOT NULL DEFAULT 0,
    queued_at         REAL,
    schedule_deadline REAL,
    assigned_at       REAL,
    started_at        REAL,
    timeout_at        REAL,
    finished_at       REAL,
    output            TEXT,
    error             TEXT,
    created_at        REAL NOT NULL
);
INSERT INTO tasks_v2 (seq, id, tenant_id, run_id, readable_id, action_id, status, priority,
                      retry_count, app_retries, reassignments, worker_id, acked,
                      slot_released, desired_worker_id, claims, available_at, queued_at,
                      schedule_deadline, assigned_at, started_at, timeout_at, finished_at,
                      output, error, created_at)
SELECT t.seq, t.id, t.tenant_id, t.run_id, t.readable_id, t.action_id, t.status, t.priority,
       t.retry_count, t.app_retries, t.reassignments, t.worker_id,
       coalesce((SELECT a.started_at IS NOT NULL FROM task_attempts a
                 WHERE a.task_id = t.id AND a.retry_count = t.retry_count), 0),
       t.slot_released, t.desired_worker_id,
       CASE WHEN t.concurrency = '[]' AND t.rate_limits = '[]' THEN NULL
            ELSE json_object('gates', json(t.concurrency), 'rates', json(t.rate_limits)) END,
       t.available_at, t.queued_at,
       CASE WHEN t.status = 'queued'
            THEN max(coalesce(t.queued_at, 0), t.available_at) + t.schedule_timeout_s END,
       (SELECT a.assigned_at FROM task_attempts a
        WHERE a.task_id = t.id AND a.retry_count = t.retry_count),
       t.started_at, t.timeout_at, t.finished_at, t.output, t.error, t.created_at
FROM tasks t;

CREATE TABLE task_attempts_v2 (
    task_id     TEXT NOT NULL,
    retry_count INTEGER NOT NULL,
    worker_id   TEXT NOT NULL,
    assigned_at REAL,
    started_at  REAL,
    finished_at REAL,
    outcome     TEXT NOT NULL,
    holds_slot  INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    PRIMARY KEY (task_id, retry_count)
);
INSERT INTO task_attempts_v2 (task_id, retry_count, worker_id, assigned_at, started_at,
                              finished_at, outcome, holds_slot, error)
SELECT a.task_id, a.retry_count, a.worker_id, a.assigned_at, a.started_at, a.finished_at,
       coalesce(a.outcome, 'lost'), a.holds_slot, NULL
FROM task_attempts a JOIN tasks t ON t.id = a.task_id
WHERE a.retry_count < t.retry_count OR (t.status != 'running' AND a.holds_slot = 1);

DROP TABLE task_attempts;
DROP TABLE tasks;
DROP TABLE runs;
DROP TABLE workflows;
ALTER TABLE workflows_v2 RENAME TO workflows;
ALTER TABLE runs_v2 RENAME TO runs;
ALTER TABLE tasks_v2 RENAME TO tasks;
ALTER TABLE task_attempts_v2 RENAME TO task_attempts;

CREATE INDEX workflow_versions_workflow ON workflow_versions (workflow_id);
CREATE INDEX runs_tenant_created ON runs (tenant_id, created_at);
-- The queues, in the scheduler's order.
CREATE INDEX tasks_queue ON tasks (tenant_id, action_id, priority DESC, seq)
    WHERE status = 'queued';
CREATE INDEX tasks_schedule ON tasks (schedule_deadline) WHERE status = 'queued';
-- Running tasks (few: at most the slots of all workers), by execution deadline.
CREATE INDEX tasks_running ON tasks (timeout_at) WHERE status = 'running';
CREATE INDEX tasks_unacked ON tasks (assigned_at) WHERE status = 'running' AND acked = 0;
CREATE INDEX attempts_worker ON task_attempts (worker_id) WHERE holds_slot = 1 OR outcome = 'lost';
