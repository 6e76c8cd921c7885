"""CEL expressions for concurrency keys and rate limits, as Hatchet evaluates them.

Hatchet lets a workflow or task name its concurrency key, ``max_runs_expression``, rate-limit
``key_expr``, ``units_expr`` and ``limit_values_expr`` as CEL over two maps, ``input`` and
``additional_metadata`` (plus ``workflow_run_id`` and ``parents`` on some paths). This module
wraps the ``common-expression-language`` package (a Rust CEL interpreter): it was measured
against the pure-Python ``cel-python`` in ``bench/cel_bench.py`` and chosen for speed and for
following the CEL spec on mixed int/double comparisons, which JSON inputs hit constantly.

The engine compiles every expression at registration (:func:`compile_expression` raises
:class:`CelError`, an ``InvalidInput``, so the caller answers with a clear error) and evaluates
the cached :class:`Expression` once per queued task.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from hewer.errors import InvalidInput

__all__ = [
    "MAX_EXPRESSION_LENGTH",
    "MAX_KEY_BYTES",
    "CelError",
    "Expression",
    "cache_clear",
    "cache_info",
    "compile_expression",
]

# The Rust parser and interpreter recurse on the native stack, and overflowing it kills the
# whole process (no Python exception). Measured: 4,096-character chains are fine on the main
# thread but crash a 1 MiB thread stack; 2,048 passes both. Real keys are a few dozen chars.
MAX_EXPRESSION_LENGTH: Final = 2048
# Upstream's limits on what an expression may produce (internal/cel): keys up to 10 KiB,
# integers within +-2**30, so a limit or unit count cannot be absurd.
MAX_KEY_BYTES: Final = 10 * 1024
INT_RANGE: Final = 1 << 30
CACHE_SIZE: Final = 4096

Result = str | int | bool | float

# Names the expressions may bind; upstream declares exactly these (internal/cel/cel.go).
# ``output`` is bound for a parent condition only (the parent's output); ``payload``,
# ``event_id`` and ``event_key`` for an event filter only.
BINDINGS: Final = frozenset(
    {
        "input",
        "additional_metadata",
        "workflow_run_id",
        "parents",
        "output",
        "payload",
        "event_id",
        "event_key",
    }
)
# Type names are identifiers in CEL (`type(x) == int`); the library reports them as variables.
TYPE_NAMES: Final = frozenset(
    {"int", "uint", "double", "string", "bytes", "bool", "list", "map", "null_type", "type"}
)
# Upstream compiles with cel-go's standard environment plus `checksum`; a function outside this
# set is rejected there at registration, so it is rejected here too (not at the first run).
FUNCTIONS: Final = frozenset(
    {
        "size",
        "int",
        "uint",
        "double",
        "string",
        "bytes",
        "bool",
        "dyn",
        "type",
        "duration",
        "timestamp",
        "matches",
        "contains",
        "startsWith",
        "endsWith",
        "getDate",
        "getDayOfMonth",
        "getDayOfWeek",
        "getDayOfYear",
        "getFullYear",
        "getHours",
        "getMilliseconds",
        "getMinutes",
        "getMonth",
        "getSeconds",
        "checksum",
    }
)
MACROS: Final = frozenset({"all", "exists", "exists_one", "map", "filter"})


class CelError(InvalidInput):
    """A CEL expression failed to compile or to evaluate; names the expression and the reason."""

    def __init__(self, expression: str, reason: str) -> None:
        self.expression = expression
        self.reason = reason
        shown = expression if len(expression) <= 200 else expression[:200] + "..."
        super().__init__(f"CEL expression {shown!r}: {reason}")


def _checksum(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"takes a string, got {_kind(value)}")
    return hashlib.sha256(value.encode()).hexdigest()


def _string_fallback(value: object) -> str:
    # The library calls a user `string` only for argument types its own conversion lacks;
    # bool is one of them, and CEL renders it lowercase.
    if isinstance(value, bool):
        return "true" if value else "false"
    raise TypeError(f"no conversion from {_kind(value)}")


_FUNCTIONS: Final[dict[str, Callable[..., Any]]] = {
    "checksum": _checksum,
    "string": _string_fallback,
}


class _QuietOwnFunctions(logging.Filter):
    """Drops the library's warning when one of our functions raises: it becomes a CelError."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(f"Python function '{n}' failed") for n in _FUNCTIONS)


logging.getLogger("cel").addFilter(_QuietOwnFunctions())


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bytes):
        return "bytes"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "map"
    return type(value).__name__


