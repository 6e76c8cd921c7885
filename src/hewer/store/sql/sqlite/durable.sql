-- name: durable_by_ids
SELECT task_id, tenant_id, evicted, body FROM durable_logs
WHERE task_id IN (SELECT value FROM json_each(:ids));

-- name: durable_put
INSERT INTO durable_logs (task_id, tenant_id, evicted, body) VALUES (?, ?, ?, ?)
ON CONFLICT (task_id) DO UPDATE SET evicted = excluded.evicted, body = excluded.body;

-- name: durable_get
SELECT task_id, tenant_id, evicted, body FROM durable_logs
WHERE tenant_id = :tenant_id AND task_id = :task_id;

-- name: durable_evicted
SELECT tenant_id, task_id FROM durable_logs WHERE evicted = 1 LIMIT :limit;
