-- name: meta_get
-- Read one installation-wide setting.
SELECT value FROM meta WHERE key = :key;

-- name: meta_insert_default
-- Store a setting unless it is already there.
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

-- name: tokens_list
SELECT id, tenant_id, name, created_at, expires_at, revoked_at FROM api_tokens
WHERE tenant_id = :tenant_id ORDER BY created_at;

-- name: workflow_upsert
-- A new version id on every registration; the id of the workflow itself is stable.
INSERT INTO workflows (id, tenant_id, name, version_id, definition, created_at, updated_at)
VALUES (:id, :tenant_id, :name, :version_id, :definition, :now, :now)
ON CONFLICT (tenant_id, name) DO UPDATE SET
    version_id = excluded.version_id,
    definition = excluded.definition,
    updated_at = excluded.updated_at
RETURNING id, version_id;

-- name: workflow_get_by_name
SELECT id, tenant_id, name, version_id, definition FROM workflows
WHERE tenant_id = :tenant_id AND name = :name;

-- name: run_insert
INSERT INTO runs (id, tenant_id, workflow_id, workflow_name, status, input,
                  additional_metadata, priority, sticky, sticky_worker_id, created_at)
VALUES (:id, :tenant_id, :workflow_id, :workflow_name, 'queued', :input,
        :additional_metadata, :priority, :sticky, :sticky_worker_id, :now);

-- name: task_insert
INSERT INTO tasks (id, tenant_id, run_id, step_id, readable_id, action_id, status,
                   max_retries, backoff_factor, backoff_max, priority, parents, slot_requests,
                   desired_labels, desired_worker_id, concurrency, rate_limits, timeout_s,
                   schedule_timeout_s, created_at, queued_at)
VALUES (:id, :tenant_id, :run_id, :step_id, :readable_id, :action_id, :status,
        :max_retries, :backoff_factor, :backoff_max, :priority, :parents, :slot_requests,
        :desired_labels, :desired_worker_id, :concurrency, :rate_limits, :timeout_s,
        :schedule_timeout_s, :now, :queued_at)
RETURNING seq;

-- name: tasks_queued
-- Every task waiting for a worker, in queue order (rebuilds the scheduler after a restart).
SELECT t.id, t.tenant_id, t.action_id, t.priority, t.seq, t.retry_count, t.slot_requests,
       t.available_at, t.queued_at, t.schedule_timeout_s, t.desired_labels,
       t.desired_worker_id, t.concurrency, t.rate_limits, r.sticky
FROM tasks t JOIN runs r ON r.id = t.run_id
WHERE t.status = 'queued' ORDER BY t.priority DESC, t.seq;

-- name: tasks_running
-- Every task held by a worker (rebuilds slot accounting after a restart).
SELECT id, worker_id, retry_count, slot_requests, slot_released
FROM tasks WHERE status = 'running';

-- name: tasks_running_for_worker
SELECT id, worker_id, retry_count, slot_requests, slot_released
FROM tasks WHERE status = 'running' AND worker_id = :worker_id;

-- name: task_assign
-- Fenced on the attempt the scheduler saw: a task cancelled meanwhile is not assigned.
UPDATE tasks SET status = 'running', worker_id = :worker_id, started_at = :now,
                 timeout_at = :now + timeout_s, slot_released = 0
WHERE id = :task_id AND status = 'queued' AND retry_count = :retry_count
RETURNING run_id, step_id, readable_id, action_id, priority, parents;

-- name: attempt_insert
INSERT INTO task_attempts (task_id, retry_count, worker_id, assigned_at, holds_slot)
VALUES (:task_id, :retry_count, :worker_id, :now, 1)
ON CONFLICT (task_id, retry_count) DO UPDATE SET
    worker_id = excluded.worker_id, assigned_at = excluded.assigned_at, holds_slot = 1,
    started_at = NULL, finished_at = NULL, outcome = NULL;

