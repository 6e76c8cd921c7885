"""Exceptions: one root, ``HewerError``, for everything Hewer raises on purpose."""

from __future__ import annotations

from datetime import timedelta


class HewerError(Exception):
    """Root of every error Hewer raises."""


class ConfigurationError(HewerError):
    """Settings are missing or contradictory (no token, bad address, ...)."""


class NotFound(HewerError):
    """The named object does not exist for the caller's tenant."""


class PermissionDenied(HewerError):
    """The caller is who it says (a valid token of the tenant) but may not do this: act
    as a worker another token registered."""


class TooLarge(HewerError):
    """An answer would exceed the message size limit."""


class AlreadyExists(HewerError):
    """An object of that name (or key) exists already."""


class IdempotencyCollision(AlreadyExists):
    """Runs refused because another run of their workflow holds their idempotency key:
    ``collisions`` pairs (existing run id, refused run id); the rest of the trigger
    (``created``) went through."""

    def __init__(self, created: list[str], collisions: list[tuple[str, str]]) -> None:
        super().__init__("idempotency key collision")
        self.created = created
        self.collisions = collisions


class IdempotencyCollisionError(HewerError):
    """A trigger refused (client side): another run of the workflow holds its idempotency
    key. ``existing_run_ids``: the runs holding the keys; ``created_run_ids``: the runs of a
    bulk trigger that went through."""

    def __init__(
        self, message: str, existing_run_ids: list[str], created_run_ids: list[str]
    ) -> None:
        super().__init__(message)
        self.existing_run_ids = existing_run_ids
        self.created_run_ids = created_run_ids

    @property
    def existing_run_id(self) -> str | None:
        return self.existing_run_ids[0] if self.existing_run_ids else None


class NotSupported(HewerError):
    """The request uses a feature this engine does not implement yet."""


class InvalidInput(HewerError, ValueError):
    """Input was rejected at the edge (bad JSON, wrong shape, out of range)."""


class StoreError(HewerError):
    """The database failed or is unreachable (translated from the driver's own exception);
    worth retrying, unlike the errors above.

    ``unavailable``: the database could not be reached or did not answer (the engine then
    stops writing until it answers again), as opposed to refusing this one statement (a
    conflict, a deadlock, a value it cannot store)."""

    def __init__(self, message: str, *, unavailable: bool = True) -> None:
        super().__init__(message)
        self.unavailable = unavailable


class LeaseLost(StoreError):
    """A write was refused because this replica no longer holds the scheduling lease
    (another replica took it over): the transaction was rolled back."""

    def __init__(self, message: str) -> None:
        super().__init__(message, unavailable=True)


class TaskRunError(HewerError):
    """A run finished FAILED or CANCELLED; ``errors`` maps task name to its error text."""

    def __init__(self, run_id: str, status: str, errors: dict[str, str]) -> None:
        self.run_id = run_id
        self.status = status
        self.errors = errors
        detail = "; ".join(f"{name}: {err}" for name, err in errors.items()) or status
        super().__init__(f"run {run_id} {status.lower()}: {detail}")


class NonRetryableError(HewerError):
    """Raise from a task to fail it without using its remaining retries."""


class RetryAfter(HewerError):
    """Raise from a task to be retried no sooner than ``delay`` (counts as a retry)."""

    def __init__(self, delay: timedelta, message: str = "") -> None:
        self.delay = delay
        super().__init__(message or f"retry after {delay.total_seconds():g}s")
