-- Named queries of the PostgreSQL store for what starts runs besides a direct trigger:
-- events, scheduled runs, crons, and the links of child runs.

-- name: workflows_current
SELECT v.workflow_id, v.tenant_id, v.name, v.id, v.definition
FROM workflows w JOIN workflow_versions v ON v.id = w.version_id
WHERE w.tenant_id = $1 ORDER BY w.name;

-- name: lock_child_runs
SELECT r.parent_task_id, r.child_key, min(r.id) FROM runs r
JOIN unnest($1::text[], $2::text[], $3::text[]) AS v (tenant_id, parent, key)
  ON r.tenant_id = v.tenant_id AND r.parent_task_id = v.parent AND r.child_key = v.key
GROUP BY r.parent_task_id, r.child_key;

-- name: event_insert
INSERT INTO events ({event})
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::integer[], $7::text[], $8::float8[]);

-- name: events_list
SELECT {event} FROM events WHERE tenant_id = $1
AND ($2::text[] IS NULL OR key = ANY($2::text[]))
ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4;

-- name: event_get
SELECT {event} FROM events WHERE tenant_id = $1 AND id = $2;

-- name: schedule_insert
INSERT INTO scheduled_runs ({schedule}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9);

-- name: lock_schedules_by_ids
SELECT {schedule} FROM scheduled_runs WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE;

-- name: schedule_fire
UPDATE scheduled_runs s SET run_id = v.run_id
FROM unnest($1::text[], $2::text[]) AS v (id, run_id) WHERE s.id = v.id;

-- name: schedules_due
SELECT {schedule} FROM scheduled_runs
WHERE run_id IS NULL AND trigger_at <= $1 ORDER BY trigger_at LIMIT $2;

-- name: schedule_next
SELECT min(trigger_at) FROM scheduled_runs WHERE run_id IS NULL;

-- name: schedules_list
SELECT {schedule} FROM scheduled_runs WHERE tenant_id = $1
AND ($2::text IS NULL OR workflow_name = $2)
ORDER BY trigger_at, id LIMIT $3 OFFSET $4;

-- name: schedule_get
SELECT {schedule} FROM scheduled_runs WHERE tenant_id = $1 AND id = $2;

-- name: schedule_delete
DELETE FROM scheduled_runs WHERE tenant_id = $1 AND id = $2;

-- name: cron_insert
INSERT INTO crons ({cron}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12);

-- name: cron_insert_declared
INSERT INTO crons ({cron}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (tenant_id, workflow_name, name) DO NOTHING;

-- name: crons_undeclare
DELETE FROM crons WHERE tenant_id = $1 AND workflow_name = $2 AND declared
AND NOT (name = ANY($3::text[]));

-- name: lock_crons_by_ids
SELECT {cron} FROM crons WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE;

-- name: cron_set_next
UPDATE crons c SET next_at = v.next_at
FROM unnest($1::text[], $2::float8[]) AS v (id, next_at) WHERE c.id = v.id;

-- name: crons_due
SELECT {cron} FROM crons WHERE enabled AND next_at <= $1 ORDER BY next_at LIMIT $2;

-- name: cron_next
SELECT min(next_at) FROM crons WHERE enabled;

-- name: crons_list
SELECT {cron} FROM crons WHERE tenant_id = $1
AND ($2::text IS NULL OR workflow_name = $2) AND ($5::text IS NULL OR name = $5)
ORDER BY created_at, id LIMIT $3 OFFSET $4;

-- name: cron_get
SELECT {cron} FROM crons WHERE tenant_id = $1 AND id = $2;

-- name: cron_delete
DELETE FROM crons WHERE tenant_id = $1 AND id = $2;

-- name: runs_children
SELECT id FROM runs WHERE tenant_id = $1 AND status = 'queued'
AND parent_task_id = ANY($2::text[]);

-- name: lock_idempotency_keys
SELECT k.tenant_id, k.workflow_id, k.key, k.run_id, k.expires_at, k.method,
       coalesce(r.status <> 'queued', true)
FROM idempotency_keys k
JOIN unnest($1::text[], $2::text[], $3::text[]) AS v (tenant_id, workflow_id, key)
  ON k.tenant_id = v.tenant_id AND k.workflow_id = v.workflow_id AND k.key = v.key
LEFT JOIN runs r ON r.id = k.run_id
ORDER BY k.tenant_id, k.workflow_id, k.key
FOR UPDATE OF k;

-- name: idempotency_put
INSERT INTO idempotency_keys (tenant_id, workflow_id, key, run_id, expires_at, method)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::text[])
ON CONFLICT (tenant_id, workflow_id, key) DO UPDATE SET
    run_id = excluded.run_id, expires_at = excluded.expires_at, method = excluded.method;

-- name: event_waiters
SELECT w.tenant_id, w.event_key, w.task_id FROM task_event_waits w
JOIN unnest($1::text[], $2::text[]) AS v (tenant_id, event_key)
  ON w.tenant_id = v.tenant_id AND w.event_key = v.event_key;

-- name: wait_add
INSERT INTO task_event_waits (tenant_id, event_key, task_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING;

-- name: waits_drop
DELETE FROM task_event_waits WHERE task_id = ANY($1::text[]);

-- name: tasks_wake_due
SELECT {task_t} FROM task_wakes w JOIN tasks t ON t.id = w.task_id
WHERE w.wake_at <= $1 ORDER BY w.wake_at LIMIT $2;

-- name: wake_set
INSERT INTO task_wakes (task_id, wake_at) SELECT * FROM unnest($1::text[], $2::float8[])
ON CONFLICT (task_id) DO UPDATE SET wake_at = excluded.wake_at;

-- name: wake_drop
DELETE FROM task_wakes WHERE task_id = ANY($1::text[]);

-- name: filters_of_workflows
SELECT {filter} FROM event_filters WHERE tenant_id = $1 AND workflow_id = ANY($2::text[])
ORDER BY created_at, id;

-- name: filters_list
SELECT {filter} FROM event_filters WHERE tenant_id = $1
AND ($2::text[] IS NULL OR workflow_id = ANY($2::text[]))
AND ($3::text[] IS NULL OR scope = ANY($3::text[]))
ORDER BY created_at, id LIMIT $4 OFFSET $5;

-- name: filter_get
SELECT {filter} FROM event_filters WHERE tenant_id = $1 AND id = $2;

-- name: filter_insert
INSERT INTO event_filters ({filter}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9);

-- name: filter_update
UPDATE event_filters SET scope = $1, expression = $2, payload = $3, updated_at = $4
WHERE tenant_id = $5 AND id = $6;

-- name: filter_delete
DELETE FROM event_filters WHERE tenant_id = $1 AND id = $2;

-- name: filters_undeclare
DELETE FROM event_filters WHERE tenant_id = $1 AND workflow_id = $2 AND declarative;

-- name: schedule_move
UPDATE scheduled_runs SET trigger_at = $3 WHERE tenant_id = $1 AND id = $2 AND run_id IS NULL;
