"""What only the SQLite store promises: durable settings, reopening, migrating old files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hewer.domain import RunStatus, TaskStatus
from hewer.engine.core.transitions import details
from hewer.store import SqliteStore, _queries

NOW = 1_700_000_000.0


async def test_reopen_keeps_data_and_migrations_are_idempotent(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "x.db")
    await first.open()
    t = await first.tenant_ensure("acme", NOW)
    await first.close()
    second = SqliteStore(tmp_path / "x.db")
    await second.open()
    assert await second.tenant_get(t.id) == t
    await second.close()


async def test_durable_settings(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "x.db")
    await store.open()
    try:
        pragmas = await store._writer_call(
            lambda c: (
                c.execute("PRAGMA journal_mode").fetchone()[0],
                c.execute("PRAGMA synchronous").fetchone()[0],
            )
        )
        assert pragmas == ("wal", 2)  # FULL: a commit that returned is on disk
    finally:
        await store.close()


def _apply(db: Path, version: int) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
    for v, _, sql in _queries.migrations("sqlite"):
        if v == version:
            for statement in _queries.split_statements(sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (?)", (v,))
    conn.commit()
    conn.close()


async def test_a_database_of_the_first_schema_is_migrated_with_its_runs(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    _apply(db, 1)
    conn = sqlite3.connect(db)
    conn.executescript(
        """
        INSERT INTO tenants VALUES ('t', 'default', 1);
        INSERT INTO workflows VALUES ('wf', 't', 'job', 'v1',
            '{"tasks": [{"readable_id": "job", "action_id": "job:job", "parents": [],
              "retries": 0, "timeout_s": 60, "schedule_timeout_s": 300,
              "backoff_factor": null, "backoff_max_s": null, "slot_requests": {"default": 1}}],
              "default_priority": 1, "sticky": null, "concurrency": []}', 1, 1);
        INSERT INTO runs (id, tenant_id, workflow_id, workflow_name, status, input, priority,
                          created_at)
        VALUES ('r1', 't', 'wf', 'job', 'running', '{}', 1, 1),
               ('r2', 't', 'wf', 'job', 'completed', '{}', 1, 2);
        INSERT INTO tasks (seq, id, tenant_id, run_id, step_id, readable_id, action_id, status,
                           priority, parents, slot_requests, timeout_s, schedule_timeout_s,
                           worker_id, created_at, queued_at, output)
        VALUES (1, 'r1', 't', 'r1', 'wf:job', 'job', 'job:job', 'running', 1, '[]',
                '{"default": 1}', 60, 300, 'w1', 1, 1, NULL),
               (2, 'r2', 't', 'r2', 'wf:job', 'job', 'job:job', 'completed', 1, '[]',
                '{"default": 1}', 60, 300, 'w1', 2, 2, '{"ok": true}');
        INSERT INTO task_attempts VALUES ('r1', 0, 'w1', 1, 1, NULL, NULL, 1);
        """
    )
    conn.commit()
    conn.close()
    store = SqliteStore(db)
    await store.open()
    try:
        running = await store.run_get("t", "r1")
        done = await store.run_get("t", "r2")
        assert running is not None and done is not None
        assert details(*running).status is RunStatus.RUNNING
        assert details(*done).status is RunStatus.COMPLETED
        assert done[1][0].output == '{"ok": true}'
        [(task, version)] = await store.tasks_running()
        assert (task.id, task.status, task.acked, version) == ("r1", TaskStatus.RUNNING, True, "v1")
        wf = await store.workflow_get_by_name("t", "job")
        assert wf is not None and wf.version_id == "v1" and wf.tasks[0].action_id == "job:job"
    finally:
        await store.close()


async def test_the_database_and_the_token_file_are_private_whatever_the_umask(
    tmp_path: Path,
) -> None:
    import os
    import stat

    from hewer.engine.app import write_private

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    previous = os.umask(0o022)  # the usual default: files readable by everyone
    try:
        fresh = tmp_path / "fresh.db"
        store = SqliteStore(fresh)
        await store.open()
        await store.meta_get_or_set("k", "v")  # a write: the WAL and its index exist
        for path in (fresh, Path(f"{fresh}-wal"), Path(f"{fresh}-shm")):
            assert mode(path) == 0o600, path
        await store.close()

        old = tmp_path / "old.db"
        old.touch(mode=0o644)
        store = SqliteStore(old)
        await store.open()
        assert mode(old) == 0o600  # an existing, readable database is made private
        await store.close()

        token = tmp_path / "state" / "token"
        token.parent.mkdir()
        token.write_text("old")
        token.chmod(0o644)
        write_private(token, "secret")
        assert mode(token) == 0o600 and token.read_text() == "secret\n"
    finally:
        os.umask(previous)
