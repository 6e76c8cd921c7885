"""Property-based fuzzing of every gRPC method the engine serves (reliability reference B2,
B4): hypothesis builds well-formed messages of each method's request type from its
descriptor, with hostile values in every field (extreme integers, NaN, odd Unicode,
unknown enum numbers, JSON text that is not JSON or not strict, nested and repeated
fields), and sends them with an admin token. No answer may be INTERNAL or UNKNOWN, the
engine logs no traceback, and it still serves afterwards. Methods added later are fuzzed
without a new test (they are found from the descriptors)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hewer.engine.grpc.relay import method_shapes
from hewer.testing import EngineThread
from tests.grpc_raw import call_raw, input_type

EXAMPLES = 30
BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)

_JSON_TEXT = st.one_of(
    st.sampled_from(
        [
            "{}",
            '{"a": 1}',
            "[]",
            "null",
            "1e400",
            '{"x": 1e400}',
            '{"x": NaN}',
            '{"x": Infinity}',
            '{"x": "\\u0000"}',
            '{"x": "\\ud800"}',
            '{"x": {"y": [1, {"z": null}]}}',
            '{"a": 1, "a": 2}',
            "{" * 200 + "}" * 200,
            "not json",
            "",
        ]
    ),
    st.text(max_size=40),
)
_INTS = {
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: st.integers(0, 2**64 - 1),
}
_JSONISH = ("input", "payload", "metadata", "data", "output", "event", "expression", "filter")


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INTS:
        edges = st.sampled_from([0, 1, -1]) if kind not in _UNSIGNED else st.sampled_from([0, 1])
        return st.one_of(edges, _INTS[kind])
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-5, 200))
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.one_of(
            st.binary(max_size=64), _JSON_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass"))
        )
    # Strings: JSON-looking text where a field carries JSON, odd Unicode everywhere.
    text = st.text(st.characters(codec="utf-8"), max_size=40)
    if any(word in field.name.lower() for word in _JSONISH):
        return st.one_of(_JSON_TEXT.filter(_utf8), text)
    return st.one_of(text, st.sampled_from(["", "x", "*", "a" * 300, "../../etc", "\u202e"]))


_UNSIGNED = {
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
}


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def messages(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    """Messages of ``desc`` with a random subset of fields set to hostile values."""
    cls = message_factory.GetMessageClass(desc)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in desc.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 2:
                continue
            entry = field.message_type
            if entry.GetOptions().map_entry:
                key = _scalar(entry.fields_by_name["key"])
                value_field = entry.fields_by_name["value"]
                value = (
                    messages(value_field.message_type, depth + 1)
                    if value_field.type == FieldDescriptor.TYPE_MESSAGE
                    else _scalar(value_field)
                )
                fields[field.name] = st.dictionaries(key, value, max_size=3)
                continue
            inner = messages(entry, depth + 1)
            fields[field.name] = st.lists(inner, max_size=3) if field.is_repeated else inner
        else:
            value = _scalar(field)
            fields[field.name] = st.lists(value, max_size=4) if field.is_repeated else value

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        msg = cls()
        names = (
            draw(st.sets(st.sampled_from(sorted(fields)), max_size=len(fields)))
            if fields
            else set()
        )
        for name in sorted(names):
            value = draw(fields[name])
            target = getattr(msg, name)
            field = desc.fields_by_name[name]
            try:
                if (
                    field.type == FieldDescriptor.TYPE_MESSAGE
                    and field.message_type.GetOptions().map_entry
                ):
                    for k, v in value.items():
                        if (
                            field.message_type.fields_by_name["value"].type
                            == FieldDescriptor.TYPE_MESSAGE
                        ):
                            target[k].CopyFrom(v)
                        else:
                            target[k] = v
                elif field.is_repeated:
                    if field.type == FieldDescriptor.TYPE_MESSAGE:
                        for item in value:
                            target.add().CopyFrom(item)
                    else:
                        target.extend(value)
                elif field.type == FieldDescriptor.TYPE_MESSAGE:
                    target.CopyFrom(value)
                else:
                    setattr(msg, name, value)
            except (ValueError, TypeError):
                continue  # a value protobuf itself refuses (e.g. a closed enum): not sent
        return msg

    return build()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineThread]:
    work: Path = tmp_path_factory.mktemp("fuzz")
    with EngineThread(work) as running:
        yield running


@pytest.fixture(scope="module")
def channel(engine: EngineThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(engine.address) as ch:
        yield ch


@pytest.mark.parametrize("method", sorted(method_shapes()))
def test_fuzzed_requests_get_a_clear_answer(
    engine: EngineThread,
    channel: grpc.Channel,
    method: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    md = [("authorization", f"bearer {engine.token}")]
    seen: list[tuple[str, grpc.StatusCode]] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(messages(input_type(method)))
    def check(request: Any) -> None:
        code = call_raw(channel, method, request.SerializeToString(), md, stream_timeout=0.5)
        seen.append((method, code))
        assert code not in BAD_CODES, (method, code, request)

    with caplog.at_level(logging.INFO):
        check()
    assert seen
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info]
    assert not tracebacks, tracebacks


def test_the_engine_still_serves_after_the_fuzzing(engine: EngineThread) -> None:
    import httpx

    with httpx.Client(base_url=engine.api_url, trust_env=False, timeout=5) as client:
        assert client.get("/health").status_code == 200
