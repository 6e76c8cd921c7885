"""Run filters from the primitive values transports carry (REST JSON, gRPC ``TasksFilter``).

Transport-neutral on purpose: the REST and gRPC adapters both build a
:class:`~hewer.domain.RunFilter` through these helpers, so they accept the same input.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from hewer.domain import RunFilter, RunStatus
from hewer.errors import InvalidInput


def run_statuses(names: Iterable[str]) -> tuple[RunStatus, ...]:
    """``["QUEUED", "running"]`` -> run statuses; an unknown name is refused."""
    found: list[RunStatus] = []
    for name in names:
        try:
            found.append(RunStatus(name.strip().lower()))
        except ValueError:
            allowed = ", ".join(s.upper() for s in RunStatus)
            raise InvalidInput(f"unknown status {name!r} (expected one of {allowed})") from None
    return tuple(dict.fromkeys(found))


def metadata_pairs(entries: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """``["customer:42", "region:eu"]`` -> ``(("customer", "42"), ("region", "eu"))``."""
    pairs: list[tuple[str, str]] = []
    for entry in entries:
        key, sep, value = entry.partition(":")
        if not sep or not key:
            raise InvalidInput(f"additional metadata filter {entry!r} must look like 'key:value'")
        pairs.append((key, value))
    return tuple(pairs)


def parse_time(text: str, what: str) -> float:
    """An ISO 8601 time (``Z`` or an offset; naive means UTC) as epoch seconds."""
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(f"{what} is not an ISO 8601 time: {text!r}") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.timestamp()


def run_filter(
    *,
    since: float | None,
    until: float | None,
    statuses: Iterable[str],
    workflows: Iterable[str],
    additional_metadata: Iterable[str],
) -> RunFilter:
    """A validated run filter."""
    if since is not None and until is not None and until < since:
        raise InvalidInput("filter 'until' is before 'since'")
    names = tuple(dict.fromkeys(w for w in workflows))
    if any(not w.strip() for w in names):
        raise InvalidInput("workflow ids in a filter must not be empty")
    return RunFilter(
        since=since,
        until=until,
        statuses=run_statuses(statuses),
        workflows=names,
        additional_metadata=metadata_pairs(additional_metadata),
    )
