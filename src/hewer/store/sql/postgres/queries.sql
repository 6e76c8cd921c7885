-- Named queries of the PostgreSQL store. {task}, {run} and {attempt} stand for the column
-- lists the store maps to TaskRow, RunRow and AttemptRow (in their field order). Lists are
-- array parameters ($n::text[]); batched writes take one array per column and unnest them,
-- so a statement's shape (and its prepared plan) does not depend on how many rows it writes.
-- Queries whose names start with lock_ run only inside a write transaction: they lock the
-- rows the engine is about to decide on, in a fixed order (fewer deadlocks between replicas).

-- name: migrate_lock
SELECT pg_advisory_xact_lock($1);

-- name: migrations_create
CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY);

-- name: migrations_done
SELECT version FROM schema_migrations;

-- name: migration_record
INSERT INTO schema_migrations (version) VALUES ($1);

-- name: meta_get
SELECT value FROM meta WHERE key = $1;

-- name: meta_insert_default
INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING;

-- name: tenant_insert
INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING;

-- name: tenant_get_by_name
SELECT id, name, created_at FROM tenants WHERE name = $1;

-- name: tenant_get
SELECT id, name, created_at FROM tenants WHERE id = $1;

-- name: token_insert
INSERT INTO api_tokens (id, tenant_id, name, created_at, expires_at, revoked_at)
VALUES ($1, $2, $3, $4, $5, NULL);

-- name: token_get
SELECT id, tenant_id, name, created_at, expires_at, revoked_at FROM api_tokens WHERE id = $1;

-- name: token_revoke
UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL;

-- name: workflow_lock
-- Two engines registering the same workflow at once: one at a time per (tenant, name).
SELECT pg_advisory_xact_lock(hashtextextended($1::text || '/' || $2::text, 0));

-- name: workflow_current
SELECT w.id, w.version_id, v.checksum FROM workflows w
JOIN workflow_versions v ON v.id = w.version_id
WHERE w.tenant_id = $1 AND w.name = $2;

-- name: workflow_insert
INSERT INTO workflows (id, tenant_id, name, version_id, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $5);

-- name: workflow_set_version
UPDATE workflows SET version_id = $2, updated_at = $3 WHERE id = $1;

-- name: workflow_version_insert
INSERT INTO workflow_versions (id, workflow_id, tenant_id, name, definition, checksum,
                               created_at)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7);

-- name: workflow_get_by_name
SELECT v.workflow_id, v.tenant_id, v.name, v.id, v.definition
FROM workflows w JOIN workflow_versions v ON v.id = w.version_id
WHERE w.tenant_id = $1 AND w.name = $2;

-- name: workflow_versions
SELECT workflow_id, tenant_id, name, id, definition FROM workflow_versions
WHERE id = ANY($1::text[]);

-- name: seq_reserve
-- The first of $1 consecutive queue positions; the row stays locked until commit.
UPDATE task_seq SET last = last + $1 RETURNING last - $1 + 1;

-- name: lock_tasks_by_ids
SELECT {task} FROM tasks WHERE id = ANY($1::text[]) ORDER BY seq FOR NO KEY UPDATE;

-- name: lock_tasks_and_runs_by_ids
-- The tasks named with their runs, and whether an attempt of theirs holds a slot (rare:
-- those are then locked and read with lock_attempts_holding_of_tasks): one round trip for
-- the hot path's common load.
SELECT {task_t}, {run_r},
       EXISTS (SELECT 1 FROM task_attempts a WHERE a.task_id = t.id AND a.holds_slot)
FROM tasks t JOIN runs r ON r.id = t.run_id
WHERE t.id = ANY($1::text[]) ORDER BY t.seq FOR NO KEY UPDATE OF t, r;

-- name: lock_tasks_by_seqs
-- The tasks of runs already loaded: a run's tasks are the rows first_seq onwards. (Joining
-- runs to tasks on that range instead, the planner may scan the whole tasks table.)
SELECT {task} FROM tasks WHERE seq = ANY($1::bigint[]) ORDER BY seq FOR NO KEY UPDATE;

-- name: lock_tasks_running_on
SELECT {task} FROM tasks
WHERE status = 'running' AND worker_id = ANY($1::text[]) ORDER BY seq FOR NO KEY UPDATE;

