"""Desired worker labels from the wire (tasks at registration, runs at trigger)."""

from __future__ import annotations

from typing import Any

from hewer._proto.v1.shared import trigger_pb2
from hewer.defaults import LABEL_WEIGHT
from hewer.domain import DesiredLabel, LabelComparator
from hewer.errors import InvalidInput

_COMPARATORS = {
    trigger_pb2.EQUAL: LabelComparator.EQUAL,
    trigger_pb2.NOT_EQUAL: LabelComparator.NOT_EQUAL,
    trigger_pb2.GREATER_THAN: LabelComparator.GREATER_THAN,
    trigger_pb2.GREATER_THAN_OR_EQUAL: LabelComparator.GREATER_THAN_OR_EQUAL,
    trigger_pb2.LESS_THAN: LabelComparator.LESS_THAN,
    trigger_pb2.LESS_THAN_OR_EQUAL: LabelComparator.LESS_THAN_OR_EQUAL,
}


def desired_labels(labels: Any) -> tuple[DesiredLabel, ...]:
    """``map<string, DesiredWorkerLabels>`` as records; upstream's defaults (EQUAL, weight
    100, not required) where a field is unset."""
    out: list[DesiredLabel] = []
    for key, wanted in sorted(labels.items()):
        if not key:
            raise InvalidInput("desired worker label keys must not be empty")
        if wanted.HasField("int_value"):
            value: str | int = int(wanted.int_value)
        elif wanted.HasField("str_value"):
            value = str(wanted.str_value)
        else:
            raise InvalidInput(f"desired worker label {key!r} has no value")
        comparator = LabelComparator.EQUAL
        if wanted.HasField("comparator"):
            if wanted.comparator not in _COMPARATORS:
                raise InvalidInput(f"desired worker label {key!r}: unknown comparator")
            comparator = _COMPARATORS[wanted.comparator]
        out.append(
            DesiredLabel(
                key=key,
                value=value,
                comparator=comparator,
                required=bool(wanted.required) if wanted.HasField("required") else False,
                weight=int(wanted.weight) if wanted.HasField("weight") else LABEL_WEIGHT,
            )
        )
    return tuple(out)
