-- Named queries of the SQLite store. {task}, {run} and {attempt} stand for the column lists
-- the store maps to TaskRow, RunRow and AttemptRow (in their field order); :ids parameters
-- are JSON arrays, read with json_each.

-- name: meta_get
SELECT value FROM meta WHERE key = :key;

-- name: meta_insert_default
INSERT INTO meta (key, value) VALUES (:key, :value) ON CONFLICT (key) DO NOTHING;

-- name: tenant_insert
INSERT INTO tenants (id, name, created_at) VALUES (:id, :name, :created_at)
ON CONFLICT (name) DO NOTHING;

-- name: tenant_get_by_name
SELECT id, name, created_at FROM tenants WHERE name = :name;

-- name: tenant_get
SELECT id, name, created_at FROM tenants WHERE id = :id;

-- name: token_insert
INSERT INTO api_tokens (id, tenant_id, name, created_at, expires_at, revoked_at)
VALUES (:id, :tenant_id, :name, :created_at, :expires_at, NULL);

-- name: token_get
SELECT id, tenant_id, name, created_at, expires_at, revoked_at FROM api_tokens WHERE id = :id;

-- name: token_revoke
UPDATE api_tokens SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL;

-- name: workflow_current
SELECT w.id, w.version_id, v.checksum FROM workflows w
JOIN workflow_versions v ON v.id = w.version_id
WHERE w.tenant_id = :tenant_id AND w.name = :name;

-- name: workflow_insert
INSERT INTO workflows (id, tenant_id, name, version_id, created_at, updated_at)
VALUES (:id, :tenant_id, :name, :version_id, :now, :now);

-- name: workflow_set_version
UPDATE workflows SET version_id = :version_id, updated_at = :now WHERE id = :id;

-- name: workflow_version_insert
INSERT INTO workflow_versions (id, workflow_id, tenant_id, name, definition, checksum,
                               created_at)
VALUES (:id, :workflow_id, :tenant_id, :name, :definition, :checksum, :now);

-- name: workflow_get_by_name
SELECT v.workflow_id, v.tenant_id, v.name, v.id, v.definition
FROM workflows w JOIN workflow_versions v ON v.id = w.version_id
WHERE w.tenant_id = :tenant_id AND w.name = :name;

-- name: workflow_versions
SELECT workflow_id, tenant_id, name, id, definition FROM workflow_versions
WHERE id IN (SELECT value FROM json_each(:ids));

-- name: max_seq
SELECT coalesce(max(seq), 0) FROM tasks;

-- name: tasks_by_ids
SELECT {task} FROM tasks WHERE id IN (SELECT value FROM json_each(:ids));

-- name: tasks_by_runs
-- A run's tasks are the consecutive rows from its first_seq.
SELECT {task_t} FROM runs r JOIN tasks t
  ON t.seq >= r.first_seq AND t.seq < r.first_seq + r.task_count
WHERE r.id IN (SELECT value FROM json_each(:ids)) ORDER BY t.seq;