-- name: lock_runs_by_ids
SELECT {run} FROM runs WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE;

-- name: lock_attempts_holding_of_tasks
SELECT {attempt} FROM task_attempts
WHERE task_id = ANY($1::text[]) AND holds_slot
ORDER BY task_id, retry_count FOR NO KEY UPDATE;

-- name: lock_attempts_of_workers
SELECT {attempt} FROM task_attempts
WHERE worker_id = ANY($1::text[]) AND (holds_slot OR outcome = 'lost')
ORDER BY task_id, retry_count FOR NO KEY UPDATE;

-- name: task_update
-- Every mutable column at once: one statement shape for every transition of a batch.
UPDATE tasks t SET status = v.status, retry_count = v.retry_count,
                   app_retries = v.app_retries, reassignments = v.reassignments,
                   worker_id = v.worker_id, acked = v.acked, slot_released = v.slot_released,
                   desired_worker_id = v.desired_worker_id, available_at = v.available_at,
                   queued_at = v.queued_at, schedule_deadline = v.schedule_deadline,
                   assigned_at = v.assigned_at, started_at = v.started_at,
                   timeout_at = v.timeout_at, finished_at = v.finished_at,
                   output = v.output, error = v.error, waiting = v.waiting
FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::integer[], $5::integer[],
            $6::text[], $7::boolean[], $8::boolean[], $9::text[], $10::float8[],
            $11::float8[], $12::float8[], $13::float8[], $14::float8[], $15::float8[],
            $16::float8[], $17::text[], $18::text[], $19::text[])
  AS v (seq, status, retry_count, app_retries, reassignments, worker_id, acked,
        slot_released, desired_worker_id, available_at, queued_at, schedule_deadline,
        assigned_at, started_at, timeout_at, finished_at, output, error, waiting)
WHERE t.seq = v.seq;

-- name: run_update
UPDATE runs r SET status = v.status, sticky_worker_id = v.sticky_worker_id,
                  finished_at = v.finished_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[])
  AS v (id, status, sticky_worker_id, finished_at)
WHERE r.id = v.id;

-- name: attempt_insert
INSERT INTO task_attempts ({attempt})
SELECT * FROM unnest($1::text[], $2::integer[], $3::text[], $4::float8[], $5::float8[],
                     $6::float8[], $7::text[], $8::boolean[], $9::text[])
ON CONFLICT (task_id, retry_count) DO UPDATE SET
    worker_id = excluded.worker_id, assigned_at = excluded.assigned_at,
    started_at = excluded.started_at, finished_at = excluded.finished_at,
    outcome = excluded.outcome, holds_slot = excluded.holds_slot, error = excluded.error;

-- name: attempt_update
UPDATE task_attempts a SET finished_at = v.finished_at, outcome = v.outcome,
                           holds_slot = v.holds_slot
FROM unnest($1::text[], $2::integer[], $3::float8[], $4::text[], $5::boolean[])
  AS v (task_id, retry_count, finished_at, outcome, holds_slot)
WHERE a.task_id = v.task_id AND a.retry_count = v.retry_count;

-- name: worker_insert
INSERT INTO workers (id, tenant_id, name, actions, slot_config, labels, runtime_info, status,
                     status_reason, status_changed_at, last_heartbeat_at, created_at,
                     owner_token)
SELECT id, tenant_id, name, actions::jsonb, slot_config::jsonb, labels::jsonb,
       runtime_info::jsonb, status, status_reason, status_changed_at, last_heartbeat_at,
       created_at, owner_token
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::text[], $10::float8[], $11::float8[], $12::float8[],
            $13::text[])
  WITH ORDINALITY
  AS v (id, tenant_id, name, actions, slot_config, labels, runtime_info, status,
        status_reason, status_changed_at, last_heartbeat_at, created_at, owner_token, ord)
ORDER BY ord;

-- name: worker_set_status
UPDATE workers w SET status = v.status, status_reason = v.status_reason,
                     status_changed_at = v.status_changed_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[])
  AS v (id, status, status_reason, status_changed_at)
WHERE w.id = v.id AND w.status <> v.status;

