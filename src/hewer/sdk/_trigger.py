"""Building trigger requests from the run methods' keyword options.

A run triggered while a task body is running becomes that task's child: the request names
the parent run and task and a per-attempt ``child_index`` (as hatchet-sdk does), and
``sticky=True`` pins it to the parent's worker.
"""

from __future__ import annotations

from typing import Any

from hewer.errors import ConfigurationError
from hewer.sdk import _serde, _wire
from hewer.sdk._context import current_context
from hewer.sdk._controls import check_desired_labels
from hewer.sdk._options import TriggerKwargs, check_priority

TRIGGER_OPTIONS = frozenset(TriggerKwargs.__optional_keys__)


def check_trigger_options(options: TriggerKwargs) -> None:
    """Refuse keywords the run methods do not know (``**options`` would swallow typos)."""
    unknown = sorted(set(options) - TRIGGER_OPTIONS)
    if unknown:
        raise TypeError(
            f"unexpected keyword argument {unknown[0]!r} (run options: {sorted(TRIGGER_OPTIONS)})"
        )


def trigger_request(name: str, input_json: str, options: TriggerKwargs) -> Any:
    """``TriggerWorkflowRequest`` for a run of ``name`` (namespaced) with ``options``."""
    check_trigger_options(options)
    metadata = options.get("additional_metadata")
    priority = check_priority(options.get("priority"))
    labels = check_desired_labels(options.get("desired_worker_labels"))
    sticky = options.get("sticky", False)
    if not isinstance(sticky, bool):
        raise ConfigurationError(f"sticky must be True or False, got {sticky!r}")
    ctx = current_context()
    if sticky and ctx is None:
        raise ConfigurationError(
            f"sticky=True (triggering {name!r}) runs the child on the worker of the task that "
            "triggers it, so it only works from inside a running task"
        )
    child_key = options.get("child_key")
    if child_key is not None and (not isinstance(child_key, str) or not child_key):
        raise ConfigurationError(f"child_key must be a non-empty string, got {child_key!r}")
    if child_key is not None and ctx is None:
        raise ConfigurationError(
            f"child_key (triggering {name!r}) names a child of the running task, so it only "
            "works from inside a running task"
        )
    parent = (
        None
        if ctx is None
        else _wire.Parent(
            ctx.workflow_run_id, ctx.task_run_external_id, ctx._next_child_index(), child_key
        )
    )
    return _wire.trigger_request(
        name,
        input_json,
        additional_metadata_json=_serde.dumps(dict(metadata)) if metadata else None,
        priority=priority,
        desired_worker_labels=labels,
        parent=parent,
        desired_worker_id=ctx.worker_id if sticky and ctx is not None else None,
    )
