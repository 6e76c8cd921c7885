-- name: lock_durable_by_ids
SELECT task_id, tenant_id, evicted, body FROM durable_logs
WHERE task_id = ANY($1::text[]) FOR UPDATE;

-- name: durable_put
INSERT INTO durable_logs (task_id, tenant_id, evicted, body)
SELECT * FROM unnest($1::text[], $2::text[], $3::boolean[], $4::text[])
ON CONFLICT (task_id) DO UPDATE SET evicted = excluded.evicted, body = excluded.body;

-- name: durable_get
SELECT task_id, tenant_id, evicted, body FROM durable_logs
WHERE tenant_id = $1 AND task_id = $2;

-- name: durable_evicted
SELECT tenant_id, task_id FROM durable_logs WHERE evicted LIMIT $1;