-- name: attempt_free
-- The attempt gives its slot units back; returns its worker if it held them.
UPDATE task_attempts SET holds_slot = 0
WHERE task_id = :task_id AND retry_count = :retry_count AND holds_slot = 1
RETURNING worker_id;

-- name: attempt_free_unstarted
-- A start that never reached its worker, for a task the engine has since ended: nothing
-- runs it, so its slot is free.
UPDATE task_attempts SET holds_slot = 0, finished_at = coalesce(finished_at, :now)
WHERE task_id = :task_id AND retry_count = :retry_count AND worker_id = :worker_id
  AND holds_slot = 1 AND started_at IS NULL
RETURNING worker_id;

-- name: attempt_draining
-- An attempt the engine is done with whose worker still runs it (it holds its slot).
SELECT a.worker_id, t.slot_requests
FROM task_attempts a JOIN tasks t ON t.id = a.task_id
WHERE a.task_id = :task_id AND a.retry_count = :retry_count AND a.worker_id = :worker_id
  AND a.holds_slot = 1 AND t.tenant_id = :tenant_id
  AND NOT (t.status = 'running' AND t.retry_count = a.retry_count);

-- name: attempts_holding
-- Every attempt holding slot units (rebuilds slot accounting after a restart).
SELECT a.task_id AS id, a.worker_id, a.retry_count, t.slot_requests, 0 AS slot_released
FROM task_attempts a JOIN tasks t ON t.id = a.task_id
WHERE a.holds_slot = 1;

-- name: worker_drop_attempts
-- The worker is gone: nothing it ran holds a slot any more.
UPDATE task_attempts SET holds_slot = 0, finished_at = coalesce(finished_at, :now)
WHERE worker_id = :worker_id AND holds_slot = 1;

-- name: attempt_started
UPDATE task_attempts SET started_at = coalesce(started_at, :now)
WHERE task_id = :task_id AND retry_count = :retry_count AND worker_id = :worker_id;

-- name: attempt_finish
UPDATE task_attempts SET finished_at = :now, outcome = :outcome
WHERE task_id = :task_id AND retry_count = :retry_count;

-- name: attempt_stop
-- The engine ended the attempt (cancelled, timed out) but its worker may still run it.
UPDATE task_attempts SET outcome = :outcome
WHERE task_id = :task_id AND retry_count = :retry_count;

-- name: run_for_dispatch
SELECT r.input, r.additional_metadata, r.workflow_id, w.version_id
FROM runs r JOIN workflows w ON w.id = r.workflow_id WHERE r.id = :run_id;

-- name: run_task_outputs
SELECT readable_id, output FROM tasks WHERE run_id = :run_id AND status = 'completed';

-- name: task_live
-- The live attempt of a task, if (task, attempt, worker) still owns it.
SELECT run_id, readable_id, retry_count, app_retries, max_retries, backoff_factor, backoff_max,
       slot_requests, slot_released, worker_id, tenant_id
FROM tasks
WHERE id = :task_id AND tenant_id = :tenant_id AND status = 'running'
  AND retry_count = :retry_count AND worker_id = :worker_id;

-- name: task_complete
UPDATE tasks SET status = 'completed', output = :output, finished_at = :now
WHERE id = :task_id;

-- name: task_fail
UPDATE tasks SET status = 'failed', error = :error, finished_at = :now
WHERE id = :task_id;

-- name: task_held
-- The live attempt, if (task, attempt, worker) still owns it.
SELECT id, run_id, worker_id, retry_count, reassignments, slot_requests, slot_released
FROM tasks
WHERE id = :task_id AND status = 'running' AND retry_count = :retry_count
  AND worker_id = :worker_id;

-- name: task_requeue
-- A new attempt: later reports carrying the old retry_count are fenced off.
UPDATE tasks SET status = 'queued', retry_count = retry_count + 1,
                 app_retries = app_retries + :app_failure,
                 reassignments = reassignments + :lost,
                 worker_id = NULL, slot_released = 0, queued_at = :now,
                 available_at = :available_at, error = :error, started_at = NULL,
                 timeout_at = NULL
