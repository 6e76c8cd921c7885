-- Initial PostgreSQL schema: the same tables and columns as SQLite's after 0002.
-- Times are UNIX epoch seconds as double precision (a float8 round-trips the engine's
-- floats exactly). JSON the store hands back as text (run input and metadata, task claims,
-- outputs, errors) is kept as text: jsonb would reorder keys and respace it, and an output
-- need not be JSON at all. JSON the store parses itself (definitions, worker fields) is jsonb.
-- No foreign keys on the hot tables: every insert would pay for a lookup the engine already
-- made. Keys are COLLATE "C": byte order as in SQLite whatever the database's locale, and
-- cheaper comparisons.

CREATE TABLE meta (
    key   text COLLATE "C" PRIMARY KEY,
    value text NOT NULL
);

-- The last queue position handed out; a transaction reserving positions keeps this row
-- locked until it commits, so positions are taken in commit order.
CREATE TABLE task_seq (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    last bigint NOT NULL
);
INSERT INTO task_seq (one, last) VALUES (true, 0);

CREATE TABLE tenants (
    id         text COLLATE "C" PRIMARY KEY,
    name       text COLLATE "C" NOT NULL UNIQUE,
    created_at double precision NOT NULL
);

CREATE TABLE api_tokens (
    id         text COLLATE "C" PRIMARY KEY,
    tenant_id  text COLLATE "C" NOT NULL REFERENCES tenants (id),
    name       text COLLATE "C" NOT NULL,
    created_at double precision NOT NULL,
    expires_at double precision NOT NULL,
    revoked_at double precision
);

CREATE TABLE workflow_versions (
    id          text COLLATE "C" PRIMARY KEY,
    workflow_id text COLLATE "C" NOT NULL,
    tenant_id   text COLLATE "C" NOT NULL,
    name        text COLLATE "C" NOT NULL,
    definition  jsonb NOT NULL,
    checksum    text NOT NULL,
    created_at  double precision NOT NULL
);
CREATE INDEX workflow_versions_workflow ON workflow_versions (workflow_id);

