"""Every gRPC method the engine serves, found from the proto descriptors (a method added
later is covered without a new test), called as a hostile client would: bytes that are not
a message, and messages whose every enum field holds a value no enum defines. Each answer is
a clear status (INVALID_ARGUMENT, NOT_FOUND, ...), never INTERNAL or UNKNOWN, and the engine
logs no traceback for any of them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from hewer.engine.grpc.relay import method_shapes
from hewer.testing import EngineThread
from tests.grpc_raw import call_raw, input_type

GARBAGE = b"\xff\xfe\xfd\xfc not a message"
BAD_UTF8 = b"\x0a\x03\xff\xfe\xfd"  # field 1, length 3, bytes that are not UTF-8
UNKNOWN_ENUM = 97
BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
INVALID = (grpc.StatusCode.INVALID_ARGUMENT,)
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def _with_unknown_enums(desc: Descriptor, depth: int = 0) -> Any:
    """A message of ``desc`` with every enum field (also in sub-messages, two levels deep)
    set to a number its enum does not define, and required-looking strings filled in."""
    msg = message_factory.GetMessageClass(desc)()
    for field in desc.fields:
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_ENUM:
            if repeated:
                getattr(msg, field.name).append(UNKNOWN_ENUM)
            else:
                setattr(msg, field.name, UNKNOWN_ENUM)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and depth < 2:
            if field.message_type.GetOptions().map_entry:
                continue
            inner = _with_unknown_enums(field.message_type, depth + 1)
            if repeated:
                getattr(msg, field.name).append(inner)
            else:
                getattr(msg, field.name).CopyFrom(inner)
        elif field.type == FieldDescriptor.TYPE_STRING and not repeated:
            setattr(msg, field.name, "x")
    return msg


@pytest.fixture
def channel(engine: EngineThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(engine.address) as ch:
        yield ch


def test_undecodable_requests_are_invalid_argument_on_every_method(
    engine: EngineThread, channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    md = [("authorization", f"bearer {engine.token}")]
    methods = sorted(method_shapes())
    assert len(methods) > 20
    with caplog.at_level(logging.INFO):
        for method in methods:
            first = input_type(method).fields_by_number.get(1)
            # Field 1 as a string holding invalid UTF-8 is undecodable; for other messages
            # the same bytes are some other (or an unknown) field, which must parse.
            bad_utf8 = first is not None and first.type == FieldDescriptor.TYPE_STRING
            # Without a token, a stream may be refused before its first message is read.
            for metadata, refused in ((md, INVALID), ([], (*INVALID, UNAUTHENTICATED))):
                code = call_raw(channel, method, GARBAGE, metadata)
                assert code in refused, (method, metadata, code)
                code = call_raw(channel, method, BAD_UTF8, metadata)
                if bad_utf8:
                    assert code in refused, (method, metadata, code)
                else:
                    assert code not in BAD_CODES, (method, code)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_unknown_enum_values_get_a_clear_status_on_every_method(
    engine: EngineThread, channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    md = [("authorization", f"bearer {engine.token}")]
    with caplog.at_level(logging.INFO):
        for method in sorted(method_shapes()):
            request = _with_unknown_enums(input_type(method))
            code = call_raw(channel, method, request.SerializeToString(), md)
            assert code not in BAD_CODES, (method, code)
    assert not [r for r in caplog.records if r.exc_info], [
        r.getMessage() for r in caplog.records if r.exc_info
    ]
