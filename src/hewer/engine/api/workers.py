"""Worker endpoints: read, list, pause and resume.

The JSON is Hatchet's ``Worker`` (what ``hatchet-sdk`` parses after its shutdown PATCH),
plus a few Hewer keys it ignores: ``state`` (ACTIVE, PAUSED, INACTIVE or STOPPED; the
Hatchet ``status`` enum has no STOPPED, so a stopped worker's ``status`` is INACTIVE),
``statusReason``, ``statusChangedAt`` and ``connected``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request

from hewer.domain import WorkerStatus
from hewer.engine.api._http import json_object
from hewer.engine.core.auth import Principal
from hewer.engine.core.scopes import Scope
from hewer.engine.core.service import EngineCore, WorkerView
from hewer.errors import InvalidInput

WORKER_TYPE = "SELFHOSTED"

# Hatchet's REST WorkerStatus enum: ACTIVE, INACTIVE, PAUSED.
API_STATUS = {
    WorkerStatus.ACTIVE: "ACTIVE",
    WorkerStatus.PAUSED: "PAUSED",
    WorkerStatus.INACTIVE: "INACTIVE",
    WorkerStatus.STOPPED: "INACTIVE",
}

# Our proto's SDKS names -> Hatchet's REST WorkerRuntimeSDKs.
_LANGUAGES = {"GO": "GOLANG", "PYTHON": "PYTHON", "TYPESCRIPT": "TYPESCRIPT", "RUBY": "RUBY"}

_LABEL_NAMESPACE = uuid.UUID("6f1f5d0e-8a43-4c1b-9a55-3f0c2b7f4e21")


def iso(epoch: float) -> str:
    """Epoch seconds as an RFC 3339 UTC time (``...Z``)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def _runtime_info(info: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for src, dst in (("sdk_version", "sdkVersion"), ("language_version", "languageVersion")):
        if isinstance(info.get(src), str) and info[src]:
            out[dst] = info[src]
    if isinstance(info.get("os"), str) and info["os"]:
        out["os"] = info["os"]
    language = _LANGUAGES.get(str(info.get("language", "")).upper())
    if language:
        out["language"] = language
    return out


def worker_json(view: WorkerView) -> dict[str, Any]:
    """A worker as Hatchet's ``Worker`` JSON (plus Hewer's extra keys)."""
    r = view.record
    created = iso(r.created_at)
    body: dict[str, Any] = {
        "metadata": {
            "id": r.id,
            "createdAt": created,
            "updatedAt": iso(max(r.created_at, r.status_changed_at)),
        },
        "name": r.name,
        "type": WORKER_TYPE,
        "status": API_STATUS[r.status],
        "actions": list(r.actions),
        "slotConfig": {
            kind: {"available": max(0, total - view.slots_used.get(kind, 0)), "limit": total}
            for kind, total in r.slot_config.items()
        },
        "labels": [
            {
                "metadata": {
                    "id": str(uuid.uuid5(_LABEL_NAMESPACE, f"{r.id}/{key}")),
                    "createdAt": created,
                    "updatedAt": created,
                },
                "key": key,
                "value": str(value),
            }
            for key, value in sorted(r.labels.items())
        ],
        "state": r.status.upper(),
        "statusReason": r.status_reason,
        "statusChangedAt": iso(r.status_changed_at),
        "connected": view.connected,
    }
    if r.last_heartbeat_at is not None:
        body["lastHeartbeatAt"] = iso(r.last_heartbeat_at)
    runtime = _runtime_info(r.runtime_info)
    if runtime:
        body["runtimeInfo"] = runtime
    return body


class WorkerRoutes:
    def __init__(self, core: EngineCore) -> None:
        self.core = core

    async def get(self, request: Request, tenant_id: str) -> Any:
        return worker_json(await self.core.worker_view(tenant_id, request.path_params["worker"]))

    async def list(self, request: Request, tenant_id: str) -> Any:
        rows = [worker_json(v) for v in await self.core.workers_view(tenant_id)]
        return {"pagination": {"current_page": 1, "num_pages": 1}, "rows": rows}

    async def update(self, request: Request, tenant_id: str) -> Any:
        """``{"isPaused": bool}``; an empty object changes nothing (as upstream)."""
        body = await json_object(request)
        worker_id = request.path_params["worker"]
        principal: Principal = request.state.principal
        if principal.scope is not Scope.ADMIN:
            # A worker token pauses its own worker (hatchet-sdk does, as it stops); only an
            # admin token pauses or resumes others.
            await self.core.check_worker_caller(tenant_id, worker_id, principal)
        paused = body.get("isPaused")
        if paused is None:
            return worker_json(await self.core.worker_view(tenant_id, worker_id))
        if not isinstance(paused, bool):
            raise InvalidInput("'isPaused' must be true or false")
        return worker_json(await self.core.set_paused(tenant_id, worker_id, paused))