WHERE id = :task_id AND status = 'running' AND retry_count = :retry_count
  AND worker_id = :worker_id
RETURNING tenant_id, run_id, action_id, priority, seq, retry_count, slot_requests,
          schedule_timeout_s, desired_labels, desired_worker_id, concurrency, rate_limits;

-- name: run_tasks
SELECT id, readable_id, status, parents, output, error, retry_count, priority, action_id,
       slot_requests, seq, schedule_timeout_s, worker_id, slot_released, desired_labels,
       concurrency, rate_limits
FROM tasks WHERE run_id = :run_id ORDER BY seq;

-- name: task_mark_queued
UPDATE tasks SET status = 'queued', queued_at = :now WHERE id = :task_id AND status = 'pending';

-- name: task_mark_skipped
UPDATE tasks SET status = 'skipped', finished_at = :now, error = :error
WHERE id = :task_id AND status IN ('pending', 'queued');

-- name: task_mark_cancelled
UPDATE tasks SET status = 'cancelled', finished_at = :now, error = :error
WHERE id = :task_id AND status IN ('pending', 'queued', 'running');

-- name: run_set_status
UPDATE runs SET status = :status, finished_at = :finished_at WHERE id = :run_id;

-- name: run_get
SELECT id, tenant_id, workflow_name, status, input, additional_metadata
FROM runs WHERE id = :run_id AND tenant_id = :tenant_id;

-- name: task_tenant_lookup
SELECT run_id, status, worker_id, retry_count, slot_requests, slot_released, timeout_at
FROM tasks WHERE id = :task_id AND tenant_id = :tenant_id;

-- name: task_release_slot
UPDATE tasks SET slot_released = 1
WHERE id = :task_id AND tenant_id = :tenant_id AND status = 'running' AND slot_released = 0
RETURNING worker_id, retry_count, slot_requests;

-- name: task_refresh_timeout
UPDATE tasks SET timeout_at = max(coalesce(timeout_at, :now), :now) + :seconds
WHERE id = :task_id AND tenant_id = :tenant_id AND status = 'running'
RETURNING timeout_at;

-- name: tasks_by_run_ids
SELECT id FROM tasks WHERE tenant_id = :tenant_id AND run_id = :run_id;

-- name: worker_insert
INSERT INTO workers (id, tenant_id, name, actions, slot_config, labels, runtime_info, status,
                     status_reason, status_changed_at, last_heartbeat_at, created_at)
VALUES (:id, :tenant_id, :name, :actions, :slot_config, :labels, :runtime_info, :status,
        :status_reason, :status_changed_at, :last_heartbeat_at, :created_at);

-- name: worker_get
SELECT id, tenant_id, name, actions, slot_config, labels, runtime_info, status, status_reason,
       status_changed_at, last_heartbeat_at, created_at
FROM workers WHERE id = :id;

-- name: workers_list
SELECT id, tenant_id, name, actions, slot_config, labels, runtime_info, status, status_reason,
       status_changed_at, last_heartbeat_at, created_at
FROM workers ORDER BY created_at;

-- name: worker_set_status
UPDATE workers SET status = :status, status_reason = :reason, status_changed_at = :now
WHERE id = :id AND status != :status;

-- name: worker_heartbeat
UPDATE workers SET last_heartbeat_at = :now WHERE id = :id;

-- name: worker_set_labels
UPDATE workers SET labels = :labels WHERE id = :id;

-- name: log_insert
INSERT INTO task_logs (tenant_id, task_id, created_at, level, message, retry_count)
VALUES (:tenant_id, :task_id, :created_at, :level, :message, :retry_count);

-- name: logs_list
SELECT task_id, created_at, message, level, retry_count FROM task_logs
WHERE tenant_id = :tenant_id AND task_id = :task_id ORDER BY id LIMIT :limit;

