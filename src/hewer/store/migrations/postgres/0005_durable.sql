-- Durable tasks: one event log per task, written whole (its entries are few and always
-- read together). The body holds client data (memoised values, event payloads), so it is
-- text, as the other client data.
CREATE TABLE durable_logs (
    task_id   text COLLATE "C" PRIMARY KEY,
    tenant_id text COLLATE "C" NOT NULL,
    evicted   boolean NOT NULL DEFAULT false,
    body      text NOT NULL
);
-- Evicted tasks are checked again when the engine starts.
CREATE INDEX durable_logs_evicted ON durable_logs (task_id) WHERE evicted;
