"""hatchet-sdk's REST feature clients (workers, runs.cancel) against our engine.

Run as a script: ``python hatchet_admin.py workers``, ``... cancel RUN_ID``,
``... cancel-filter SINCE_ISO WORKFLOW KEY:VALUE``, ``... metrics``. Prints one JSON line.
Never imported by the test process (hatchet-sdk's protobuf names would clash with ours).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

from hatchet_sdk import Hatchet
from hatchet_sdk.features.runs import BulkCancelReplayOpts, RunFilter

hatchet = Hatchet()


def workers() -> dict[str, object]:
    listed = hatchet.workers.list()
    rows = listed.rows or []
    out: dict[str, object] = {
        "rows": [
            {"id": w.metadata.id, "name": w.name, "status": w.status.value if w.status else None}
            for w in rows
        ]
    }
    if rows:
        one = hatchet.workers.get(rows[0].metadata.id)
        out["get"] = {"id": one.metadata.id, "type": one.type.value}
        paused = hatchet.workers.pause(rows[0].metadata.id)
        out["paused"] = paused.status.value if paused.status else None
        unpaused = hatchet.workers.unpause(rows[0].metadata.id)
        out["unpaused"] = unpaused.status.value if unpaused.status else None
    return out


def cancel(run_id: str) -> dict[str, object]:
    hatchet.runs.cancel(run_id)
    return {"cancelled": run_id}


def cancel_filter(since: str, workflow: str, pair: str) -> dict[str, object]:
    key, _, value = pair.partition(":")
    hatchet.runs.bulk_cancel(
        BulkCancelReplayOpts(
            filters=RunFilter(
                since=datetime.fromisoformat(since),
                workflow_ids=[workflow],
                additional_metadata={key: value},
            )
        )
    )
    return {"cancelled_by_filter": True}


def metrics() -> dict[str, object]:
    stats = hatchet.metrics.get_task_stats()
    counts = hatchet.metrics.get_task_metrics()
    return {
        "task_stats": {name: stat.to_dict() for name, stat in stats.items()},
        "task_metrics": counts.model_dump(),
        "queues": hatchet.metrics.get_queue_metrics(),
        "prometheus": hatchet.metrics.scrape_tenant_prometheus_metrics(),
    }


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    result = {
        "workers": workers,
        "cancel": cancel,
        "cancel-filter": cancel_filter,
        "metrics": metrics,
    }[command](*args)
    print(json.dumps(result, sort_keys=True, default=str))
