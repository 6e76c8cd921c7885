-- Durable tasks: one event log per task, written whole (its entries are few and always
-- read together). The body holds client data (memoised values, event payloads) as text.
CREATE TABLE durable_logs (
    task_id   TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    evicted   INTEGER NOT NULL DEFAULT 0,
    body      TEXT NOT NULL
);
-- Evicted tasks are checked again when the engine starts.
CREATE INDEX durable_logs_evicted ON durable_logs (task_id) WHERE evicted = 1;