-- name: tasks_running_on
-- Running tasks are few (at most every worker's slots), so they are scanned.
SELECT {task} FROM tasks
WHERE status = 'running' AND worker_id IN (SELECT value FROM json_each(:ids));

-- name: runs_by_ids
SELECT {run} FROM runs WHERE id IN (SELECT value FROM json_each(:ids));

-- name: attempts_holding_of_tasks
SELECT {attempt} FROM task_attempts
WHERE task_id IN (SELECT value FROM json_each(:ids)) AND holds_slot = 1;

-- name: attempts_of_workers
SELECT {attempt} FROM task_attempts
WHERE worker_id IN (SELECT value FROM json_each(:ids)) AND (holds_slot = 1 OR outcome = 'lost');

-- name: run_insert
INSERT INTO runs ({run}) VALUES ({run_params});

-- name: task_insert
INSERT INTO tasks ({task}) VALUES ({task_params});

-- name: task_update
-- Every mutable column at once: one statement shape for every transition of a batch.
UPDATE tasks SET status = ?, retry_count = ?, app_retries = ?, reassignments = ?,
                 worker_id = ?, acked = ?, slot_released = ?, desired_worker_id = ?,
                 available_at = ?, queued_at = ?, schedule_deadline = ?, assigned_at = ?,
                 started_at = ?, timeout_at = ?, finished_at = ?, output = ?, error = ?,
                 waiting = ?
WHERE seq = ?;

-- name: run_update
UPDATE runs SET status = ?, sticky_worker_id = ?, finished_at = ? WHERE id = ?;

-- name: attempt_insert
INSERT INTO task_attempts ({attempt}) VALUES ({attempt_params})
ON CONFLICT (task_id, retry_count) DO UPDATE SET
    worker_id = excluded.worker_id, assigned_at = excluded.assigned_at,
    started_at = excluded.started_at, finished_at = excluded.finished_at,
    outcome = excluded.outcome, holds_slot = excluded.holds_slot, error = excluded.error;

-- name: attempt_update
UPDATE task_attempts SET finished_at = ?, outcome = ?, holds_slot = ?
WHERE task_id = ? AND retry_count = ?;

-- name: run_get
SELECT {run} FROM runs WHERE id = :run_id AND tenant_id = :tenant_id;

-- name: runs_get
SELECT {run} FROM runs
WHERE tenant_id = :tenant_id AND id IN (SELECT value FROM json_each(:ids));

-- name: run_tasks
SELECT {task_t} FROM runs r JOIN tasks t
  ON t.seq >= r.first_seq AND t.seq < r.first_seq + r.task_count
WHERE r.id = :run_id ORDER BY t.seq;

-- name: task_run_id
SELECT run_id FROM tasks WHERE id = :task_id AND tenant_id = :tenant_id;

-- name: runs_in_window
-- Candidate runs for a filter, newest first; the rest of the filter is applied in Python.
-- started: whether any of its tasks left the queue (a queued run that started is RUNNING).
SELECT r.id, r.status, r.workflow_id, r.workflow_name, r.additional_metadata,
       EXISTS (SELECT 1 FROM tasks t
               WHERE t.seq >= r.first_seq AND t.seq < r.first_seq + r.task_count
               AND t.status NOT IN ('queued', 'pending')) AS started
FROM runs r
WHERE r.tenant_id = :tenant_id
  AND r.created_at >= coalesce(:since, r.created_at)
  AND r.created_at <= coalesce(:until, r.created_at)
ORDER BY r.created_at DESC;

-- name: queue_depths
-- Queued tasks per queue and workflow (for /metrics: read on a scrape, not on the hot path).
SELECT t.tenant_id, t.action_id, r.workflow_name, count(*)
FROM tasks t JOIN runs r ON r.id = t.run_id
WHERE t.status = 'queued'
GROUP BY t.tenant_id, t.action_id, r.workflow_name;

-- name: task_stats
-- Queued and running tasks per task name and queue, for the Task Stats API (read when an
-- autoscaler polls, not on the hot path). :names is a JSON list, or NULL for every name.
-- oldest: queued since / running since; oldest_first: the same among first attempts.
SELECT readable_id, status, action_id, count(*), min(since),
       min(CASE WHEN retry_count = 0 THEN since END)
FROM (
    SELECT readable_id, status, action_id, retry_count,
           coalesce(queued_at, created_at) AS since
    FROM tasks WHERE status = 'queued' AND tenant_id = :tenant_id
    UNION ALL
    SELECT readable_id, status, action_id, retry_count,
           coalesce(started_at, assigned_at, created_at) AS since
    FROM tasks WHERE status = 'running' AND tenant_id = :tenant_id
) t
WHERE :names IS NULL OR readable_id IN (SELECT value FROM json_each(:names))
GROUP BY readable_id, status, action_id;

-- name: task_stat_claims
-- The concurrency claims of queued and running tasks, with the workflow version that
-- names their limits' expressions.
SELECT t.readable_id, t.status, r.version_id, t.claims
FROM tasks t JOIN runs r ON r.id = t.run_id
WHERE t.claims IS NOT NULL AND t.status IN ('queued', 'running') AND t.tenant_id = :tenant_id
  AND (:names IS NULL OR t.readable_id IN (SELECT value FROM json_each(:names)));

-- name: task_status_counts
-- Tasks per status among the runs created in a window (the metrics client's task counts).
-- :workflows is a JSON list of workflow ids or names, or NULL.
SELECT t.status, count(*)
FROM runs r JOIN tasks t ON t.seq >= r.first_seq AND t.seq < r.first_seq + r.task_count
WHERE r.tenant_id = :tenant_id
  AND r.created_at >= coalesce(:since, r.created_at)
  AND r.created_at <= coalesce(:until, r.created_at)
  AND (:workflows IS NULL
       OR r.workflow_id IN (SELECT value FROM json_each(:workflows))
       OR r.workflow_name IN (SELECT value FROM json_each(:workflows)))
GROUP BY t.status;

-- name: queue_keys
SELECT DISTINCT tenant_id, action_id FROM tasks WHERE status = 'queued';

-- name: tasks_queued_page
-- One queue in the scheduler's order, after a position (priority, seq).
SELECT {task_t}, r.version_id, r.sticky, r.sticky_worker_id, r.desired_labels
FROM tasks t JOIN runs r ON r.id = t.run_id
WHERE t.status = 'queued' AND t.tenant_id = :tenant_id AND t.action_id = :action_id
  AND (t.priority < :priority OR (t.priority = :priority AND t.seq > :seq))
ORDER BY t.priority DESC, t.seq
LIMIT :limit;

-- name: tasks_running
SELECT {task_t}, r.version_id FROM tasks t JOIN runs r ON r.id = t.run_id
WHERE t.status = 'running';

-- name: attempts_holding
SELECT {attempt_a}, {task_t}, r.version_id
FROM task_attempts a JOIN tasks t ON t.id = a.task_id JOIN runs r ON r.id = t.run_id
WHERE a.holds_slot = 1;

-- name: attempts_list
SELECT {attempt_a} FROM task_attempts a JOIN tasks t ON t.id = a.task_id
WHERE coalesce(:tenant_id, t.tenant_id) = t.tenant_id ORDER BY a.task_id, a.retry_count;

-- name: tasks_list
SELECT {task} FROM tasks WHERE coalesce(:tenant_id, tenant_id) = tenant_id ORDER BY seq;

-- name: runs_list
SELECT {run} FROM runs WHERE coalesce(:tenant_id, tenant_id) = tenant_id ORDER BY created_at;

-- name: tasks_timed_out
SELECT {task} FROM tasks
WHERE status = 'running' AND timeout_at IS NOT NULL AND timeout_at <= :now
ORDER BY timeout_at LIMIT :limit;

-- name: tasks_unacked
SELECT {task} FROM tasks
WHERE status = 'running' AND acked = 0 AND assigned_at < :cutoff
ORDER BY assigned_at LIMIT :limit;

-- name: tasks_schedule_expired
SELECT {task} FROM tasks
WHERE status = 'queued' AND schedule_deadline <= :now
ORDER BY schedule_deadline LIMIT :limit;

-- name: gates_held
-- Claims of running tasks, and of the unfinished tasks of started, unfinished runs; holders
-- come back oldest first (CANCEL_IN_PROGRESS cancels the oldest).
SELECT t.status, t.claims FROM tasks t JOIN runs r ON r.id = t.run_id
WHERE t.claims IS NOT NULL AND r.status = 'queued'
  AND t.status NOT IN ('completed', 'failed', 'cancelled', 'skipped')
  AND (t.status = 'running' OR EXISTS (
      SELECT 1 FROM tasks s WHERE s.seq >= r.first_seq AND s.seq < r.first_seq + r.task_count
      AND s.status NOT IN ('queued', 'pending')))
ORDER BY r.created_at, t.seq;

-- name: rate_limit_put
INSERT INTO rate_limits (tenant_id, key, limit_value, duration_s, updated_at)
VALUES (:tenant_id, :key, :limit, :duration_s, :now)
ON CONFLICT (tenant_id, key) DO UPDATE SET
    limit_value = excluded.limit_value, duration_s = excluded.duration_s,
    updated_at = excluded.updated_at;

-- name: rate_limits_list
SELECT tenant_id, key, limit_value, duration_s FROM rate_limits;

-- name: worker_insert
INSERT INTO workers (id, tenant_id, name, actions, slot_config, labels, runtime_info, status,
                     status_reason, status_changed_at, last_heartbeat_at, created_at,
                     owner_token)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: worker_get
SELECT id, tenant_id, name, actions, slot_config, labels, runtime_info, status, status_reason,
       status_changed_at, last_heartbeat_at, created_at, owner_token
FROM workers WHERE id = :id AND tenant_id = :tenant_id;

-- name: workers_list
SELECT id, tenant_id, name, actions, slot_config, labels, runtime_info, status, status_reason,
       status_changed_at, last_heartbeat_at, created_at, owner_token
FROM workers WHERE coalesce(:tenant_id, tenant_id) = tenant_id ORDER BY created_at;

-- name: worker_set_status
UPDATE workers SET status = ?, status_reason = ?, status_changed_at = ?
WHERE id = ? AND status != ?;

-- name: worker_heartbeat
UPDATE workers SET last_heartbeat_at = ? WHERE id = ?;

-- name: worker_set_labels
UPDATE workers SET labels = ? WHERE id = ?;

-- name: log_insert
INSERT INTO task_logs (tenant_id, task_id, created_at, level, message, retry_count)
VALUES (?, ?, ?, ?, ?, ?);

-- name: logs_list
SELECT task_id, created_at, message, level, retry_count FROM task_logs
WHERE tenant_id = :tenant_id AND task_id = :task_id ORDER BY id LIMIT :limit;
