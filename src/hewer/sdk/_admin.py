"""Administration: workers (``hw.workers``) over the engine's HTTP API, and cancelling runs
(``hw.runs.cancel``) over gRPC ``v1.AdminService/CancelTasks``.

The HTTP API's base URL is ``HEWER_SERVER_URL`` if set, else the token's ``server_url``
claim (the engine writes its real address there).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc

from hewer._proto.v1 import workflows_pb2 as v1_pb
from hewer.domain import WorkerStatus
from hewer.errors import ConfigurationError, HewerError, InvalidInput, NotFound
from hewer.sdk import _wire
from hewer.sdk._connection import is_local, token_claims
from hewer.sdk._core import ClientCore
from hewer.sdk._retry import aio_call_with_retry, call_with_retry, translate

logger = logging.getLogger(__name__)

HTTP_TIMEOUT_SECONDS = 10.0
CANCEL_TIMEOUT_SECONDS = 30.0
RUN_STATUSES = ("QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


# Where a worker is in its life: ACTIVE (takes work), PAUSED (connected, takes no new work),
# INACTIVE (silent too long; its tasks went elsewhere), STOPPED (left gracefully).
WorkerState = WorkerStatus


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker as the engine sees it."""

    id: str
    name: str
    status: WorkerState
    status_reason: str
    status_changed_at: datetime | None
    slots_used: int
    slots_total: int
    labels: dict[str, str] = field(default_factory=dict)
    last_heartbeat_at: datetime | None = None
    actions: tuple[str, ...] = ()
    connected: bool = False
    created_at: datetime | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkerInfo:
        """From the engine's Worker JSON (Hatchet's shape plus Hewer's keys)."""
        meta = data.get("metadata") or {}
        state = str(data.get("state") or data.get("status") or "inactive").lower()
        try:
            status = WorkerState(state)
        except ValueError:
            status = WorkerState.INACTIVE
        used = total = 0
        for slot in (data.get("slotConfig") or {}).values():
            limit = int(slot.get("limit", 0))
            total += limit
            used += limit - int(slot.get("available", limit))
        labels = {
            str(label["key"]): str(label.get("value", ""))
            for label in data.get("labels") or ()
            if isinstance(label, Mapping) and "key" in label
        }
        return cls(
            id=str(meta.get("id", "")),
            name=str(data.get("name", "")),
            status=status,
            status_reason=str(data.get("statusReason", "")),
            status_changed_at=_time(data.get("statusChangedAt")),
            slots_used=used,
            slots_total=total,
            labels=labels,
            last_heartbeat_at=_time(data.get("lastHeartbeatAt")),
            actions=tuple(str(a) for a in data.get("actions") or ()),
            connected=bool(data.get("connected", False)),
            created_at=_time(meta.get("createdAt")),
        )


