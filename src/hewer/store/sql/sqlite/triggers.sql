-- Named queries of the SQLite store for what starts runs besides a direct trigger: events,
-- scheduled runs, crons, and the links of child runs.

-- name: workflows_current
SELECT v.workflow_id, v.tenant_id, v.name, v.id, v.definition
FROM workflows w JOIN workflow_versions v ON v.id = w.version_id
WHERE w.tenant_id = :tenant_id ORDER BY w.name;

-- name: child_run
SELECT id FROM runs
WHERE tenant_id = :tenant_id AND parent_task_id = :parent AND child_key = :key
ORDER BY created_at LIMIT 1;

-- name: event_insert
INSERT INTO events ({event}) VALUES ({event_params});

-- name: events_list
SELECT {event} FROM events WHERE tenant_id = :tenant_id
AND (:keys IS NULL OR key IN (SELECT value FROM json_each(:keys)))
ORDER BY created_at DESC, id DESC LIMIT :limit OFFSET :offset;

-- name: event_get
SELECT {event} FROM events WHERE tenant_id = :tenant_id AND id = :id;

-- name: schedule_insert
INSERT INTO scheduled_runs ({schedule}) VALUES ({schedule_params});

-- name: schedules_by_ids
SELECT {schedule} FROM scheduled_runs WHERE id IN (SELECT value FROM json_each(:ids));

-- name: schedule_fire
UPDATE scheduled_runs SET run_id = ? WHERE id = ?;

-- name: schedules_due
SELECT {schedule} FROM scheduled_runs
WHERE run_id IS NULL AND trigger_at <= :now ORDER BY trigger_at LIMIT :limit;

-- name: schedule_next
SELECT min(trigger_at) FROM scheduled_runs WHERE run_id IS NULL;

-- name: schedules_list
SELECT {schedule} FROM scheduled_runs WHERE tenant_id = :tenant_id
AND (:workflow IS NULL OR workflow_name = :workflow)
ORDER BY trigger_at, id LIMIT :limit OFFSET :offset;

-- name: schedule_get
SELECT {schedule} FROM scheduled_runs WHERE tenant_id = :tenant_id AND id = :id;

-- name: schedule_delete
DELETE FROM scheduled_runs WHERE tenant_id = :tenant_id AND id = :id;

-- name: cron_insert
INSERT INTO crons ({cron}) VALUES ({cron_params});

-- name: cron_insert_declared
INSERT INTO crons ({cron}) VALUES ({cron_params})
ON CONFLICT (tenant_id, workflow_name, name) DO NOTHING;

-- name: crons_undeclare
-- Declared crons the workflow's newest definition no longer has.
DELETE FROM crons WHERE tenant_id = :tenant_id AND workflow_name = :workflow AND declared = 1
AND name NOT IN (SELECT value FROM json_each(:names));

-- name: crons_by_ids
SELECT {cron} FROM crons WHERE id IN (SELECT value FROM json_each(:ids));

-- name: cron_set_next
UPDATE crons SET next_at = ? WHERE id = ?;

-- name: crons_due
SELECT {cron} FROM crons WHERE enabled = 1 AND next_at <= :now ORDER BY next_at LIMIT :limit;

-- name: cron_next
SELECT min(next_at) FROM crons WHERE enabled = 1;

-- name: crons_list
SELECT {cron} FROM crons WHERE tenant_id = :tenant_id
AND (:workflow IS NULL OR workflow_name = :workflow) AND (:name IS NULL OR name = :name)
ORDER BY created_at, id LIMIT :limit OFFSET :offset;

-- name: cron_get
SELECT {cron} FROM crons WHERE tenant_id = :tenant_id AND id = :id;

-- name: cron_delete
DELETE FROM crons WHERE tenant_id = :tenant_id AND id = :id;

-- name: runs_children
-- Unfinished runs spawned by any of the tasks named.
SELECT id FROM runs WHERE tenant_id = :tenant_id AND status = 'queued'
AND parent_task_id IN (SELECT value FROM json_each(:ids));

-- name: idempotency_key
SELECT k.tenant_id, k.workflow_id, k.key, k.run_id, k.expires_at, k.method,
       coalesce(r.status <> 'queued', 1)
FROM idempotency_keys k LEFT JOIN runs r ON r.id = k.run_id
WHERE k.tenant_id = :tenant_id AND k.workflow_id = :workflow_id AND k.key = :key;

-- name: idempotency_put
INSERT INTO idempotency_keys (tenant_id, workflow_id, key, run_id, expires_at, method)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (tenant_id, workflow_id, key) DO UPDATE SET
    run_id = excluded.run_id, expires_at = excluded.expires_at, method = excluded.method;

-- name: event_waiters
SELECT task_id FROM task_event_waits WHERE tenant_id = :tenant_id AND event_key = :key;

-- name: wait_add
INSERT OR IGNORE INTO task_event_waits (tenant_id, event_key, task_id) VALUES (?, ?, ?);

-- name: waits_drop
DELETE FROM task_event_waits WHERE task_id = ?;

-- name: tasks_wake_due
SELECT {task_t} FROM task_wakes w JOIN tasks t ON t.id = w.task_id
WHERE w.wake_at <= :now ORDER BY w.wake_at LIMIT :limit;

-- name: wake_set
INSERT INTO task_wakes (task_id, wake_at) VALUES (?, ?)
ON CONFLICT (task_id) DO UPDATE SET wake_at = excluded.wake_at;

-- name: wake_drop
DELETE FROM task_wakes WHERE task_id = ?;

-- name: filters_of_workflows
SELECT {filter} FROM event_filters
WHERE tenant_id = :tenant_id AND workflow_id IN (SELECT value FROM json_each(:ids))
ORDER BY created_at, id;

-- name: filters_list
SELECT {filter} FROM event_filters WHERE tenant_id = :tenant_id
AND (:workflows IS NULL OR workflow_id IN (SELECT value FROM json_each(:workflows)))
AND (:scopes IS NULL OR scope IN (SELECT value FROM json_each(:scopes)))
ORDER BY created_at, id LIMIT :limit OFFSET :offset;

-- name: filter_get
SELECT {filter} FROM event_filters WHERE tenant_id = :tenant_id AND id = :id;

-- name: filter_insert
INSERT INTO event_filters ({filter}) VALUES ({filter_params});

-- name: filter_update
UPDATE event_filters SET scope = ?, expression = ?, payload = ?, updated_at = ?
WHERE tenant_id = ? AND id = ?;

-- name: filter_delete
DELETE FROM event_filters WHERE tenant_id = :tenant_id AND id = :id;

-- name: filters_undeclare
DELETE FROM event_filters
WHERE tenant_id = :tenant_id AND workflow_id = :workflow_id AND declarative = 1;

-- name: schedule_move
-- Only one that has not fired: a fire and a move never both take effect.
UPDATE scheduled_runs SET trigger_at = :trigger_at
WHERE tenant_id = :tenant_id AND id = :id AND run_id IS NULL;