-- name: worker_heartbeat
UPDATE workers w SET last_heartbeat_at = v.at
FROM unnest($1::text[], $2::float8[]) AS v (id, at)
WHERE w.id = v.id;

-- name: worker_set_labels
UPDATE workers w SET labels = v.labels::jsonb
FROM unnest($1::text[], $2::text[]) AS v (id, labels)
WHERE w.id = v.id;

-- name: run_get
SELECT {run} FROM runs WHERE id = $2 AND tenant_id = $1;

-- name: runs_get
SELECT {run} FROM runs WHERE tenant_id = $1 AND id = ANY($2::text[]);

-- name: tasks_in_range
SELECT {task} FROM tasks WHERE seq >= $1 AND seq < $2 ORDER BY seq;

-- name: tasks_by_seqs
SELECT {task} FROM tasks WHERE seq = ANY($1::bigint[]) ORDER BY seq;

-- name: task_run_id
SELECT run_id FROM tasks WHERE id = $2 AND tenant_id = $1;

-- name: runs_in_window
-- A tenant's runs matching a filter, newest first (ties: the later created first); the
-- metadata part of a filter is applied in Python. A queued run one of whose tasks left the
-- queue counts as running.
SELECT id, additional_metadata FROM (
    SELECT r.id, r.additional_metadata, r.workflow_id, r.workflow_name, r.created_at,
           r.first_seq,
           CASE WHEN r.status = 'queued' AND EXISTS (
                    SELECT 1 FROM tasks t
                    WHERE t.seq >= r.first_seq AND t.seq < r.first_seq + r.task_count
                      AND t.status NOT IN ('queued', 'pending'))
                THEN 'running' ELSE r.status END AS status
    FROM runs r
    WHERE r.tenant_id = $1
      AND ($2::float8 IS NULL OR r.created_at >= $2)
      AND ($3::float8 IS NULL OR r.created_at <= $3)
) m
WHERE ($4::text[] IS NULL OR m.status = ANY($4))
  AND ($5::text[] IS NULL OR m.workflow_id = ANY($5) OR m.workflow_name = ANY($5))
ORDER BY m.created_at DESC, m.first_seq DESC
LIMIT $6;

-- name: queue_depths
-- Queued tasks per queue and workflow (for /metrics: read on a scrape, not on the hot path).
SELECT t.tenant_id, t.action_id, r.workflow_name, count(*)
FROM tasks t JOIN runs r ON r.id = t.run_id
WHERE t.status = 'queued'
GROUP BY t.tenant_id, t.action_id, r.workflow_name;

-- name: task_stats
-- Queued and running tasks per task name and queue, for the Task Stats API (read when an
-- autoscaler polls, not on the hot path); $2 NULL means every name. Each branch reads its
-- partial index. oldest: queued since / running since; oldest_first: among first attempts.
SELECT readable_id, status, action_id, count(*), min(since),
       min(since) FILTER (WHERE retry_count = 0)
FROM (
    SELECT readable_id, status, action_id, retry_count,
           coalesce(queued_at, created_at) AS since
    FROM tasks WHERE status = 'queued' AND tenant_id = $1
    UNION ALL
    SELECT readable_id, status, action_id, retry_count,
           coalesce(started_at, assigned_at, created_at) AS since
    FROM tasks WHERE status = 'running' AND tenant_id = $1
) t
WHERE $2::text[] IS NULL OR readable_id = ANY($2)
GROUP BY readable_id, status, action_id;

-- name: task_stat_claims
-- The concurrency claims of queued and running tasks, with the workflow version that
-- names their limits' expressions.
SELECT t.readable_id, t.status, r.version_id, t.claims
FROM tasks t JOIN runs r ON r.id = t.run_id
WHERE t.claims IS NOT NULL AND t.status IN ('queued', 'running') AND t.tenant_id = $1
  AND ($2::text[] IS NULL OR t.readable_id = ANY($2));