CREATE TABLE workflows (
    id         text COLLATE "C" PRIMARY KEY,
    tenant_id  text COLLATE "C" NOT NULL REFERENCES tenants (id),
    name       text COLLATE "C" NOT NULL,
    version_id text COLLATE "C" NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE runs (
    id                  text COLLATE "C" PRIMARY KEY,
    tenant_id           text COLLATE "C" NOT NULL,
    workflow_id         text COLLATE "C" NOT NULL,
    workflow_name       text NOT NULL,
    version_id          text COLLATE "C" NOT NULL,
    status              text COLLATE "C" NOT NULL,  -- queued until finished (RUNNING: see tasks)
    input               text NOT NULL,
    additional_metadata text,
    priority            integer NOT NULL,
    task_count          integer NOT NULL,
    first_seq           bigint NOT NULL,  -- its tasks: first_seq .. + task_count - 1
    sticky              text,             -- soft | hard: later tasks go to sticky_worker_id
    sticky_worker_id    text COLLATE "C",
    desired_labels      text,             -- the trigger's, JSON; win over the tasks' own
    created_at          double precision NOT NULL,
    finished_at         double precision
);
CREATE INDEX runs_tenant_created ON runs (tenant_id, created_at, first_seq);

-- One row per task of a run; all attempts share it (retry_count is the live attempt).
-- A run's tasks are consecutive rows (first_seq onwards): found by primary key range.
CREATE TABLE tasks (
    seq               bigint PRIMARY KEY,
    id                text COLLATE "C" NOT NULL UNIQUE,
    tenant_id         text COLLATE "C" NOT NULL,
    run_id            text COLLATE "C" NOT NULL,
    readable_id       text COLLATE "C" NOT NULL,
    action_id         text COLLATE "C" NOT NULL,
    status            text COLLATE "C" NOT NULL,
    priority          integer NOT NULL,
    retry_count       integer NOT NULL DEFAULT 0,  -- the live attempt; fences late reports
    app_retries       integer NOT NULL DEFAULT 0,  -- attempts that failed in user code
    reassignments     integer NOT NULL DEFAULT 0,  -- attempts lost with their worker
    worker_id         text COLLATE "C",
    acked             boolean NOT NULL DEFAULT false,  -- the worker said STARTED
    slot_released     boolean NOT NULL DEFAULT false,
    desired_worker_id text COLLATE "C",
    claims            text,                        -- concurrency and rate-limit claims
    available_at      double precision NOT NULL DEFAULT 0,
    queued_at         double precision,
    schedule_deadline double precision,
    assigned_at       double precision,
    started_at        double precision,
    timeout_at        double precision,
    finished_at       double precision,
    output            text,
    error             text,
    created_at        double precision NOT NULL
);
-- The queues, in the scheduler's order.
CREATE INDEX tasks_queue ON tasks (tenant_id, action_id, priority DESC, seq)
    WHERE status = 'queued';
CREATE INDEX tasks_schedule ON tasks (schedule_deadline) WHERE status = 'queued';
-- Running tasks (few: at most the slots of all workers), by deadline and by worker.
CREATE INDEX tasks_running ON tasks (timeout_at) WHERE status = 'running';
CREATE INDEX tasks_running_on ON tasks (worker_id) WHERE status = 'running';
CREATE INDEX tasks_unacked ON tasks (assigned_at) WHERE status = 'running' AND NOT acked;
-- Unfinished tasks with concurrency claims (rebuilding gates after a restart): few, while
-- the table holds every finished task too.
CREATE INDEX tasks_claims ON tasks (seq)
    WHERE claims IS NOT NULL AND status IN ('pending', 'queued', 'running');

-- An attempt that ended while its task went on, or whose body may still run.
CREATE TABLE task_attempts (
    task_id     text COLLATE "C" NOT NULL,
    retry_count integer NOT NULL,
    worker_id   text COLLATE "C" NOT NULL,
    assigned_at double precision,
    started_at  double precision,
    finished_at double precision,
    outcome     text COLLATE "C" NOT NULL,
    holds_slot  boolean NOT NULL DEFAULT false,
    error       text,
    PRIMARY KEY (task_id, retry_count)
);
CREATE INDEX attempts_worker ON task_attempts (worker_id) WHERE holds_slot OR outcome = 'lost';
CREATE INDEX attempts_holding ON task_attempts (task_id) WHERE holds_slot;

CREATE TABLE workers (
    id                text COLLATE "C" PRIMARY KEY,
    tenant_id         text COLLATE "C" NOT NULL REFERENCES tenants (id),
    name              text COLLATE "C" NOT NULL,
    actions           jsonb NOT NULL,
    slot_config       jsonb NOT NULL,
    labels            jsonb NOT NULL,
    runtime_info      jsonb NOT NULL,
    status            text COLLATE "C" NOT NULL,
    status_reason     text NOT NULL,
    status_changed_at double precision NOT NULL,
    last_heartbeat_at double precision,
    created_at        double precision NOT NULL,
    pos               bigint GENERATED ALWAYS AS IDENTITY  -- insertion order, for ties
);
CREATE INDEX workers_tenant ON workers (tenant_id, created_at, pos);

CREATE TABLE task_logs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   text COLLATE "C" NOT NULL,
    task_id     text COLLATE "C" NOT NULL,
    created_at  double precision NOT NULL,
    level       text,
    message     text NOT NULL,
    retry_count integer
);
CREATE INDEX task_logs_task ON task_logs (task_id, id);

CREATE TABLE rate_limits (
    tenant_id   text COLLATE "C" NOT NULL REFERENCES tenants (id),
    key         text COLLATE "C" NOT NULL,
    limit_value integer NOT NULL,
    duration_s  double precision NOT NULL,
    updated_at  double precision NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
