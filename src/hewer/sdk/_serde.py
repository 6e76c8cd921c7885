"""JSON in and out of tasks: input validation, output encoding, type-hint introspection."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from hewer.errors import ConfigurationError, InvalidInput

logger = logging.getLogger(__name__)


class IllegalOutput(InvalidInput):
    """A task returned something that is not a JSON object (dict, pydantic model, None)."""


# One encoder for every call: json.dumps with options builds a new one each time.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=to_jsonable_python)


def dumps(value: Any) -> str:
    """Compact JSON, with pydantic's encoders for datetimes, UUIDs, models and the like."""
    return _ENCODER.encode(value)


def _model_in(hint: Any) -> type[BaseModel] | None:
    """The pydantic model a hint names: ``M``, ``M | None`` or ``Optional[M]``."""
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return hint
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        models = [m for m in map(_model_in, typing.get_args(hint)) if m is not None]
        if len(models) == 1:
            return models[0]
    return None


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:
        # String annotations naming things that are not module globals (a model defined in a
        # function body, say) cannot be resolved; keep the hints that are real objects.
        logger.debug("cannot resolve all type hints of %r", fn, exc_info=True)
        raw = getattr(fn, "__annotations__", {})
        return {k: v for k, v in raw.items() if not isinstance(v, str)}


def check_task_signature(fn: Callable[..., Any]) -> None:
    """Fail at decoration time unless ``fn`` can be called as ``fn(input, ctx)``."""
    if not callable(fn):
        raise ConfigurationError(f"a task must be a function, got {fn!r}")
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        raise ConfigurationError(
            f"task function {getattr(fn, '__qualname__', fn)!r} must accept (input, ctx)"
        ) from None
    except ValueError:
        pass  # builtins without a signature: trust the caller


def input_model_of(fn: Callable[..., Any]) -> type[BaseModel] | None:
    """The pydantic model annotated on the first parameter of ``fn``, if any."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except ValueError:
        return None
    if not params:
        return None
    return _model_in(_type_hints(fn).get(params[0].name))


def output_model_of(fn: Callable[..., Any]) -> type[BaseModel] | None:
    """The pydantic model annotated as the return type of ``fn``, if any."""
    return _model_in(_type_hints(fn).get("return"))


def validate_input(raw: Any, model: type[BaseModel] | None) -> Any:
    """Task input as the function wants it: a model instance, or a dict without a model."""
    if raw is None:
        raw = {}
    if model is None:
        if isinstance(raw, BaseModel):
            return raw.model_dump(mode="json")
        return raw
    if isinstance(raw, model):
        return raw
    if isinstance(raw, BaseModel):
        raw = raw.model_dump(mode="json")
    return model.model_validate(raw)


def input_json(value: Any, model: type[BaseModel] | None) -> str:
    """The ``input`` of a trigger request: validated client-side, then compact JSON."""
    if value is None:
        value = {}
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    elif isinstance(value, Mapping):
        data = (
            model.model_validate(dict(value)).model_dump(mode="json")
            if model is not None
            else dict(value)
        )
    else:
        raise InvalidInput(
            f"task input must be a pydantic model or a dict, got {type(value).__name__}"
        )
    return dumps(data)


def output_json(value: Any) -> str:
    """The COMPLETED payload for a task's return value (a JSON object)."""
    if value is None:
        return "{}"
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = dataclasses.asdict(value)
    else:
        data = value
    if not isinstance(data, Mapping):
        raise IllegalOutput(
            f"a task must return a dict, a pydantic model or None, got {type(value).__name__}"
        )
    try:
        text = dumps(data)
    except (TypeError, ValueError) as exc:
        raise IllegalOutput(f"task output is not JSON-serialisable: {exc}") from exc
    if "\\u0000" in text:
        # Engines store outputs as JSON documents that cannot hold NUL characters.
        raise IllegalOutput("task output contains a NUL character (\\u0000)")
    return text


def parse_output(raw: Any, model: type[BaseModel] | None) -> Any:
    """A task's output as callers see it: the return-annotation model, or plain JSON."""
    if model is None or raw is None:
        return raw
    return model.model_validate(raw)
