"""What each kind of token may do: least privilege for the processes that hold them.

A token carries one scope (a signed claim, so it cannot be changed without the secret):

- ``admin``: everything (the engine's local token, and ``hewer token create`` unless told
  otherwise; tokens minted before scopes existed count as admin).
- ``client``: read runs and workers, trigger and cancel runs, register workflows and rate
  limits; it cannot act as a worker nor pause or resume one.
- ``worker``: what a worker process does (register, take and report tasks, heartbeat,
  labels, logs), register its workflows, read runs, and spawn child runs from a task it
  runs; no other triggers or cancels.
- ``read``: reads only (dashboards, autoscalers such as KEDA).

Every gRPC method and REST route names the permission it needs; one not named needs
``manage``, which only admin tokens have, so a method added later is closed to scoped tokens
until someone decides otherwise.
"""

from __future__ import annotations

from enum import StrEnum

from hewer.errors import InvalidInput, PermissionDenied


class Scope(StrEnum):
    ADMIN = "admin"
    CLIENT = "client"
    WORKER = "worker"
    READ = "read"


class Permission(StrEnum):
    READ = "read"  # runs, workers, stats
    RUN = "run"  # trigger, cancel, replay runs
    DEFINE = "define"  # workflows, rate limits
    WORK = "work"  # act as a worker
    SPAWN = "spawn"  # trigger a child run from a task the caller's worker runs
    MANAGE = "manage"  # everything else (pause and resume workers, ...)


GRANTS: dict[Scope, frozenset[Permission]] = {
    Scope.ADMIN: frozenset(Permission),
    Scope.CLIENT: frozenset({Permission.READ, Permission.RUN, Permission.DEFINE}),
    Scope.WORKER: frozenset(
        {Permission.WORK, Permission.DEFINE, Permission.READ, Permission.SPAWN}
    ),
    Scope.READ: frozenset({Permission.READ}),
}

_READ = (
    "/Dispatcher/GetVersion",
    "/Dispatcher/SubscribeToWorkflowEvents",
    "/Dispatcher/SubscribeToWorkflowRuns",
    "/v1.AdminService/GetRunDetails",
    "/hewer.v1.Runs/Wait",
    "/hewer.v1.Worker/Hello",
)
_WORK = (
    "/Dispatcher/Register",
    "/Dispatcher/Listen",
    "/Dispatcher/ListenV2",
    "/Dispatcher/Heartbeat",
    "/Dispatcher/SendStepActionEvent",
    "/Dispatcher/SendBatchActionEvent",
    "/Dispatcher/SendGroupKeyActionEvent",
    "/Dispatcher/Unsubscribe",
    "/Dispatcher/UpsertWorkerLabels",
    "/Dispatcher/ReleaseSlot",
    "/Dispatcher/RefreshTimeout",
    "/Dispatcher/PutOverridesData",
    "/Dispatcher/RestoreEvictedTask",
    "/v1.V1Dispatcher/DurableTask",
    "/EventsService/PutLog",
    "/EventsService/PutStreamEvent",
    "/hewer.v1.Worker/Listen",
    "/hewer.v1.Worker/Report",
)
_RUN = (
    "/WorkflowService/TriggerWorkflow",
    "/WorkflowService/BulkTriggerWorkflow",
    "/WorkflowService/ScheduleWorkflow",
    "/v1.AdminService/TriggerWorkflowRun",
    "/v1.AdminService/CancelTasks",
    "/v1.AdminService/ReplayTasks",
    "/v1.AdminService/BranchDurableTask",
    "/EventsService/Push",
    "/EventsService/BulkPush",
    "/EventsService/ReplaySingleEvent",
)
_DEFINE = (
    "/WorkflowService/PutWorkflow",
    "/v1.AdminService/PutWorkflow",
    "/WorkflowService/PutRateLimit",
    "/WorkflowService/PauseRateLimit",
)
METHODS: dict[str, Permission] = {
    **dict.fromkeys(_READ, Permission.READ),
    **dict.fromkeys(_WORK, Permission.WORK),
    **dict.fromkeys(_RUN, Permission.RUN),
    **dict.fromkeys(_DEFINE, Permission.DEFINE),
}
"""The permission each gRPC method needs (a method not here needs MANAGE)."""

# Triggers a worker token may make, as child spawns only (see Permission.SPAWN).
SPAWNING = frozenset({"/WorkflowService/TriggerWorkflow", "/WorkflowService/BulkTriggerWorkflow"})


def parse_scope(text: str | None) -> Scope:
    """A token's scope claim; a token without one predates scopes and is an admin's."""
    if text is None:
        return Scope.ADMIN
    try:
        return Scope(text)
    except ValueError:
        allowed = ", ".join(s.value for s in Scope)
        raise InvalidInput(f"unknown token scope {text!r} (expected one of {allowed})") from None


def allowed(scope: Scope, needed: Permission) -> bool:
    return needed in GRANTS[scope]


def check(scope: Scope, needed: Permission, what: str) -> None:
    """Raise PermissionDenied unless ``scope`` grants ``needed``."""
    if not allowed(scope, needed):
        raise PermissionDenied(f"a {scope.value} token may not call {what}")


def check_method(scope: Scope, method: str) -> bool:
    """Whether ``scope`` may call the gRPC ``method`` outright; False means it may only
    as a child spawn (the handler checks the parent). Raises PermissionDenied otherwise."""
    needed = METHODS.get(method, Permission.MANAGE)
    if allowed(scope, needed):
        return True
    if method in SPAWNING and allowed(scope, Permission.SPAWN):
        return False
    raise PermissionDenied(f"a {scope.value} token may not call {method}")
