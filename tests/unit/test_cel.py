"""CEL expressions as Hatchet's concurrency keys and rate limits use them."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hewer.engine.core import cel
from hewer.engine.core.cel import CelError, Expression, compile_expression
from hewer.errors import InvalidInput


def ev(text: str, input: dict[str, Any] | None = None, md: dict[str, Any] | None = None) -> object:
    return compile_expression(text).evaluate(input or {}, md or {})


# --- the forms Hatchet's docs use --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "input", "md", "expected"),
    [
        ("input.user_id", {"user_id": "u1"}, {}, "u1"),
        ("input.user_id", {"user_id": 42}, {}, 42),
        ("additional_metadata.tenant", {}, {"tenant": "t1"}, "t1"),
        (
            "input.user_id + ':' + additional_metadata.foobar",
            {"user_id": "u"},
            {"foobar": "f"},
            "u:f",
        ),
        ("'constant'", {}, {}, "constant"),
        ('"global"', {}, {}, "global"),
        ("'*'", {}, {}, "*"),
        ("42", {}, {}, 42),
        ("-1", {}, {}, -1),
        ("1.5", {}, {}, 1.5),
        ("true", {}, {}, True),
        ("input.x > 5", {"x": 7}, {}, True),
        ("input.x >= 7 && input.x < 8", {"x": 7}, {}, True),
        ("input.x == 'a' || input.x != 'b'", {"x": "c"}, {}, True),
        ("!input.flag", {"flag": False}, {}, True),
        ("input.x > 5 ? 'big' : 'small'", {"x": 7}, {}, "big"),
        ("input.x > 5 ? 'big' : 'small'", {"x": 3}, {}, "small"),
        ("string(input.n)", {"n": 12}, {}, "12"),
        ("string(input.n)", {"n": -3}, {}, "-3"),
        ("string(input.f)", {"f": 1.5}, {}, "1.5"),
        ("string(input.f)", {"f": 12.0}, {}, "12"),
        ("string(input.flag)", {"flag": True}, {}, "true"),
        ("string(input.flag)", {"flag": False}, {}, "false"),
        ("'user-' + string(input.n)", {"n": 7}, {}, "user-7"),
        ("input.a.b.c", {"a": {"b": {"c": "deep"}}}, {}, "deep"),
        ("input['a']['b'].c", {"a": {"b": {"c": "d"}}}, {}, "d"),
        ("input['user-id']", {"user-id": "dash"}, {}, "dash"),
        ("additional_metadata['x.y']", {}, {"x.y": "dot"}, "dot"),
        ("input.l[1]", {"l": [1, 2, 3]}, {}, 2),
        ("input.items[0].name", {"items": [{"name": "n0"}]}, {}, "n0"),
        ("size(input.l)", {"l": [1, 2, 3]}, {}, 3),
        ("'a' in input.tags", {"tags": ["a", "b"]}, {}, True),
        ("input.x in ['a', 'b']", {"x": "c"}, {}, False),
        ("has(input.c.v) ? input.c.v : 'default'", {"c": {"v": "x"}}, {}, "x"),
        ("has(input.c) ? input.c.v : 'default'", {}, {}, "default"),
        ("input.score > 0.5", {"score": 1}, {}, True),
        ("input.n == 1", {"n": 1.0}, {}, True),
        ("input.n == 'a'", {"n": 1}, {}, False),
        ("int(input.s) * 2", {"s": "17"}, {}, 34),
        ("input.l.exists(x, x == 'b')", {"l": ["a", "b"]}, {}, True),
        ("size(input)", {"a": 1, "b": 2}, {}, 2),
        ("input.s.startsWith('ab')", {"s": "abc"}, {}, True),
        ("input.u", {"u": "h\u00e9llo \u2603"}, {}, "h\u00e9llo \u2603"),
    ],
)
def test_forms(text: str, input: dict[str, Any], md: dict[str, Any], expected: object) -> None:
    got = ev(text, input, md)
    assert got == expected
    assert type(got) is type(expected)


def test_metadata_can_be_omitted() -> None:
    assert compile_expression("input.a").evaluate({"a": "x"}) == "x"
    with pytest.raises(CelError, match="no such key"):
        compile_expression("additional_metadata.a").evaluate({"a": "x"})


def test_non_dict_mappings_are_accepted() -> None:
    from types import MappingProxyType

    expr = compile_expression("size(input) + size(additional_metadata)")
    assert expr.evaluate(MappingProxyType({"a": 1}), MappingProxyType({"b": 2, "c": 3})) == 3


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "input", "reason"),
    [
        ("input.missing", {"a": 1}, "no such key: 'missing'"),
        ("input.a.b.c", {"a": {"b": {}}}, "no such key: 'c'"),
        ("input.l[5]", {"l": [1]}, "index out of bounds"),
        ("input.s + 1", {"s": "a"}, r"string \+ int"),
        ("input.n + 1", {"n": 1.5}, ""),
        ("input.a.b", {"a": "s"}, ""),
        ("input.n / 0", {"n": 1}, "division by zero"),
        ("int(input.s)", {"s": "x"}, ""),
        ("string(input.l)", {"l": [1]}, "no conversion from list"),
        ("checksum(input.n)", {"n": 1}, "checksum\\(\\): takes a string, got int"),
        ("input.l", {"l": [1]}, "result is a list"),
        ("input.m", {"m": {}}, "result is a map"),
        ("input.none", {"none": None}, "result is a null"),
        ("workflow_run_id", {}, "workflow_run_id is not available"),
        ("input.x", {"x": object()}, "Conver"),
    ],
)
def test_evaluation_errors(text: str, input: dict[str, Any], reason: str) -> None:
    expr = compile_expression(text)
    with pytest.raises(CelError, match=reason or None) as info:
        expr.evaluate(input, {})
    err = info.value
    assert isinstance(err, InvalidInput)
    assert err.expression == text
    assert str(err).startswith(f"CEL expression {text!r}: ")


def test_evaluation_error_does_not_log(caplog: pytest.LogCaptureFixture) -> None:
    # The library logs a warning whenever a Python function raises; we turn it into CelError.
    with caplog.at_level(logging.DEBUG), pytest.raises(CelError):
        compile_expression("checksum(input.n)").evaluate({"n": 1}, {})
    assert not [r for r in caplog.records if r.name.startswith("cel")]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1 +", "Syntax error"),
        ("input.", "Syntax error"),
        ("'unterminated", "Syntax error"),
        ("input.a ? 'x'", "Syntax error"),
        ("input..a", "Syntax error"),
        ("(" * 120 + "1" + ")" * 120, ""),
        ("input.?x", "unsupported syntax"),
        ("", "empty"),
        ("   ", "empty"),
        ("inputs.user_id", "undeclared reference to 'inputs'"),
        ("metadata.tenant", "undeclared reference to 'metadata'"),
        ("foo(1)", "undeclared function 'foo'"),
        ("input.s.lowerAscii()", "undeclared function 'lowerAscii'"),
        ("max(input.a, 2)", "undeclared function 'max'"),
        ("x" * (cel.MAX_EXPRESSION_LENGTH + 1), "characters long"),
    ],
)
def test_compile_errors(text: str, reason: str) -> None:
    with pytest.raises(CelError, match=reason or None) as info:
        compile_expression(text)
    assert isinstance(info.value, InvalidInput)
    assert isinstance(info.value, ValueError)
    assert info.value.expression == text
    assert "CEL expression" in str(info.value)


def test_compile_error_message_points_at_the_problem() -> None:
    with pytest.raises(CelError) as info:
        compile_expression("input.a + ")
    message = str(info.value)
    assert message.startswith("CEL expression 'input.a + ': ")
    assert "1:11" in message
    # The library's own "Failed to parse expression '...'" prefix is not repeated.
    assert "Failed to parse" not in message


def test_long_expression_is_shortened_in_the_message() -> None:
    text = "'" + "a" * 3000 + "'"
    with pytest.raises(CelError) as info:
        compile_expression(text)
    assert len(str(info.value)) < 400
    assert info.value.expression == text


def test_non_string_expression() -> None:
    with pytest.raises(CelError, match="must be a string"):
        compile_expression(5)  # type: ignore[arg-type]


def test_longest_allowed_expression_compiles() -> None:
    text = "+".join(["1"] * (cel.MAX_EXPRESSION_LENGTH // 2))
    assert len(text) <= cel.MAX_EXPRESSION_LENGTH
    assert compile_expression(text).evaluate({}, {}) == cel.MAX_EXPRESSION_LENGTH // 2


def test_comprehension_variables_and_type_names_are_declared() -> None:
    assert ev("input.l.map(x, x * 2)[1]", {"l": [1, 2]}) == 4
    assert ev("input.l.all(item, item > 0)", {"l": [1, 2]}) is True
    assert ev("input.l.filter(q, q > 1).exists_one(w, w == 2)", {"l": [1, 2]}) is True
    assert ev("type(input.n) == int", {"n": 1}) is True


# --- Hatchet's extra bindings and function ------------------------------------------------------


def test_workflow_run_id_and_parents() -> None:
    expr = compile_expression("input.p + workflow_run_id + parents.step1.out")
    got = expr.evaluate({"p": "a-"}, {}, workflow_run_id="run1", parents={"step1": {"out": "!"}})
    assert got == "a-run1!"


def test_checksum_matches_upstream() -> None:
    # The value upstream's own test expects for this input.
    expected = "97e9269cd0514f864e6be9157998464c94776ebc7f669b449f581abdad4035f5"
    assert ev("checksum(input.custom.value)", {"custom": {"value": "checksum this"}}) == expected
    assert ev("input.s.checksum()", {"s": "checksum this"}) == expected


# --- key rendering -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "input", "key"),
    [
        ("input.user_id", {"user_id": "u1"}, "u1"),
        ("input.user_id", {"user_id": ""}, ""),
        ("input.n", {"n": 42}, "42"),
        ("input.n", {"n": -7}, "-7"),
        ("input.n", {"n": 10**15}, "1000000000000000"),
        ("input.flag", {"flag": True}, "true"),
        ("input.flag", {"flag": False}, "false"),
        ("input.x > 5", {"x": 1}, "false"),
        ("input.f", {"f": 12.0}, "12"),
        ("input.f", {"f": 1.5}, "1.5"),
        ("input.f", {"f": 1e300}, "1e+300"),
        ("'constant'", {}, "constant"),
        ("input.a + ':' + string(input.n)", {"a": "t", "n": 3}, "t:3"),
    ],
)
def test_key_rendering(text: str, input: dict[str, Any], key: str) -> None:
    assert compile_expression(text).key(input, {}) == key


@pytest.mark.parametrize(
    ("text", "input", "reason"),
    [
        ("input.l", {"l": ["a"]}, "result is a list"),
        ("input.n", {"n": None}, "result is a null"),
        ("b'abc'", {}, "result is a bytes"),
        ("input.f", {"f": float("nan")}, "not a finite number"),
        ("input.s", {"s": "x" * (cel.MAX_KEY_BYTES + 1)}, "longer than"),
        ("input.s", {"s": "\u00e9" * (cel.MAX_KEY_BYTES // 2 + 1)}, "longer than"),
        ("input.missing", {}, "no such key"),
    ],
)
def test_key_errors(text: str, input: dict[str, Any], reason: str) -> None:
    with pytest.raises(CelError, match=reason):
        compile_expression(text).key(input, {})


def test_key_at_the_size_limit() -> None:
    key = "x" * cel.MAX_KEY_BYTES
    assert compile_expression("input.s").key({"s": key}, {}) == key


# --- integers (max_runs_expression, units_expr, limit_values_expr) -------------------------------


@pytest.mark.parametrize(
    ("text", "input", "value"),
    [
        ("input.units", {"units": 3}, 3),
        ("input.units", {"units": 3.0}, 3),
        ("-1", {}, -1),
        ("input.tier == 'pro' ? 10 : 2", {"tier": "pro"}, 10),
        ("int(additional_metadata.limit)", {}, 5),
        ("size(input.l)", {"l": [1, 2]}, 2),
        ("1073741824", {}, 1 << 30),
    ],
)
def test_integer(text: str, input: dict[str, Any], value: int) -> None:
    got = compile_expression(text).integer(input, {"limit": "5"})
    assert got == value
    assert type(got) is int


@pytest.mark.parametrize(
    ("text", "input", "reason"),
    [
        ("input.units", {"units": 2.5}, "not a whole number"),
        ("input.units", {"units": "5"}, "result is a string; expected an int"),
        ("input.units", {"units": True}, "result is a bool; expected an int"),
        ("input.units", {"units": float("inf")}, "not a whole number"),
        ("input.units", {"units": 1 << 31}, "out of range"),
        ("input.units", {"units": -(1 << 31)}, "out of range"),
        ("input.units", {}, "no such key"),
        ("input.l", {"l": [1]}, "result is a list"),
    ],
)
def test_integer_errors(text: str, input: dict[str, Any], reason: str) -> None:
    with pytest.raises(CelError, match=reason):
        compile_expression(text).integer(input, {})


# --- compile cache ------------------------------------------------------------------------------


def test_compiled_once_per_text() -> None:
    cel.cache_clear()
    first = compile_expression("input.cache_test + 'a'")
    again = compile_expression("input.cache_test + 'a'")
    assert first is again
    info = cel.cache_info()
    assert (info.hits, info.misses) == (1, 1)
    assert info.maxsize == cel.CACHE_SIZE
    assert compile_expression("input.cache_test + 'b'") is not first


def test_cache_is_bounded() -> None:
    cel.cache_clear()
    for i in range(cel.CACHE_SIZE + 10):
        compile_expression(f"input.k{i}")
    assert cel.cache_info().currsize == cel.CACHE_SIZE


def test_invalid_expressions_fail_every_time() -> None:
    for _ in range(2):
        with pytest.raises(CelError):
            compile_expression("1 +")


def test_expression_equality_and_repr() -> None:
    a = Expression("input.a")
    assert a == compile_expression("input.a")
    assert hash(a) == hash(compile_expression("input.a"))
    assert a != Expression("input.b")
    assert repr(a) == "Expression('input.a')"


# --- binding only the fields an expression reads -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "input_fields", "metadata_fields"),
    [
        ("input.a + ':' + additional_metadata.b", {"a"}, {"b"}),
        ("input.a.b.c", {"a"}, set()),
        ("input['x-y'] + input[\"z\"]", {"x-y", "z"}, set()),
        ("has(input.a) ? input.b : 'c'", {"a", "b"}, set()),
        ("input . a + input.// comment\n b", {"a", "b"}, set()),
        ("'input' + \"input.q\" + input.a", {"a"}, set()),
        ("r'\\' + input.a", {"a"}, set()),
        ("'''input''' + '\\'' + input.a", {"a"}, set()),
        ("{'input': 1}.input + input.a", {"a"}, set()),
        ("additional_metadata.input", set(), {"input"}),
        ("size(input)", None, set()),
        ("'k' in input", None, set()),
        ("input[input.k]", None, set()),
        ("input['a\\'b']", None, set()),
        ("input[b'k']", None, set()),
        ("input.exists(k, k == 'a')", None, set()),
        ("input == {}", None, set()),
        ("[1].map(input, input + 1)[0]", None, None),
        ("'constant'", set(), set()),
    ],
)
def test_fields_read(
    text: str, input_fields: set[str] | None, metadata_fields: set[str] | None
) -> None:
    expr = Expression(text)
    assert expr._input_fields == (None if input_fields is None else frozenset(input_fields))
    assert expr._metadata_fields == (
        None if metadata_fields is None else frozenset(metadata_fields)
    )


def test_pruning_never_changes_a_missing_key_answer() -> None:
    # Simulate a scan that missed a field: the full maps are consulted before failing.
    expr = Expression("input.a + input.b")
    expr._input_fields = frozenset({"a"})
    assert expr.evaluate({"a": "x", "b": "y"}, {}) == "xy"
    with pytest.raises(CelError, match="no such key: 'b'"):
        expr.evaluate({"a": "x"}, {})


_FIELD = st.sampled_from(["a", "b", "input", "l"])
_ATOM = st.one_of(
    _FIELD.map(lambda f: f"input.{f}"),
    _FIELD.map(lambda f: f"input['{f}']"),
    _FIELD.map(lambda f: f"additional_metadata.{f}"),
    _FIELD.map(lambda f: f"has(input.{f})"),
    st.sampled_from(
        [
            "'input.a'",
            "r'\\'",
            "'\\''",
            "size(input)",
            "size(additional_metadata)",
            "'a' in input",
            "input[input.b]",
            "1",
            "'s'",
            "true",
            "input.l.map(x, x)",
            "[1].map(input, input)",
            "input . b",
        ]
    ),
)


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(children, children).map(lambda p: f"({p[0]} + {p[1]})"),
        st.tuples(children, children).map(lambda p: f"({p[0]} == {p[1]})"),
        st.tuples(children, children, children).map(lambda p: f"({p[0]} ? {p[1]} : {p[2]})"),
        children.map(lambda c: f"string({c})"),
        children.map(lambda c: f"[{c}][0] // note\n"),
    )


_VALUE = st.one_of(
    st.integers(-5, 5), st.text(max_size=3), st.booleans(), st.lists(st.integers(0, 3), max_size=2)
)
_MAP = st.dictionaries(st.sampled_from(["a", "b", "input", "l", "zz"]), _VALUE, max_size=5)


@settings(max_examples=300, deadline=None)
@given(st.recursive(_ATOM, _combine, max_leaves=6), _MAP, _MAP)
def test_binding_read_fields_only_gives_the_same_answers(
    text: str, input: dict[str, Any], md: dict[str, Any]
) -> None:
    try:
        expr = Expression(text)
    except CelError:
        return
    full = Expression(text)
    full._input_fields = None
    full._metadata_fields = None

    def outcome(e: Expression) -> object:
        try:
            return ("ok", e.evaluate(input, md))
        except CelError as err:
            return ("error", err.reason)

    assert outcome(expr) == outcome(full)
