"""CEL libraries for Hatchet's concurrency / rate-limit expressions: correctness and speed.

Compares ``common-expression-language`` (module ``cel``, Rust) and ``cel-python`` (module
``celpy``, pure Python) on the expression forms Hatchet's docs use, then times each: compile
once, evaluate N times (default 100,000) with varying inputs, print evaluations per second.
Hewer's wrapper (``hewer.engine.core.cel``, on top of the chosen library) is measured too.

Only the chosen library is a Hewer dependency; install the other to compare::

    .venv/bin/pip install cel-python
    .venv/bin/python bench/cel_bench.py [--n 100000] [--skip-speed]
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any

Evaluate = Callable[[dict[str, Any], dict[str, Any]], object]


class Error:
    """Expected outcome: the expression fails (to compile or to evaluate)."""

    def __repr__(self) -> str:
        return "ERROR"


ERROR = Error()


@dataclass(frozen=True)
class Case:
    expression: str
    input: dict[str, Any]
    metadata: dict[str, Any]
    # What CEL says (cel-spec, as cel-go implements it for Hatchet).
    expected: object
    note: str = ""


CASES = [
    Case("input.user_id", {"user_id": "u1"}, {}, "u1", "member access"),
    Case("input.user_id", {"user_id": 42}, {}, 42, "member access, int value"),
    Case("additional_metadata.tenant", {}, {"tenant": "t1"}, "t1", "metadata access"),
    Case("input.a + ':' + additional_metadata.b", {"a": "x"}, {"b": "y"}, "x:y", "concat"),
    Case("'constant'", {}, {}, "constant", "string literal"),
    Case('"global"', {}, {}, "global", "double-quoted literal"),
    Case("42", {}, {}, 42, "int literal"),
    Case("input.x > 5", {"x": 7}, {}, True, "comparison"),
    Case("input.x <= 5", {"x": 7}, {}, False, "comparison"),
    Case("input.x == 'a'", {"x": "a"}, {}, True, "string equality"),
    Case("input.x != 'a'", {"x": "b"}, {}, True, "string inequality"),
    Case("input.score > 0.5", {"score": 1}, {}, True, "int vs double (JSON 1)"),
    Case("input.n == 1.0", {"n": 1}, {}, True, "int == double"),
    Case("input.n == 1", {"n": 1.0}, {}, True, "double == int (JSON 1.0)"),
    Case("input.n == 'a'", {"n": 1}, {}, False, "mixed-type equality is false"),
    Case("input.x > 5 ? 'big' : 'small'", {"x": 7}, {}, "big", "ternary"),
    Case("input.x > 5 ? 'big' : 'small'", {"x": 3}, {}, "small", "ternary"),
    Case("string(input.n)", {"n": 12}, {}, "12", "string(int)"),
    Case("string(input.f)", {"f": 1.5}, {}, "1.5", "string(double)"),
    Case("string(input.f)", {"f": 12.0}, {}, "12", "string(double), integral"),
    Case("string(input.flag)", {"flag": True}, {}, "true", "string(bool)"),
    Case("input.flag", {"flag": True}, {}, True, "bool value"),
    Case("input.missing", {"a": 1}, {}, ERROR, "missing key"),
    Case("additional_metadata.missing", {}, {}, ERROR, "missing metadata key"),
    Case("has(input.c.v) ? input.c.v : 'default'", {"c": {"v": "x"}}, {}, "x", "has()"),
    Case("has(input.c) ? input.c.v : 'default'", {}, {}, "default", "has(), absent"),
    Case("input.a.b.c", {"a": {"b": {"c": "deep"}}}, {}, "deep", "nested maps"),
    Case("input['a']['b'].c", {"a": {"b": {"c": "d"}}}, {}, "d", "index syntax"),
    Case("input.l[1]", {"l": [1, 2, 3]}, {}, 2, "list index"),
    Case("size(input.l)", {"l": [1, 2, 3]}, {}, 3, "size(list)"),
    Case("'a' in input.tags", {"tags": ["a", "b"]}, {}, True, "in list"),
    Case("input.x in ['a', 'b']", {"x": "b"}, {}, True, "in literal list"),
    Case("input.l[5]", {"l": [1]}, {}, ERROR, "index out of range"),
    Case("input.items[0].name", {"items": [{"name": "n0"}]}, {}, "n0", "list of maps"),
    Case("size(input.s)", {"s": "h\u00e9llo"}, {}, 5, "size(string) counts code points"),
    Case("input.s + 1", {"s": "a"}, {}, ERROR, "string + int"),
    Case("input.n + 1", {"n": 1.5}, {}, ERROR, "double + int: no implicit conversion"),
    Case("input.n * 2", {"n": 3}, {}, 6, "int arithmetic"),
    Case("int(input.s)", {"s": "17"}, {}, 17, "int(string)"),
    Case("input.a.b", {"a": "s"}, {}, ERROR, "select on a string"),
    Case("1 +", {}, {}, ERROR, "syntax error"),
    Case("input.", {}, {}, ERROR, "syntax error"),
]


# --- adapters -------------------------------------------------------------------------------


@dataclass
class Library:
    name: str
    version: str
    compile: Callable[[str], Evaluate]


def _rust_library() -> Library | None:
    try:
        import cel
    except ImportError:
        return None

    def compile_(text: str) -> Evaluate:
        program = cel.compile(text)

        def run(input: dict[str, Any], md: dict[str, Any]) -> object:
            return program.execute({"input": input, "additional_metadata": md})

        return run

    version = metadata.version("common-expression-language")
    return Library("common-expression-language (cel, Rust)", version, compile_)


def _celpy_library(runner: str) -> Library | None:
    try:
        import celpy
        import celpy.celparser
        from celpy import celtypes
        from celpy.adapter import json_to_cel
    except ImportError:
        return None

    # celpy logs every failing evaluation as an "Internal error"; the table reports them.
    logging.getLogger("celpy").setLevel(logging.CRITICAL)

    def to_python(value: object) -> object:
        # celpy answers with its own wrapper types; compare as plain Python.
        if isinstance(value, celtypes.BoolType):
            return bool(value)
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, str):
            return str(value)
        return value

    def compile_(text: str) -> Evaluate:
        runner_class = celpy.CompiledRunner if runner == "compiled" else celpy.InterpretedRunner
        # celpy caches one lark parser per process, built for the first runner class used;
        # the transpiling runner needs its own tree type, so the cache is reset each time.
        celpy.celparser.CELParser.CEL_PARSER = None
        env = celpy.Environment(runner_class=runner_class)
        program = env.program(env.compile(text))

        def run(input: dict[str, Any], md: dict[str, Any]) -> object:
            activation = {"input": json_to_cel(input), "additional_metadata": json_to_cel(md)}
            result = program.evaluate(activation)
            if isinstance(result, Exception):
                raise result
            return to_python(result)

        return run

    version = metadata.version("cel-python")
    return Library(f"cel-python (celpy, {runner} runner)", version, compile_)


def _hewer_library() -> Library:
    from hewer.engine.core import cel as hewer_cel

    def compile_(text: str) -> Evaluate:
        expression = hewer_cel.compile_expression(text)
        return expression.evaluate

    chosen = metadata.version("common-expression-language")
    return Library("hewer.engine.core.cel (wrapper)", f"on cel {chosen}", compile_)


def libraries() -> Iterator[Library]:
    rust = _rust_library()
    if rust is None:
        print("common-expression-language is not installed: skipped")
    else:
        yield rust
    for runner in ("interpreted", "compiled"):
        lib = _celpy_library(runner)
        if lib is None:
            print("cel-python is not installed (pip install cel-python): skipped")
            break
        yield lib
    yield _hewer_library()


# --- correctness ----------------------------------------------------------------------------


def _outcome(lib: Library, case: Case) -> object:
    try:
        return lib.compile(case.expression)(case.input, case.metadata)
    except Exception as exc:
        return _Failed(exc)


class _Failed(Error):
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def __repr__(self) -> str:
        first = (str(self.exc).splitlines() or [""])[0]
        return f"ERROR({type(self.exc).__name__}: {first[:70]})"


def _matches(got: object, expected: object) -> bool:
    if isinstance(expected, Error):
        return isinstance(got, Error)
    if isinstance(got, Error):
        return False
    # True == 1 in Python; a CEL bool must come back as a bool and an int as an int.
    return type(got) is type(expected) and got == expected


def correctness(libs: list[Library]) -> None:
    print("\n== Correctness (expected: CEL spec as cel-go, which Hatchet uses, evaluates it)")
    for lib in libs:
        failures = []
        for case in CASES:
            got = _outcome(lib, case)
            if not _matches(got, case.expected):
                failures.append((case, got))
        print(f"\n{lib.name} {lib.version}: {len(CASES) - len(failures)}/{len(CASES)} as expected")
        for case, got in failures:
            shown = f"{case.expression!r:45} {case.note:38}"
            print(f"  {shown} expected {case.expected!r}, got {got!r}")


# --- speed ----------------------------------------------------------------------------------

SPEED_EXPRESSIONS = [
    "input.user_id + ':' + additional_metadata.tenant",
    "input.x > 5 ? 'big' : 'small'",
    "string(input.n)",
]


def _inputs(n: int, padded: bool) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    pad = {f"field_{j}": {"id": j, "name": f"name-{j}", "tags": ["a", "b"]} for j in range(16)}
    out = []
    for i in range(n):
        input: dict[str, Any] = {"user_id": f"user-{i % 1000}", "x": i % 10, "n": i}
        if padded:
            input.update(pad)
        out.append((input, {"tenant": f"t{i % 7}", "source": "bench"}))
    return out


def speed(libs: list[Library], n: int) -> None:
    print(f"\n== Speed: compile once, evaluate {n:,} times with varying inputs (evals/s)")
    shapes = {"3-field input": _inputs(n, False), "~1 KB input (19 fields)": _inputs(n, True)}
    for shape, inputs in shapes.items():
        print(f"\n-- {shape}")
        for expression in SPEED_EXPRESSIONS:
            print(f"  {expression}")
            for lib in libs:
                run = lib.compile(expression)
                start = time.perf_counter()
                for input, md in inputs:
                    run(input, md)
                elapsed = time.perf_counter() - start
                print(f"    {lib.name:45} {n / elapsed:>12,.0f}/s  ({elapsed * 1e6 / n:.1f} us)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="evaluations per measurement")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    print(f"Python {platform.python_version()} on {platform.machine()}")
    libs = list(libraries())
    correctness(libs)
    if not args.skip_speed:
        speed(libs, args.n)


if __name__ == "__main__":
    main()
