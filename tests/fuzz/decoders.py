"""An atheris harness over Hewer's request decoders: the code that turns what a client
sends into the engine's specs before anything is stored.

Run by ``test_atheris.py`` on a copy of ``corpus/`` for a bounded number of inputs. Each
input picks a decoder by its first byte and feeds it the rest. A decoder may refuse its
input only with the errors the edge turns into a clear status (InvalidInput and its kin,
protobuf's DecodeError); any other exception is a finding, and atheris stops with it.

    python tests/fuzz/decoders.py CORPUS_DIR -atheris_runs=20000
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

import atheris

with atheris.instrument_imports(include=["hewer"]):
    from google.protobuf.message import DecodeError

    from hewer._proto.v1 import workflows_pb2 as v1
    from hewer._proto.v1.shared import trigger_pb2
    from hewer.durations import parse_duration
    from hewer.engine.core import cel, ingest, triggers
    from hewer.engine.core.workflows import check_definition
    from hewer.engine.grpc import admin, workflows
    from hewer.errors import HewerError

# What the edge answers as a client error (INVALID_ARGUMENT, UNIMPLEMENTED, ...).
REFUSALS = (HewerError, DecodeError)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def json_object(data: bytes) -> None:
    ingest.json_object_text(_text(data), "input")


def duration(data: bytes) -> None:
    parse_duration(_text(data))


def expression(data: bytes) -> None:
    compiled = cel.compile_expression(_text(data))
    compiled.evaluate({"input": {"a": 1, "b": "x", "c": [1, 2]}, "additional_metadata": {}})


def cron(data: bytes) -> None:
    triggers.check_cron(_text(data))


def put_workflow(data: bytes) -> None:
    request = v1.CreateWorkflowVersionRequest.FromString(data)
    tasks = [admin.task_def(t) for t in request.tasks]
    concurrency = [admin.concurrency_spec(c) for c in request.concurrency_arr]
    check_definition(request.name, tasks, concurrency)


def trigger(data: bytes) -> None:
    request = trigger_pb2.TriggerWorkflowRequest.FromString(data)
    spec = workflows.trigger_spec(request)
    ingest.json_object_text(spec.input, "input")


TARGETS: list[Callable[[bytes], None]] = [
    json_object,
    duration,
    expression,
    cron,
    put_workflow,
    trigger,
]


def one_input(data: bytes) -> None:
    if not data:
        return
    target = TARGETS[data[0] % len(TARGETS)]
    with contextlib.suppress(*REFUSALS):
        target(data[1:])


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