def _time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """One task of a run, as the engine's run details say."""

    id: str
    name: str
    status: str  # QUEUED, RUNNING, COMPLETED, FAILED or CANCELLED
    output: dict[str, Any]
    error: str | None
    attempt: int
    worker_id: str | None
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A run and its tasks (``hw.runs.get``)."""

    id: str
    workflow_name: str
    status: str  # QUEUED, RUNNING, COMPLETED, FAILED or CANCELLED
    input: dict[str, Any]
    output: dict[str, Any]  # {task name: output} of the tasks that completed
    additional_metadata: dict[str, Any]
    error: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    tasks: tuple[TaskInfo, ...]
    parent_task_id: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunInfo:
        """From the engine's run details (Hatchet's V1WorkflowRunDetails)."""
        run = data.get("run") or {}
        meta = run.get("metadata") or {}
        tasks = tuple(
            TaskInfo(
                id=str(t.get("taskExternalId", "")),
                name=str(t.get("displayName", "")),
                status=str(t.get("status", "")),
                output=dict(t.get("output") or {}),
                error=t.get("errorMessage"),
                attempt=int(t.get("attempt", 1)),
                worker_id=t.get("workerId"),
                started_at=_time(t.get("startedAt")),
                finished_at=_time(t.get("finishedAt")),
            )
            for t in data.get("tasks") or ()
            if isinstance(t, Mapping)
        )
        return cls(
            id=str(meta.get("id", "")),
            workflow_name=str(run.get("displayName", "")),
            status=str(run.get("status", "")),
            input=dict(run.get("input") or {}),
            output=dict(run.get("output") or {}),
            additional_metadata=dict(run.get("additionalMetadata") or {}),
            error=run.get("errorMessage"),
            created_at=_time(meta.get("createdAt")),
            started_at=_time(run.get("startedAt")),
            finished_at=_time(run.get("finishedAt")),
            tasks=tasks,
            parent_task_id=run.get("parentTaskExternalId"),
        )


def _run_path(run_id: str) -> str:
    if not run_id or not run_id.strip():
        raise InvalidInput("a run id must not be empty")
    return "/api/v1/stable/workflow-runs/" + urllib.parse.quote(run_id.strip(), safe="")


def run_info(client: ClientCore, run_id: str) -> RunInfo:
    body = RestClient(client).call("GET", _run_path(run_id), what=f"read run {run_id!r}")
    return RunInfo.from_json(body or {})


def run_status(client: ClientCore, run_id: str) -> str:
    path = _run_path(run_id) + "/status"
    return str(RestClient(client).call("GET", path, what=f"read the status of run {run_id!r}"))


# --- HTTP --------------------------------------------------------------------------------


class RestClient:
    """Blocking JSON calls to the engine's HTTP API with the client's token."""

    def __init__(self, client: ClientCore) -> None:
        self._client = client

    @property
    def base_url(self) -> str:
        configured = self._client.settings.server_url
        if configured:
            return configured.rstrip("/")
        claimed = token_claims(self._client.connection.token).get("server_url")
        if not isinstance(claimed, str) or not claimed:
            raise ConfigurationError(
                "no engine HTTP API address: set HEWER_SERVER_URL (the token carries no "
                "server_url claim)"
            )
        return claimed.rstrip("/")

    @property
    def tenant_id(self) -> str:
        tenant = self._client.connection.tenant_id
        if not tenant:
            raise ConfigurationError("the token names no tenant (no 'sub' claim)")
        return tenant

    def call(self, method: str, path: str, body: Any = None, *, what: str) -> Any:
        base = self.base_url
        url = base + path
        data = None if body is None else json.dumps(body).encode()
        headers = {
            "Authorization": f"Bearer {self._client.connection.token}",
            "Accept": "application/json",
        }
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        parts = urllib.parse.urlsplit(base)
        handlers: list[urllib.request.BaseHandler] = []
        # Loopback never goes through a proxy, whatever *_proxy variables say.
        if is_local(parts.netloc):
            handlers.append(urllib.request.ProxyHandler({}))
        client_tls = self._client.connection.tls
        if parts.scheme == "https" and client_tls is not None:
            handlers.append(urllib.request.HTTPSHandler(context=client_tls.ssl_context()))
        opener = urllib.request.build_opener(*handlers)
        try:
            with opener.open(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise _http_error(exc, what) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HewerError(
                f"{what}: cannot reach the engine's HTTP API at {base}: {reason}"
            ) from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise HewerError(f"{what}: the engine answered with invalid JSON") from None


def _http_error(exc: urllib.error.HTTPError, what: str) -> HewerError:
    try:
        body = json.loads(exc.read() or b"{}")
        detail = "; ".join(str(e.get("description", "")) for e in body.get("errors", ()))
    except (ValueError, AttributeError, TypeError):
        detail = ""
    detail = detail or str(exc.reason)
    message = f"{what}: {detail}"
    if exc.code == 404:
        return NotFound(message)
    if exc.code == 400:
        return InvalidInput(message)
    if exc.code in (401, 403):
        return ConfigurationError(f"{what}: the engine rejected the token ({detail})")
    return HewerError(f"{what} failed (HTTP {exc.code}): {detail}")


def _worker_path(worker_id: str) -> str:
    if not worker_id or not worker_id.strip():
        raise InvalidInput("a worker id must not be empty")
    return "/api/v1/workers/" + urllib.parse.quote(worker_id.strip(), safe="")


_WorkerInfos = list[WorkerInfo]


class Workers:
    """``hw.workers``: list, read, pause and resume the tenant's workers."""

    def __init__(self, client: ClientCore) -> None:
        self._rest = RestClient(client)

    def list(self) -> list[WorkerInfo]:
        """Every worker of the tenant (including stopped and inactive ones), oldest first."""
        tenant = urllib.parse.quote(self._rest.tenant_id, safe="")
        body = self._rest.call("GET", f"/api/v1/tenants/{tenant}/worker", what="list workers")
        return [WorkerInfo.from_json(row) for row in (body or {}).get("rows") or ()]

    def get(self, worker_id: str) -> WorkerInfo:
        """One worker; raises NotFound for an unknown id."""
        body = self._rest.call("GET", _worker_path(worker_id), what=f"get worker {worker_id}")
        return WorkerInfo.from_json(body)

    def pause(self, worker_id: str) -> WorkerInfo:
        """Stop assigning new tasks to a live worker; its running tasks go on."""
        return self._set_paused(worker_id, True)

    def resume(self, worker_id: str) -> WorkerInfo:
        """Let a paused worker take new tasks again."""
        return self._set_paused(worker_id, False)

    def _set_paused(self, worker_id: str, paused: bool) -> WorkerInfo:
        verb = "pause" if paused else "resume"
        body = self._rest.call(
            "PATCH",
            _worker_path(worker_id),
            {"isPaused": paused},
            what=f"{verb} worker {worker_id}",
        )
        return WorkerInfo.from_json(body)

    async def aio_list(self) -> _WorkerInfos:
        return await asyncio.to_thread(self.list)

    async def aio_get(self, worker_id: str) -> WorkerInfo:
        return await asyncio.to_thread(self.get, worker_id)

    async def aio_pause(self, worker_id: str) -> WorkerInfo:
        return await asyncio.to_thread(self.pause, worker_id)

    async def aio_resume(self, worker_id: str) -> WorkerInfo:
        return await asyncio.to_thread(self.resume, worker_id)


