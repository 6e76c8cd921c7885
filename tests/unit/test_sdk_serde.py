"""Input/output models from type hints, and JSON validation at both ends of a task."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest
from pydantic import BaseModel

from hewer.errors import InvalidInput
from hewer.sdk import Context
from hewer.sdk._serde import (
    IllegalOutput,
    input_json,
    input_model_of,
    output_json,
    output_model_of,
    parse_output,
    validate_input,
)


class In(BaseModel):
    x: int


class Out(BaseModel):
    y: int
    at: datetime | None = None


def typed(input: In, ctx: Context) -> Out:
    return Out(y=input.x)


async def typed_async(input: In, ctx: Context) -> Out:
    return Out(y=input.x)


def untyped(input, ctx):  # type: ignore[no-untyped-def]
    return {}


def dict_typed(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return {}


def optional_out(input: In, ctx: Context) -> Out | None:
    return None


def test_models_come_from_type_hints() -> None:
    assert input_model_of(typed) is In
    assert output_model_of(typed) is Out
    assert input_model_of(typed_async) is In
    assert output_model_of(typed_async) is Out


def test_no_model_without_a_pydantic_hint() -> None:
    assert input_model_of(untyped) is None
    assert output_model_of(untyped) is None
    assert input_model_of(dict_typed) is None
    assert output_model_of(dict_typed) is None


def test_optional_model_counts_as_the_model() -> None:
    assert output_model_of(optional_out) is Out


def test_unresolvable_string_hints_do_not_break_extraction() -> None:
    class Local(BaseModel):
        z: int

    def fn(input: Local, ctx: Context) -> Local:
        return input

    # Under `from __future__ import annotations` the hints are strings naming a local class.
    assert input_model_of(fn) is None
    assert output_model_of(fn) is None


def test_validate_input_builds_the_model_from_a_dict() -> None:
    value = validate_input({"x": 3}, In)
    assert isinstance(value, In)
    assert value.x == 3


def test_validate_input_keeps_a_model_and_rejects_bad_data() -> None:
    model = In(x=1)
    assert validate_input(model, In) is model
    with pytest.raises(pydantic.ValidationError):
        validate_input({"x": "not a number"}, In)


def test_validate_input_without_model_passes_json_through() -> None:
    assert validate_input({"a": 1}, None) == {"a": 1}
    assert validate_input(None, None) == {}
    assert validate_input(In(x=2), None) == {"x": 2}


def test_input_json_validates_dicts_against_the_model() -> None:
    assert input_json({"x": "4"}, In) == '{"x":4}'
    assert input_json(In(x=5), In) == '{"x":5}'
    assert input_json({"free": [1, 2]}, None) == '{"free":[1,2]}'
    assert input_json(None, None) == "{}"
    with pytest.raises(pydantic.ValidationError):
        input_json({"y": 1}, In)


def test_input_json_rejects_non_objects() -> None:
    with pytest.raises(InvalidInput):
        input_json([1, 2], None)


def test_output_json_is_compact_json_of_models_and_dicts() -> None:
    at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert output_json(Out(y=1, at=at)) == '{"y":1,"at":"2025-01-02T03:04:05Z"}'
    assert output_json({"a": [1, "b"], "when": at}) == '{"a":[1,"b"],"when":"2025-01-02T03:04:05Z"}'
    assert output_json(None) == "{}"


def test_output_json_accepts_dataclasses() -> None:
    @dataclasses.dataclass
    class D:
        n: int

    assert output_json(D(n=1)) == '{"n":1}'


@pytest.mark.parametrize("value", [1, "text", [1, 2], 1.5, True])
def test_output_json_rejects_non_objects(value: object) -> None:
    with pytest.raises(IllegalOutput, match="must return a dict"):
        output_json(value)


def test_output_json_rejects_nul_characters() -> None:
    with pytest.raises(IllegalOutput, match="NUL"):
        output_json({"s": "a\x00b"})


def test_parse_output_uses_the_model_when_there_is_one() -> None:
    parsed = parse_output({"y": 7}, Out)
    assert isinstance(parsed, Out)
    assert parsed.y == 7
    assert parse_output({"y": 7}, None) == {"y": 7}
    assert parse_output(None, Out) is None
