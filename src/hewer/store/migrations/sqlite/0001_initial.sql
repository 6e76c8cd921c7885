-- Initial schema. Times are UNIX epoch seconds (REAL), JSON documents are TEXT.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE tenants (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);

CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    name       TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL
);

CREATE TABLE workflows (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    name        TEXT NOT NULL,
    version_id  TEXT NOT NULL,
    definition  TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE runs (
    id                  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL REFERENCES tenants (id),
    workflow_id         TEXT NOT NULL REFERENCES workflows (id),
    workflow_name       TEXT NOT NULL,
    status              TEXT NOT NULL,
    input               TEXT NOT NULL,
    additional_metadata TEXT,
    priority            INTEGER NOT NULL,
    sticky              TEXT,            -- soft | hard: later tasks go to sticky_worker_id
    sticky_worker_id    TEXT,
    created_at          REAL NOT NULL,
    finished_at         REAL
);
CREATE INDEX runs_tenant_created ON runs (tenant_id, created_at);

-- One row per task of a run; all attempts share it (retry_count is the live attempt).
CREATE TABLE tasks (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    tenant_id        TEXT NOT NULL REFERENCES tenants (id),
    run_id           TEXT NOT NULL REFERENCES runs (id),
    step_id          TEXT NOT NULL,
    readable_id      TEXT NOT NULL,
    action_id        TEXT NOT NULL,
    status           TEXT NOT NULL,
    retry_count      INTEGER NOT NULL DEFAULT 0,  -- attempt number; fences late reports
    app_retries      INTEGER NOT NULL DEFAULT 0,  -- attempts that failed in user code
    reassignments    INTEGER NOT NULL DEFAULT 0,  -- attempts lost with their worker
    max_retries      INTEGER NOT NULL DEFAULT 0,
    backoff_factor   REAL,
    backoff_max      REAL,
    priority         INTEGER NOT NULL,
    parents          TEXT NOT NULL,
    slot_requests    TEXT NOT NULL,
    desired_labels   TEXT NOT NULL DEFAULT '[]',
    desired_worker_id TEXT,
    concurrency      TEXT NOT NULL DEFAULT '[]',  -- the GateClaims the task must pass
    rate_limits      TEXT NOT NULL DEFAULT '[]',  -- the RateClaims it consumes at start
    timeout_s        REAL NOT NULL,
    schedule_timeout_s REAL NOT NULL,
    worker_id        TEXT,
    slot_released    INTEGER NOT NULL DEFAULT 0,
    available_at     REAL NOT NULL DEFAULT 0,
    output           TEXT,
    error            TEXT,
    created_at       REAL NOT NULL,
    queued_at        REAL,
    started_at       REAL,
    timeout_at       REAL,
    finished_at      REAL
);
CREATE INDEX tasks_run ON tasks (run_id);
CREATE INDEX tasks_status ON tasks (status, tenant_id);
CREATE INDEX tasks_worker ON tasks (worker_id) WHERE status = 'running';
CREATE INDEX tasks_timeout ON tasks (timeout_at) WHERE status = 'running';

-- One row per attempt. holds_slot: the attempt occupies slot units on its worker. It can
-- outlive the task's own state: a cancelled or timed-out attempt whose worker reports when
-- the body really returned keeps its slot until then.
CREATE TABLE task_attempts (
    task_id     TEXT NOT NULL REFERENCES tasks (id),
    retry_count INTEGER NOT NULL,
    worker_id   TEXT NOT NULL,
    assigned_at REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    outcome     TEXT,
    holds_slot  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, retry_count)
);
CREATE INDEX attempts_holding ON task_attempts (worker_id) WHERE holds_slot = 1;

CREATE TABLE workers (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL REFERENCES tenants (id),
    name              TEXT NOT NULL,
    actions           TEXT NOT NULL,
    slot_config       TEXT NOT NULL,
    labels            TEXT NOT NULL,
    runtime_info      TEXT NOT NULL,
    status            TEXT NOT NULL,
    status_reason     TEXT NOT NULL,
    status_changed_at REAL NOT NULL,
    last_heartbeat_at REAL,
    created_at        REAL NOT NULL
);
CREATE INDEX workers_tenant ON workers (tenant_id);

CREATE TABLE task_logs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    created_at  REAL NOT NULL,
    level       TEXT,
    message     TEXT NOT NULL,
    retry_count INTEGER
);
CREATE INDEX task_logs_task ON task_logs (task_id, id);

CREATE TABLE rate_limits (
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    key        TEXT NOT NULL,
    limit_value INTEGER NOT NULL,
    duration_s REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