# --- static analysis -------------------------------------------------------------------------
# The library converts every bound value into its own representation on each evaluation, at
# roughly 1-2 us per JSON node, so a 1 KB input costs ten times the evaluation itself. Most
# expressions only read a few top-level fields, so we bind just those. The scan below works on
# the already-compiled (hence valid) text and gives up, binding the whole map, whenever a use
# of the variable is anything but `var.field` or `var['literal']`.

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n\f]+|//[^\n]*)
  | (?P<raw>[bB]?[rR]|[rR][bB])
    (?: '''(?P<r1>.*?)''' | \"\"\"(?P<r2>.*?)\"\"\" | '(?P<r3>[^'\n\r]*)' | "(?P<r4>[^"\n\r]*)" )
  | (?P<bytes>[bB])
    (?: '''(?:\\.|[^\\])*?''' | \"\"\"(?:\\.|[^\\])*?\"\"\"
      | '(?:\\.|[^\\'\n\r])*' | "(?:\\.|[^\\"\n\r])*" )
  | '''(?P<s1>(?:\\.|[^\\])*?)''' | \"\"\"(?P<s2>(?:\\.|[^\\])*?)\"\"\"
  | '(?P<s3>(?:\\.|[^\\'\n\r])*)' | "(?P<s4>(?:\\.|[^\\"\n\r])*)"
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>0[xX][0-9a-fA-F]+[uU]?|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?[uU]?)
  | (?P<op>==|!=|<=|>=|&&|\|\||[-+*/%!<>?:.,()\[\]{}])
    """,
    re.VERBOSE | re.DOTALL,
)


class _Tok:
    __slots__ = ("kind", "text", "value")

    def __init__(self, kind: str, text: str, value: str | None = None) -> None:
        self.kind = kind
        self.text = text
        self.value = value  # for a string literal: the key it names when unescaped, else None


def _tokenize(text: str) -> list[_Tok] | None:
    """CEL tokens of ``text`` without whitespace and comments; None at an unknown character."""
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            return None
        pos = m.end()
        if m.group("space") is not None:
            continue
        if m.group("ident") is not None:
            tokens.append(_Tok("ident", m.group(0)))
        elif m.group("number") is not None or m.group("op") is not None:
            tokens.append(_Tok("other", m.group(0)))
        elif m.group("bytes") is not None or "b" in (m.group("raw") or "").lower():
            tokens.append(_Tok("bytes", m.group(0)))
        else:
            raw = m.group("raw") is not None
            names = ("r1", "r2", "r3", "r4") if raw else ("s1", "s2", "s3", "s4")
            body = next(g for g in (m.group(n) for n in names) if g is not None)
            plain = raw or "\\" not in body
            tokens.append(_Tok("string", m.group(0), body if plain else None))
    return tokens


def _bound_names(tokens: list[_Tok]) -> set[str]:
    """Names that comprehension macros bind: `x` in `list.map(x, ...)`."""
    names: set[str] = set()
    for i in range(len(tokens) - 4):
        a, b, c, d, e = tokens[i : i + 5]
        if (
            a.text == "."
            and b.kind == "ident"
            and b.text in MACROS
            and c.text == "("
            and d.kind == "ident"
            and e.text == ","
        ):
            names.add(d.text)
    return names


def _fields_used(tokens: list[_Tok], var: str) -> frozenset[str] | None:
    """Top-level keys of `var` the expression reads, or None when it may read the whole map."""
    keys: set[str] = set()
    for i, tok in enumerate(tokens):
        if tok.kind != "ident" or tok.text != var or (i > 0 and tokens[i - 1].text == "."):
            continue
        nxt = tokens[i + 1 : i + 4]
        if (
            len(nxt) >= 2
            and nxt[0].text == "."
            and nxt[1].kind == "ident"
            and (len(nxt) < 3 or nxt[2].text != "(")
        ):
            keys.add(nxt[1].text)
        elif (
            len(nxt) == 3
            and nxt[0].text == "["
            and nxt[1].kind == "string"
            and nxt[1].value is not None
            and nxt[2].text == "]"
        ):
            keys.add(nxt[1].value)
        else:
            return None
    return frozenset(keys)


def _parse_reason(exc: BaseException) -> str:
    message = str(exc)
    # The library repeats the whole expression before the parser's own message.
    if message.startswith("Failed to parse expression"):
        _, sep, rest = message.partition("': ")
        if sep:
            message = rest
    return message.strip() or type(exc).__name__


_UNDEFINED = re.compile(r"Undefined variable or function: '(\w+)'")
_FUNCTION_FAILED = re.compile(
    r"Function '(\w+)' error: Python function call failed: \w+: (.*?)\. Check function", re.DOTALL
)


def _eval_reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"no such key: {exc.args[0] if exc.args else ''!r}"
    message = str(exc).strip()
    undefined = _UNDEFINED.match(message)
    if undefined and undefined.group(1) in BINDINGS:
        return f"{undefined.group(1)} is not available to this expression"
    failed = _FUNCTION_FAILED.match(message)
    if failed:
        return f"{failed.group(1)}(): {failed.group(2)}"
    for advice in (" Check that the variable", " Check function arguments", " CEL does not"):
        message = message.split(advice, 1)[0]
    return message or type(exc).__name__


def _is_panic(exc: BaseException) -> bool:
    # pyo3 raises Rust panics as PanicException, a BaseException that is not importable by name.
    return type(exc).__name__ == "PanicException"


class Expression:
    """A compiled CEL expression over ``input`` and ``additional_metadata``; immutable."""

    __slots__ = ("_input_fields", "_metadata_fields", "_program", "text")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise CelError(repr(text), f"expression must be a string, got {type(text).__name__}")
        if not text.strip():
            raise CelError(text, "expression is empty")
        if len(text) > MAX_EXPRESSION_LENGTH:
            raise CelError(
                text, f"expression is {len(text)} characters long (max {MAX_EXPRESSION_LENGTH})"
            )
        # Imported here: the package's CLI module, which its __init__ loads, pulls in typer,
        # rich and prompt_toolkit (~0.2 s), a cost only processes that compile should pay.
        import cel

        try:
            program = cel.compile(text)
            refs = program.references()
        except Exception as exc:
            raise CelError(text, _parse_reason(exc)) from None
        except BaseException as exc:
            if not _is_panic(exc):
                raise
            raise CelError(text, _parse_reason(exc)) from None
        tokens = _tokenize(text)
        bound = _bound_names(tokens) if tokens is not None else set()
        for name in refs["variables"]:
            if name not in BINDINGS and name not in TYPE_NAMES and name not in bound:
                # Without tokens a comprehension variable cannot be told from a typo.
                if tokens is None:
                    continue
                raise CelError(
                    text,
                    f"undeclared reference to {name!r} "
                    "(expressions can use input, additional_metadata, workflow_run_id, and "
                    "output in a parent condition)",
                )
        for fn in refs["functions"]:
            if fn[:1] not in ("_", "@", "!", "-") and fn not in FUNCTIONS:
                raise CelError(text, f"undeclared function {fn!r}")
        shadowed = tokens is None or bool(bound & BINDINGS)
        self.text = text
        self._program = program
        self._input_fields = None if shadowed else _fields_used(tokens or [], "input")
        self._metadata_fields = (
            None if shadowed else _fields_used(tokens or [], "additional_metadata")
        )

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expression) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def evaluate(
        self,
        input: Mapping[str, Any],
        additional_metadata: Mapping[str, Any] | None = None,
        *,
        workflow_run_id: str | None = None,
        parents: Mapping[str, Any] | None = None,
    ) -> Result:
        """Evaluate with these bindings; a string, int, bool or double, else ``CelError``."""
        md = additional_metadata if additional_metadata is not None else {}
        extra: dict[str, Any] = {}
        if workflow_run_id is not None:
            extra["workflow_run_id"] = workflow_run_id
        if parents is not None:
            extra["parents"] = _as_dict(parents)
        if self._input_fields is None and self._metadata_fields is None:
            result = self._execute(_as_dict(input), _as_dict(md), extra, retryable=False)
        else:
            try:
                result = self._execute(
                    _select(input, self._input_fields),
                    _select(md, self._metadata_fields),
                    extra,
                    retryable=True,
                )
            except KeyError:
                # Pruning must never change an answer: when a key seems missing, the full maps
                # decide (and fail the same way if the key really is absent).
                result = self._execute(_as_dict(input), _as_dict(md), extra, retryable=False)
        if isinstance(result, str | int | float):  # bool is an int
            return result
        raise CelError(
            self.text, f"result is a {_kind(result)}; expected a string, int, bool or double"
        )

    def _execute(
        self,
        input: dict[str, Any],
        metadata: dict[str, Any],
        extra: dict[str, Any],
        *,
        retryable: bool,
    ) -> Any:
        """Run the program; any failure becomes a CelError, except a KeyError when retryable."""
        import cel  # already loaded by __init__; a dict lookup

        variables = {"input": input, "additional_metadata": metadata, **extra}
        try:
            return self._program.execute(cel.Context(variables=variables, functions=_FUNCTIONS))
        except KeyError as exc:
            if retryable:
                raise
            raise CelError(self.text, _eval_reason(exc)) from None
        except Exception as exc:
            raise CelError(self.text, _eval_reason(exc)) from None
        except BaseException as exc:
            if not _is_panic(exc):
                raise
            raise CelError(self.text, _eval_reason(exc)) from None

    def truth(
        self,
        input: Mapping[str, Any],
        additional_metadata: Mapping[str, Any] | None = None,
        *,
        output: Mapping[str, Any] | None = None,
        **bindings: Any,
    ) -> bool:
        """Evaluate as a condition (a parent's ``output``, and any other ``bindings``, bound
        when given); the result must be a bool."""
        extra: dict[str, Any] = {} if output is None else {"output": _as_dict(output)}
        extra.update(bindings)
        md = additional_metadata if additional_metadata is not None else {}
        result = self._execute(_as_dict(input), _as_dict(md), extra, retryable=False)
        if not isinstance(result, bool):
            raise CelError(self.text, f"result is a {_kind(result)}; expected a bool")
        return result

    def key(
        self,
        input: Mapping[str, Any],
        additional_metadata: Mapping[str, Any] | None = None,
        *,
        workflow_run_id: str | None = None,
        parents: Mapping[str, Any] | None = None,
    ) -> str:
        """Evaluate and render as a concurrency / rate-limit key.

        Strings are used as they are, ints in decimal, bools as ``true``/``false`` and doubles
        as CEL's ``string()`` renders them (``12.0`` -> ``12``). Upstream accepts only strings
        here; rendering scalars instead spares users a ``string(...)`` around numeric fields.
        """
        value = self.evaluate(
            input, additional_metadata, workflow_run_id=workflow_run_id, parents=parents
        )
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, int):
            rendered = str(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise CelError(self.text, f"key is not a finite number: {value!r}")
            rendered = str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
        else:
            rendered = value
        if len(rendered.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
            raise CelError(self.text, f"key is longer than {MAX_KEY_BYTES} bytes")
        return rendered

    def integer(
        self,
        input: Mapping[str, Any],
        additional_metadata: Mapping[str, Any] | None = None,
        *,
        workflow_run_id: str | None = None,
        parents: Mapping[str, Any] | None = None,
    ) -> int:
        """Evaluate to an int (``max_runs_expression``, ``units_expr``, ``limit_values_expr``).

        A double with an integral value counts (JSON encoders write ``2.0``); anything else,
        a fractional double included, is a ``CelError`` rather than a silently truncated limit.
        """
        value = self.evaluate(
            input, additional_metadata, workflow_run_id=workflow_run_id, parents=parents
        )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CelError(self.text, f"result is a {_kind(value)}; expected an int")
        if isinstance(value, float):
            if not (math.isfinite(value) and value.is_integer()):
                raise CelError(self.text, f"result {value!r} is not a whole number")
            value = int(value)
        if not -INT_RANGE <= value <= INT_RANGE:
            raise CelError(self.text, f"result {value} is out of range (+-{INT_RANGE})")
        return value


def _as_dict(values: Mapping[str, Any]) -> dict[str, Any]:
    # The library converts only real dicts.
    return values if isinstance(values, dict) else dict(values)


def _select(values: Mapping[str, Any], fields: frozenset[str] | None) -> dict[str, Any]:
    if fields is None:
        return _as_dict(values)
    return {k: values[k] for k in fields if k in values}


@functools.lru_cache(maxsize=CACHE_SIZE)
def _compile_cached(text: str) -> Expression:
    return Expression(text)


def compile_expression(text: str) -> Expression:
    """Compile ``text`` once (later calls with the same text share it); ``CelError`` if invalid.

    Failures are not cached, so an invalid expression costs a parse every time it is offered;
    registration rejects it, so that happens once per attempt.
    """
    if not isinstance(text, str):
        raise CelError(repr(text), f"expression must be a string, got {type(text).__name__}")
    return _compile_cached(text)


def cache_info() -> functools._CacheInfo:
    """Hits and misses of the compile cache (for metrics and tests)."""
    return _compile_cached.cache_info()


def cache_clear() -> None:
    _compile_cached.cache_clear()