-- name: task_status_counts
-- Tasks per status among the runs created in a window (the metrics client's task counts);
-- $4 lists workflow ids or names, NULL for all.
SELECT t.status, count(*)
FROM runs r JOIN tasks t ON t.seq >= r.first_seq AND t.seq < r.first_seq + r.task_count
WHERE r.tenant_id = $1
  AND ($2::float8 IS NULL OR r.created_at >= $2)
  AND ($3::float8 IS NULL OR r.created_at <= $3)
  AND ($4::text[] IS NULL OR r.workflow_id = ANY($4) OR r.workflow_name = ANY($4))
GROUP BY t.status;

-- name: queue_keys
-- The distinct (tenant, action) prefixes of the queue index, one index probe each (a
-- DISTINCT would read every queued task).
WITH RECURSIVE k (tenant_id, action_id) AS (
    (SELECT tenant_id, action_id FROM tasks WHERE status = 'queued'
     ORDER BY tenant_id, action_id LIMIT 1)
    UNION ALL
    SELECT n.tenant_id, n.action_id FROM k CROSS JOIN LATERAL (
        SELECT tenant_id, action_id FROM tasks
        WHERE status = 'queued' AND (tenant_id, action_id) > (k.tenant_id, k.action_id)
        ORDER BY tenant_id, action_id LIMIT 1) n
)
SELECT tenant_id, action_id FROM k;

-- name: tasks_queued_head
-- The head of one queue in the scheduler's order. Each task's run is looked up by its key
-- (LIMIT 1 keeps it a per-row probe: a generic plan, not knowing the page size, would
-- otherwise hash-join the whole runs table).
SELECT {task_t}, r.version_id, r.sticky, r.sticky_worker_id, r.desired_labels
FROM (SELECT * FROM tasks
      WHERE status = 'queued' AND tenant_id = $1 AND action_id = $2
      ORDER BY priority DESC, seq LIMIT $3) t
CROSS JOIN LATERAL (SELECT version_id, sticky, sticky_worker_id, desired_labels FROM runs
                    WHERE id = t.run_id LIMIT 1) r
ORDER BY t.priority DESC, t.seq;

-- name: tasks_queued_page
-- One queue in the scheduler's order after a position (priority, seq): the rest of its
-- priority, then the lower priorities, each an ordered range of the queue index (an OR of
-- the two would scan the queue from its head on every page).
SELECT {task_t}, r.version_id, r.sticky, r.sticky_worker_id, r.desired_labels
FROM (
    (SELECT * FROM tasks
     WHERE status = 'queued' AND tenant_id = $1 AND action_id = $2
       AND priority = $3 AND seq > $4
     ORDER BY priority DESC, seq LIMIT $5)
    UNION ALL
    (SELECT * FROM tasks
     WHERE status = 'queued' AND tenant_id = $1 AND action_id = $2 AND priority < $3
     ORDER BY priority DESC, seq LIMIT $5)
) t
CROSS JOIN LATERAL (SELECT version_id, sticky, sticky_worker_id, desired_labels FROM runs
                    WHERE id = t.run_id LIMIT 1) r
ORDER BY t.priority DESC, t.seq
LIMIT $5;

-- name: tasks_running
-- Running tasks are few; their runs are probed one by one, not joined as a table.
SELECT {task_t}, r.version_id FROM tasks t
CROSS JOIN LATERAL (SELECT version_id FROM runs WHERE id = t.run_id LIMIT 1) r
WHERE t.status = 'running';

-- name: attempts_holding
SELECT {attempt_a}, {task_t}, r.version_id
FROM task_attempts a JOIN tasks t ON t.id = a.task_id
CROSS JOIN LATERAL (SELECT version_id FROM runs WHERE id = t.run_id LIMIT 1) r
WHERE a.holds_slot;

-- name: attempts_list
SELECT {attempt_a} FROM task_attempts a JOIN tasks t ON t.id = a.task_id
WHERE ($1::text IS NULL OR t.tenant_id = $1) ORDER BY a.task_id, a.retry_count;

-- name: tasks_list
SELECT {task} FROM tasks WHERE ($1::text IS NULL OR tenant_id = $1) ORDER BY seq;

-- name: runs_list
SELECT {run} FROM runs WHERE ($1::text IS NULL OR tenant_id = $1)
ORDER BY created_at, first_seq;

-- name: tasks_timed_out
SELECT {task} FROM tasks
WHERE status = 'running' AND timeout_at IS NOT NULL AND timeout_at <= $1
ORDER BY timeout_at LIMIT $2;

-- name: tasks_unacked
SELECT {task} FROM tasks
WHERE status = 'running' AND NOT acked AND assigned_at < $1
ORDER BY assigned_at LIMIT $2;

-- name: tasks_schedule_expired
SELECT {task} FROM tasks
WHERE status = 'queued' AND schedule_deadline <= $1
ORDER BY schedule_deadline LIMIT $2;

-- name: gates_held
-- Claims of running tasks, and of the unfinished tasks of started, unfinished runs; holders
-- come back oldest first (CANCEL_IN_PROGRESS cancels the oldest).
SELECT t.status, t.claims FROM tasks t JOIN runs r ON r.id = t.run_id
WHERE t.claims IS NOT NULL AND t.status IN ('pending', 'queued', 'running')
  AND r.status = 'queued'
  AND (t.status = 'running' OR EXISTS (
      SELECT 1 FROM tasks s WHERE s.seq >= r.first_seq AND s.seq < r.first_seq + r.task_count
      AND s.status NOT IN ('queued', 'pending')))
ORDER BY r.created_at, t.seq;

-- name: rate_limit_put
INSERT INTO rate_limits (tenant_id, key, limit_value, duration_s, updated_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (tenant_id, key) DO UPDATE SET
    limit_value = excluded.limit_value, duration_s = excluded.duration_s,
    updated_at = excluded.updated_at;

-- name: rate_limits_list
SELECT tenant_id, key, limit_value, duration_s FROM rate_limits ORDER BY tenant_id, key;

-- name: worker_get
SELECT id, tenant_id, name, actions, slot_config, labels, runtime_info, status, status_reason,
       status_changed_at, last_heartbeat_at, created_at, owner_token
FROM workers WHERE id = $1 AND tenant_id = $2;

-- name: workers_list
SELECT id, tenant_id, name, actions, slot_config, labels, runtime_info, status, status_reason,
       status_changed_at, last_heartbeat_at, created_at, owner_token
FROM workers WHERE ($1::text IS NULL OR tenant_id = $1) ORDER BY created_at, pos;

-- name: logs_list
SELECT task_id, created_at, message, level, retry_count FROM task_logs
WHERE tenant_id = $1 AND task_id = $2 ORDER BY id LIMIT $3;

-- name: lease_claim
-- Taken when free or expired (by the database's clock), or when its holder (the same
-- replica name, restarted) asks again; the token moves on either way.
INSERT INTO engine_leases AS l
    (name, holder, token, grpc_address, api_address, acquired_at, expires_at)
VALUES ($1, $2, 1, $3, $4, now(), now() + $5 * interval '1 second')
ON CONFLICT (name) DO UPDATE
SET holder = EXCLUDED.holder, token = l.token + 1, grpc_address = EXCLUDED.grpc_address,
    api_address = EXCLUDED.api_address, acquired_at = now(), expires_at = EXCLUDED.expires_at
WHERE l.expires_at < now() OR l.holder = EXCLUDED.holder
RETURNING token;

-- name: lease_renew
UPDATE engine_leases SET expires_at = now() + $3 * interval '1 second'
WHERE name = $1 AND token = $2
RETURNING token;

-- name: lease_release
UPDATE engine_leases SET expires_at = now() - interval '1 millisecond'
WHERE name = $1 AND token = $2;

-- name: lease_get
SELECT holder, token, grpc_address, api_address, expires_at > now() AS live,
       extract(epoch FROM expires_at - now()) AS remaining_s
FROM engine_leases WHERE name = $1;

-- name: replica_seen
INSERT INTO engine_replicas AS r (id, grpc_address, api_address, scheduling, started_at, seen_at)
VALUES ($1, $2, $3, $4, now(), now())
ON CONFLICT (id) DO UPDATE
SET grpc_address = EXCLUDED.grpc_address, api_address = EXCLUDED.api_address,
    scheduling = EXCLUDED.scheduling, seen_at = now(),
    started_at = CASE WHEN $5 THEN now() ELSE r.started_at END;

-- name: replica_gone
DELETE FROM engine_replicas WHERE id = $1;

-- name: replicas_list
SELECT id, grpc_address, api_address, scheduling, extract(epoch FROM started_at),
       extract(epoch FROM now() - seen_at)
FROM engine_replicas ORDER BY id;