-- name: run_mark_running
UPDATE runs SET status = 'running' WHERE id = :run_id AND status = 'queued';

-- name: run_pin_worker
-- A sticky run is pinned to the worker of its first assigned task.
UPDATE runs SET sticky_worker_id = :worker_id
WHERE id = :run_id AND sticky IS NOT NULL AND sticky_worker_id IS NULL;

-- name: run_sticky
SELECT sticky, sticky_worker_id FROM runs WHERE id = :run_id;

-- name: task_set_desired_worker
UPDATE tasks SET desired_worker_id = :worker_id WHERE id = :task_id;

-- name: run_tenant
SELECT tenant_id FROM runs WHERE id = :run_id;

-- name: task_run_id
SELECT run_id FROM tasks WHERE id = :task_id AND tenant_id = :tenant_id;

-- name: tasks_timed_out
-- Running attempts past their execution deadline.
SELECT id, tenant_id, worker_id, retry_count, slot_requests, slot_released, timeout_at
FROM tasks WHERE status = 'running' AND timeout_at IS NOT NULL AND timeout_at <= :now
ORDER BY timeout_at LIMIT :limit;

-- name: tasks_unstarted
-- Attempts assigned before :cutoff that no worker has acknowledged (lost on the way).
SELECT t.id, t.worker_id, t.retry_count, t.slot_requests, t.slot_released
FROM tasks t JOIN task_attempts a ON a.task_id = t.id AND a.retry_count = t.retry_count
WHERE t.status = 'running' AND a.started_at IS NULL AND a.assigned_at < :cutoff
LIMIT :limit;

-- name: runs_in_window
-- Candidate runs for a filter, newest first; the rest of the filter is applied in Python.
SELECT r.id, r.status, r.workflow_id, r.workflow_name, r.additional_metadata
FROM runs r
WHERE r.tenant_id = :tenant_id
  AND r.created_at >= coalesce(:since, r.created_at)
  AND r.created_at <= coalesce(:until, r.created_at)
ORDER BY r.created_at DESC;

-- name: tasks_schedule_expired
-- Queued tasks no worker took within their schedule timeout.
SELECT id, tenant_id, schedule_timeout_s FROM tasks
WHERE status = 'queued' AND max(queued_at, available_at) + schedule_timeout_s <= :now
LIMIT :limit;

-- name: gates_held
-- Concurrency claims held now (rebuilds the gates after a restart): a running task holds
-- its task-level claims; a running run holds its run-level claims, whatever its tasks do.
SELECT t.status, t.concurrency
FROM tasks t JOIN runs r ON r.id = t.run_id
WHERE t.concurrency != '[]' AND (t.status = 'running' OR r.status = 'running')
  AND t.status NOT IN ('completed', 'failed', 'cancelled', 'skipped')
ORDER BY r.created_at, t.seq;  -- holders come back oldest first (CANCEL_IN_PROGRESS)

-- name: rate_limit_put
INSERT INTO rate_limits (tenant_id, key, limit_value, duration_s, updated_at)
VALUES (:tenant_id, :key, :limit, :duration_s, :now)
ON CONFLICT (tenant_id, key) DO UPDATE SET
    limit_value = excluded.limit_value, duration_s = excluded.duration_s,
    updated_at = excluded.updated_at;

-- name: rate_limits_list
SELECT tenant_id, key, limit_value, duration_s FROM rate_limits;

-- name: task_slot_requests
SELECT slot_requests FROM tasks WHERE id = :task_id;

-- name: attempts_recall
-- A worker declared lost is back: the attempts taken from it when it was (those that ended
-- as lost since :since) may still be running there.
UPDATE task_attempts SET holds_slot = :hold
WHERE worker_id = :worker_id AND outcome = 'lost' AND finished_at >= :since
RETURNING task_id, retry_count;
