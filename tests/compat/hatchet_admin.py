"""hatchet-sdk's REST feature clients (workers, runs.cancel) against our engine.

Run as a script: ``python hatchet_admin.py workers``, ``... cancel RUN_ID``,
``... cancel-filter SINCE_ISO WORKFLOW KEY:VALUE``, ``... metrics``, ``... runs ID...``.
Prints one JSON line.
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


def runs(*run_ids: str) -> dict[str, object]:
    """``runs.get`` and ``runs.get_status`` of each run, parsed by the SDK's own models."""
    out: dict[str, object] = {}
    for run_id in run_ids:
        details = hatchet.runs.get(run_id)
        out[run_id] = {
            "status": hatchet.runs.get_status(run_id).value,
            "run_status": details.run.status.value,
            "run_id": details.run.metadata.id,
            "display_name": details.run.display_name,
            "input": details.run.input,
            "output": details.run.output,
            "error": details.run.error_message,
            "tasks": sorted(
                (t.display_name, t.status.value, t.output, t.workflow_run_external_id)
                for t in details.tasks
            ),
            "shape": {
                s.task_name: sorted(
                    next(x.task_name for x in details.shape if x.step_id == c)
                    for c in s.children_step_ids
                )
                for s in details.shape
            },
        }
    return out


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
        "runs": runs,
    }[command](*args)
    print(json.dumps(result, sort_keys=True, default=str))