# --- cancelling runs (gRPC) --------------------------------------------------------------


@dataclass(frozen=True)
class RunFilter:
    """Which runs ``hw.runs.cancel(filter=...)`` applies to: created in ``[since, until]``,
    in one of ``statuses`` (QUEUED, RUNNING, ...), of one of ``workflows`` (names, namespaced
    like everywhere else, or ids), carrying all of ``additional_metadata``. Empty = any."""

    since: datetime
    until: datetime | None = None
    statuses: Sequence[str] = ()
    workflows: Sequence[str] = ()
    additional_metadata: Mapping[str, str] = field(default_factory=dict)


def cancel_request(
    client: ClientCore, ids: str | Sequence[str] | None, filter: RunFilter | None
) -> Any:
    """``CancelTasksRequest`` for run/task ids or a filter (exactly one of them)."""
    if isinstance(ids, str):
        ids = [ids]
    id_list = [i.strip() for i in ids or ()]
    if id_list and filter is not None:
        raise InvalidInput("cancel takes run ids or a filter, not both")
    if filter is None:
        if not id_list or not all(id_list):
            raise InvalidInput("cancel needs at least one run id (or a filter)")
        return v1_pb.CancelTasksRequest(external_ids=id_list)
    given = [filter.statuses] if isinstance(filter.statuses, str) else filter.statuses
    statuses = [s.strip().upper() for s in given]
    unknown = [s for s in statuses if s not in RUN_STATUSES]
    if unknown:
        raise InvalidInput(f"unknown status {unknown[0]!r} (expected one of {RUN_STATUSES})")
    request = v1_pb.CancelTasksRequest()
    f = request.filter
    f.since.CopyFrom(_wire.timestamp(_aware(filter.since)))
    if filter.until is not None:
        f.until.CopyFrom(_wire.timestamp(_aware(filter.until)))
    f.statuses.extend(statuses)
    workflows = [filter.workflows] if isinstance(filter.workflows, str) else filter.workflows
    f.workflow_ids.extend(w if _UUID.match(w) else client.namespaced(w) for w in workflows)
    f.additional_metadata.extend(f"{k}:{v}" for k, v in filter.additional_metadata.items())
    return request


def _aware(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def cancel(
    client: ClientCore, ids: str | Sequence[str] | None, filter: RunFilter | None
) -> list[str]:
    request = cancel_request(client, ids, filter)
    stub = _wire.admin_stub(client._pool.sync())
    try:
        response = call_with_retry(
            lambda: stub.CancelTasks(
                request, metadata=client._pool.metadata, timeout=CANCEL_TIMEOUT_SECONDS
            ),
            what="cancel",
        )
    except grpc.RpcError as exc:
        raise translate(exc, "cancel") from exc
    return [str(i) for i in response.cancelled_tasks]


async def aio_cancel(
    client: ClientCore, ids: str | Sequence[str] | None, filter: RunFilter | None
) -> list[str]:
    request = cancel_request(client, ids, filter)
    stub = _wire.admin_stub(client._pool.aio())
    try:
        response = await aio_call_with_retry(
            lambda: stub.CancelTasks(
                request, metadata=client._pool.metadata, timeout=CANCEL_TIMEOUT_SECONDS
            ),
            what="cancel",
        )
    except grpc.RpcError as exc:
        raise translate(exc, "cancel") from exc
    return [str(i) for i in response.cancelled_tasks]


class Metrics:
    """``hw.metrics``: what is queued and running, as the engine's Task Stats API says."""

    def __init__(self, client: ClientCore) -> None:
        self._rest = RestClient(client)

    def task_stats(self, task_names: Sequence[str] | None = None) -> dict[str, Any]:
        """Per task name, ``{"queued": {"total", "queues", "concurrency", "oldest"?, ...},
        "running": {...}}``. Naming tasks returns exactly those, zeros included."""
        tenant = urllib.parse.quote(self._rest.tenant_id, safe="")
        path = f"/api/v1/tenants/{tenant}/task-stats"
        if task_names:
            path += "?" + urllib.parse.urlencode([("taskNames", n) for n in task_names])
        body = self._rest.call("GET", path, what="read task stats")
        return dict(body or {})

    def queued(self, task_names: Sequence[str]) -> int:
        """Tasks of these names waiting in their queues now."""
        stats = self.task_stats(task_names)
        return sum(int(stats.get(n, {}).get("queued", {}).get("total", 0)) for n in task_names)
