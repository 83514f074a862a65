"""Tests for orion_grpc.core.conditions (safe CEL-subset condition language)."""

from __future__ import annotations

import json
import pickle
import threading
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orion_grpc.core.conditions import (
    MAX_CONDITION_LENGTH,
    MAX_NESTING_DEPTH,
    CompiledCondition,
    ConditionError,
    ConditionEvaluationError,
    ConditionSyntaxError,
    compile_condition,
)

RESULT: dict[str, Any] = {
    "status": "ok",
    "score": 0.75,
    "count": 3,
    "flag": True,
    "nothing": None,
    "name": "prod-api",
    "tags": ["a", "b", "c"],
    "items": [
        {"id": 1, "name": "first", "meta": {"weight": 1.5}},
        {"id": 2, "name": "second", "meta": {}},
    ],
    "nested": {"deep": {"deeper": {"value": 42, "list": [[1, 2], [3, [4, 5]]]}}},
    "content-type": "application/json; charset=utf-8",
    "empty": {},
    "zero": 0,
}


def make_vars(**overrides: Any) -> dict[str, Any]:
    variables: dict[str, Any] = {
        "result": RESULT,
        "status": "completed",
        "success": True,
        "error": None,
        "task_id": "task-1",
    }
    variables.update(overrides)
    return variables


VARS = make_vars()


def ev(source: str, variables: Mapping[str, Any] | None = None) -> bool:
    return compile_condition(source).evaluate(VARS if variables is None else variables)


def value_of(expr: str, expected_literal: str) -> bool:
    """Evaluate `expr == expected_literal` (used to inspect non-bool values)."""
    return ev(f"({expr}) == ({expected_literal})")


def syntax_error(source: str) -> ConditionSyntaxError:
    with pytest.raises(ConditionSyntaxError) as info:
        compile_condition(source)
    return info.value


def eval_error(source: str, variables: Mapping[str, Any] | None = None) -> ConditionEvaluationError:
    condition = compile_condition(source)
    with pytest.raises(ConditionEvaluationError) as info:
        condition.evaluate(VARS if variables is None else variables)
    return info.value


# ---------------------------------------------------------------------------
# API surface
# ---------------------------------------------------------------------------


def test_public_api_shape() -> None:
    assert MAX_CONDITION_LENGTH == 4096
    assert MAX_NESTING_DEPTH == 64
    assert issubclass(ConditionError, ValueError)
    assert issubclass(ConditionSyntaxError, ConditionError)
    assert issubclass(ConditionEvaluationError, ConditionError)
    condition = compile_condition("success")
    assert isinstance(condition, CompiledCondition)
    assert condition.source == "success"
    with pytest.raises(AttributeError):
        condition.source = "other"  # type: ignore[misc]


def test_compile_is_cached() -> None:
    first = compile_condition("status == 'completed'")
    second = compile_condition("status == 'completed'")
    assert first is second
    info = compile_condition.cache_info()  # type: ignore[attr-defined]
    assert info.maxsize == 1024
    assert info.hits >= 1


def test_compiled_condition_equality_and_pickle() -> None:
    condition = compile_condition("result.count > 2")
    assert condition == compile_condition("result.count > 2")
    assert hash(condition) == hash(compile_condition("result.count > 2"))
    clone = pickle.loads(pickle.dumps(condition))
    assert clone.source == condition.source
    assert clone.evaluate(VARS) is True
    assert "result.count > 2" in repr(condition)


def test_error_attributes_and_pickle() -> None:
    error = syntax_error("result.x ==")
    assert str(error) == "Invalid condition 'result.x ==': unexpected end of expression at position 11"
    assert error.expression == "result.x =="
    assert error.position == 11
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is ConditionSyntaxError
    assert str(clone) == str(error)
    assert clone.position == 11


def test_evaluate_returns_exact_bools() -> None:
    assert ev("true") is True
    assert ev("false") is False
    assert ev("success") is True


def test_non_string_source_rejected() -> None:
    with pytest.raises(ConditionSyntaxError, match="must be a string, got int"):
        compile_condition(42)  # type: ignore[arg-type]
    with pytest.raises(ConditionSyntaxError, match="must be a string, got list"):
        compile_condition(["success"])  # type: ignore[arg-type]


def test_str_subclass_source_accepted() -> None:
    class MyStr(str):
        pass

    condition = compile_condition(MyStr("success"))
    assert type(condition.source) is str
    assert condition.evaluate(VARS) is True


def test_variables_must_be_mapping() -> None:
    condition = compile_condition("success")
    with pytest.raises(ConditionEvaluationError, match="variables must be a mapping, got list"):
        condition.evaluate([("success", True)])  # type: ignore[arg-type]


def test_thread_safety_smoke() -> None:
    condition = compile_condition("result.count + size(result.tags) == 6 && status in ['completed']")
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(2000):
                assert condition.evaluate(VARS) is True
        except BaseException as exc:  # pragma: no cover - only on failure
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


# ---------------------------------------------------------------------------
# Literals
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("42 == 42", True),
        ("0x2A == 42", True),
        ("0X2a == 42", True),
        ("007 == 7", True),
        ("1.5 == 1.5", True),
        (".5 == 0.5", True),
        ("1e3 == 1000", True),
        ("1E-3 == 0.001", True),
        ("2.5e+2 == 250", True),
        ("9223372036854775807 > 0", True),
        ("-9223372036854775807 < 0", True),
        ("\"abc\" == 'abc'", True),
        ("\"\" == ''", True),
        ('"a\\nb" == "a\\u000ab"', True),
        ('"tab\\there" == "tab\\u0009here"', True),
        ('"q\\"q" == \'q"q\'', True),
        ("'it\\'s' == \"it's\"", True),
        ('"back\\\\slash" == r"back\\slash"', True),
        ('"\\x41\\u0042\\U00000043" == "ABC"', True),
        ('"\\u00e9" == "é"', True),
        ('"\\ud83d\\ude00" == "\\U0001F600"', True),
        ('"😀" == "\\U0001F600"', True),
        ('size("😀") == 1', True),
        ('"\\r\\b\\f\\v\\a\\?\\`" == "\\u000d\\u0008\\u000c\\u000b\\u0007?`"', True),
        ('r"\\d+" == "\\\\d+"', True),
        ("R'\\n' == '\\\\n'", True),
        ("true", True),
        ("false", False),
        ("null == null", True),
        ("[1, 2] == [1, 2]", True),
        ("[] == []", True),
        ("[1, 2,] == [1, 2]", True),
        ("[[1], ['a', null]] == [[1], ['a', null]]", True),
        ("[1 + 1, status] == [2, 'completed']", True),
        ("true // trailing comment", True),
        ("// leading comment\ntrue", True),
        ("\t\n  true \r\n", True),
    ],
)
def test_literals(source: str, expected: bool) -> None:
    assert ev(source) is expected


def test_raw_string_used_for_regex() -> None:
    assert ev(r'"build-123".matches(r"^build-\d+$")') is True


# ---------------------------------------------------------------------------
# Operators
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # logical
        ("true || false", True),
        ("false || false", False),
        ("false || true", True),
        ("true && true", True),
        ("true && false", False),
        ("false && true", False),
        ("!true", False),
        ("!false", True),
        ("!!true", True),
        ("!!!true", False),
        ("true && true && true && false", False),
        ("false || false || false || true", True),
        # equality
        ("1 == 1", True),
        ("1 != 2", True),
        ("1 == 1.0", True),
        ("1.0 == 1", True),
        ("1 != 1.0", False),
        ("'1' == 1", False),
        ("'1' != 1", True),
        ("true == 1", False),
        ("false == 0", False),
        ("true != 1", True),
        ("null == false", False),
        ("null != 0", True),
        ("[1, 2] == [1, 2.0]", True),
        ("[true] == [1]", False),
        ("[1, 2] != [2, 1]", True),
        ("[1] == 1", False),
        ("result.empty == result.empty", True),
        ("result.items[0].meta == result.items[0].meta", True),
        ("result.items[0].meta != result.items[1].meta", True),
        # ordering
        ("1 < 2", True),
        ("2 <= 2", True),
        ("3 > 2.5", True),
        ("2.5 >= 3", False),
        ("'abc' < 'abd'", True),
        ("'b' > 'abc'", True),
        ("'a' <= 'a'", True),
        ("false < true", True),
        ("true >= true", True),
        ("-1 < 0", True),
        # in
        ("2 in [1, 2, 3]", True),
        ("4 in [1, 2, 3]", False),
        ("2.0 in [1, 2, 3]", True),
        ("true in [1]", False),
        ("1 in [true]", False),
        ("null in [null]", True),
        ("'a' in ['a', 'b']", True),
        ("[1] in [[1], [2]]", True),
        ("'status' in result", True),
        ("'missing' in result", False),
        ("'ell' in 'hello'", True),
        ("'xyz' in 'hello'", False),
        ("'' in ''", True),
        ("status in ['failed', 'cancelled']", False),
        ("status in ['completed', 'failed']", True),
        ("!(status in ['failed', 'cancelled'])", True),
        # arithmetic
        ("1 + 2 == 3", True),
        ("5 - 7 == -2", True),
        ("3 * 4 == 12", True),
        ("7 / 2 == 3", True),
        ("-7 / 2 == -3", True),
        ("7 / -2 == -3", True),
        ("7.0 / 2 == 3.5", True),
        ("7 / 2.0 == 3.5", True),
        ("7 % 3 == 1", True),
        ("-7 % 3 == -1", True),
        ("7 % -3 == 1", True),
        ("7.5 % 2 == 1.5", True),
        ("1 + 0.5 == 1.5", True),
        ("0.1 + 0.2 > 0.3", True),
        ("-(1 + 2) == -3", True),
        ("--3 == 3", True),
        ("- -3 == 3", True),
        ("-result.count == -3", True),
        ("-result.score == -0.75", True),
        ("'ab' + 'cd' == 'abcd'", True),
        ("[1] + [2, 3] == [1, 2, 3]", True),
        ("result.tags + ['d'] == ['a', 'b', 'c', 'd']", True),
        ("9223372036854775807 - 1 > 0", True),
        # conditional
        ("true ? true : false", True),
        ("false ? true : false", False),
        ("(1 > 2 ? 'a' : 'b') == 'b'", True),
        ("success ? result.count == 3 : 1 / 0 == 1", True),
        ("false ? 1 / 0 == 1 : true", True),
        ("(false ? 1 : true ? 2 : 3) == 2", True),
        ("(true ? false ? 1 : 2 : 3) == 2", True),
    ],
)
def test_operators(source: str, expected: bool) -> None:
    assert ev(source) is expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # * binds tighter than +, + tighter than comparisons
        ("1 + 2 * 3 == 7", True),
        ("(1 + 2) * 3 == 9", True),
        ("10 - 4 - 3 == 3", True),  # left associative
        ("10 - (4 - 3) == 9", True),
        ("100 / 10 / 5 == 2", True),
        ("2 * 3 % 4 == 2", True),  # (2*3)%4
        ("1 + 2 == 3 && 2 * 2 == 4", True),
        # && binds tighter than ||
        ("true || false && false", True),
        ("(true || false) && false", False),
        ("false && false || true", True),
        ("false && (false || true)", False),
        # ! binds tighter than && / ==
        ("!false && true", True),
        ("!(false && true)", True),
        ("!true == false", True),
        # unary minus binds tighter than *
        ("-2 * 3 == -6", True),
        ("-2 * -3 == 6", True),
        # member access binds tighter than unary minus / !
        ("-result.nested.deep.deeper.value == -42", True),
        ("!result.flag == false", True),
        # relational operators share one level and are left-associative
        ("1 < 2 == true", True),
        ("(1 < 2) == (2 < 3)", True),
        ("2 in [2] == true", True),
        # ?: has the lowest precedence and is right-associative
        ("true ? false : true || true", False),
        ("(true ? false : true) || true", True),
        ("false || true ? true : false", True),
        ("1 + 1 == 2 ? status == 'completed' : false", True),
    ],
)
def test_precedence(source: str, expected: bool) -> None:
    assert ev(source) is expected


def test_long_flat_chains_do_not_recurse() -> None:
    terms = (MAX_CONDITION_LENGTH - 20) // 4
    addition = "1" + " + 1" * terms + f" == {terms + 1}"
    assert len(addition) <= MAX_CONDITION_LENGTH
    assert ev(addition) is True
    conjunction = "&&".join(["true"] * 680)
    assert ev(conjunction) is True
    disjunction = "||".join(["false"] * 580)
    assert ev(disjunction) is False
    assert ev("!" * 4000 + "true") is True
    assert ev("-" * 2000 + "1 == 1") is True
    mixed = "&&".join(["(1<2||x)"] * 400)
    assert ev(mixed) is True


def test_long_member_chain() -> None:
    depth = 1000
    value: Any = True
    for _ in range(depth):
        value = {"a": value}
    source = "r" + ".a" * depth
    assert len(source) <= MAX_CONDITION_LENGTH
    assert compile_condition(source).evaluate({"r": value}) is True


# ---------------------------------------------------------------------------
# Short circuit
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "false && (1/0 == 1)",
        "false && undefined_variable",
        "false && result.no.such.key",
        "false && 'not a bool'",
        "false && false && (1/0 == 1)",
    ],
)
def test_and_short_circuits(source: str) -> None:
    assert ev(source) is False


@pytest.mark.parametrize(
    "source",
    [
        "true || (1/0 == 1)",
        "true || undefined_variable",
        "success || result.no.such.key",
        "true || 42",
        "false || true || (1 % 0 == 1)",
    ],
)
def test_or_short_circuits(source: str) -> None:
    assert ev(source) is True


def test_short_circuit_is_left_to_right() -> None:
    err = eval_error("(1/0 == 1) && false")
    assert "division by zero" in str(err)


def test_has_guard_pattern() -> None:
    assert ev("has(result.missing) && result.missing > 1") is False
    assert ev("!has(result.missing) || result.missing > 1") is True
    assert ev("has(result.count) && result.count > 1") is True


# ---------------------------------------------------------------------------
# Member access, indexes and JSON results
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("result.status == 'ok'", True),
        ("result['status'] == 'ok'", True),
        ('result["content-type"].startsWith("application/json")', True),
        ("result.items[0].id == 1", True),
        ("result.items[1]['name'] == 'second'", True),
        ("result.items[0].meta.weight > 1", True),
        ("result.nested.deep.deeper.value == 42", True),
        ("result.nested.deep.deeper.list[1][1][0] == 4", True),
        ("result.nested['deep']['deeper'].list[0] == [1, 2]", True),
        ("result.tags[size(result.tags) - 1] == 'c'", True),
        ("result.items[result.zero].name == 'first'", True),
        ("result.nothing == null", True),
        ("result.flag", True),
        ("result.flag == true", True),
        ("[10, 20, 30][1] == 20", True),
        ("[[1, 2], [3]][0][1] == 2", True),
        ("size(result.items) == 2 && result.items[0].name.startsWith('fir')", True),
    ],
)
def test_member_access_on_json(source: str, expected: bool) -> None:
    assert ev(source) is expected


def test_result_from_json_round_trip() -> None:
    payload = json.loads(
        '{"report": {"passed": 98, "failed": 2, "suites": [{"name": "unit", "ok": true},'
        ' {"name": "e2e", "ok": false}], "ratio": 0.98}}'
    )
    variables = make_vars(result=payload)
    assert ev("result.report.passed + result.report.failed == 100", variables)
    assert ev("result.report.ratio >= 0.95 && !result.report.suites[1].ok", variables)
    assert ev("result.report.suites[0].name in ['unit', 'integration']", variables)
    assert ev("double(result.report.passed) / 100.0 == result.report.ratio", variables)


@pytest.mark.parametrize(
    ("result", "source", "expected"),
    [
        (5, "result == 5", True),
        (5, "result > 4.5", True),
        ("done", "result == 'done'", True),
        ("done", "result.startsWith('do')", True),
        (None, "result == null", True),
        (True, "result", True),
        ([1, 2, 3], "3 in result && size(result) == 3", True),
        ([], "size(result) == 0", True),
        ({"a": {"b": None}}, "has(result.a.b) && result.a.b == null", True),
        ((1, 2), "result == [1, 2]", True),  # tuples behave like lists
    ],
)
def test_result_of_any_json_type(result: Any, source: str, expected: bool) -> None:
    assert ev(source, make_vars(result=result)) is expected


def test_non_dict_mapping_is_supported() -> None:
    class ReadOnly(Mapping[str, Any]):
        def __init__(self, data: dict[str, Any]) -> None:
            self._data = data

        def __getitem__(self, key: str) -> Any:
            return self._data[key]

        def __iter__(self) -> Any:
            return iter(self._data)

        def __len__(self) -> int:
            return len(self._data)

    variables = ReadOnly({"result": ReadOnly({"x": 1}), "status": "completed"})
    assert ev("result.x == 1 && status == 'completed'", variables)
    assert ev("has(result.x) && !has(result.y)", variables)
    assert "no key 'y'" in str(eval_error("result.y == 1", variables))


# ---------------------------------------------------------------------------
# has()
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("has(result.status)", True),
        ("has(result.missing)", False),
        ("has(result.nothing)", True),  # present, even though null
        ("has(result['content-type'])", True),
        ("has(result['missing'])", False),
        ("has(result.nested.deep.deeper.value)", True),
        ("has(result.nested.deep.missing.value)", False),  # lenient along the path
        ("has(result.nothing.x)", False),  # null intermediate
        ("has(result.status.length)", False),  # string intermediate
        ("has(result.items[1])", True),
        ("has(result.items[2])", False),
        ("has(result.items[-1])", False),
        ("has(result.items['x'])", False),
        ("has(result.items[0].meta.weight)", True),
        ("has(result.items[1].meta.weight)", False),
        ("has(result.tags[0])", True),
        ("has(result.empty.anything)", False),
    ],
)
def test_has(source: str, expected: bool) -> None:
    assert ev(source) is expected


def test_has_still_reports_unknown_variables_and_index_errors() -> None:
    assert "unknown variable 'nope'" in str(eval_error("has(nope.x)"))
    assert "division by zero" in str(eval_error("has(result.items[1 / 0])"))


@pytest.mark.parametrize(
    "source",
    ["has(result)", "has(1)", "has('x')", "has(result.name.lower())", "has(size(result.tags))"],
)
def test_has_requires_a_selection(source: str) -> None:
    assert "has() requires a field selection" in str(syntax_error(source))


# ---------------------------------------------------------------------------
# Functions and methods
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("size('hello') == 5", True),
        ("size('') == 0", True),
        ("size(result.tags) == 3", True),
        ("size(result.items[0]) == 3", True),
        ("size(result.empty) == 0", True),
        ("result.tags.size() == 3", True),
        ("'abc'.size() == 3", True),
        ("int('42') == 42", True),
        ("int('-7') == -7", True),
        ("int(3.99) == 3", True),
        ("int(-3.99) == -3", True),
        ("int(5) == 5", True),
        ("double('2.5') == 2.5", True),
        ("double('1e3') == 1000.0", True),
        ("double(3) == 3.0", True),
        ("double(1) / 2 == 0.5", True),
        ("string(42) == '42'", True),
        ("string(1.5) == '1.5'", True),
        ("string(true) == 'true'", True),
        ("string(null) == 'null'", True),
        ("string('x') == 'x'", True),
        ("'count=' + string(result.count) == 'count=3'", True),
        ("lower('MiXeD') == 'mixed'", True),
        ("upper('MiXeD') == 'MIXED'", True),
        ("'MiXeD'.lower() == 'mixed'", True),
        ("'MiXeD'.upper() == 'MIXED'", True),
        ("result.name.startsWith('prod-')", True),
        ("result.name.startsWith('dev-')", False),
        ("result.name.endsWith('-api')", True),
        ("result.name.endsWith('prod')", False),
        ("result.name.contains('d-a')", True),
        ("result.name.contains('xyz')", False),
        ("result.name.matches('^prod-[a-z]+$')", True),
        ("result.name.matches('api')", True),  # search semantics
        ("result.name.matches('^api')", False),
        ("matches(result.name, 'd-a')", True),
        ("matches(result.name, r'\\d')", False),
        ("result.name.matches(result.tags[0])", True),
        ("result.name.matches(result.tags[1])", False),
    ],
)
def test_functions(source: str, expected: bool) -> None:
    assert ev(source) is expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("size(1) == 1", "size() requires a string, list or map, got int"),
        ("size(null) == 1", "size() requires a string, list or map, got null"),
        ("int('4.2') == 4", "int() cannot convert string '4.2'"),
        ("int('1_000') == 1000", "int() cannot convert string"),
        ("int(' 1') == 1", "int() cannot convert string"),
        ("int(true) == 1", "int() cannot convert bool"),
        ("int(null) == 0", "int() requires an int, double or string, got null"),
        ("int('99999999999999999999') == 1", "int() cannot convert string"),
        ("int(1e300) == 1", "integer overflow"),
        ("int(double('nan')) == 1", "int() cannot convert nan"),
        ("double('abc') == 1.0", "double() cannot convert string 'abc'"),
        ("double('1_0') == 10.0", "double() cannot convert string"),
        ("double(false) == 0.0", "double() cannot convert bool"),
        ("double([]) == 0.0", "double() requires an int, double or string, got list"),
        ("string([1]) == ''", "string() requires a string, number, bool or null, got list"),
        ("lower(1) == ''", "lower() requires a string, got int"),
        ("result.count.startsWith('1')", "startsWith() requires a string, got int"),
        ("result.name.startsWith(1)", "startsWith() argument requires a string, got int"),
        ("result.tags.contains('a')", "contains() requires a string, got list"),
        ("result.count.matches('1')", "matches() requires a string, got int"),
        ("result.name.matches(result.count)", "matches() pattern requires a string, got int"),
    ],
)
def test_function_errors(source: str, message: str) -> None:
    assert message in str(eval_error(source))


def test_regex_limits() -> None:
    long_pattern = "a" * 257
    err = eval_error("result.s.matches(result.p)", make_vars(result={"s": "aaa", "p": long_pattern}))
    assert "regular expression too long (257 characters, maximum 256)" in str(err)
    ok = compile_condition("result.s.matches(result.p)")
    assert ok.evaluate(make_vars(result={"s": "a" * 300, "p": "a" * 256})) is True
    err = eval_error("result.s.matches('a')", make_vars(result={"s": "a" * 100_001}))
    assert "matches() input too long (100001 characters, maximum 100000)" in str(err)
    assert ev("result.s.matches('a$')", make_vars(result={"s": "b" * 99_999 + "a"})) is True
    err = eval_error("result.s.matches(result.p)", make_vars(result={"s": "a", "p": "(unclosed"}))
    assert "invalid regular expression" in str(err)


def test_constant_regex_is_validated_at_compile_time() -> None:
    assert "invalid regular expression '(unclosed'" in str(syntax_error("result.name.matches('(unclosed')"))
    assert "invalid regular expression" in str(syntax_error("matches(result.name, '[')"))
    assert "regular expression too long" in str(syntax_error(f"result.name.matches('{'a' * 300}')"))




@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        # Each takes minutes or more with a backtracking engine; RE2 answers at once (a hang
        # here ends in the suite's timeout, not in a slow pass).
        (r"(a+)+$", "a" * 5_000 + "!", False),
        (r"(a+)+!", "a" * 5_000 + "!", True),
        (r"(a|a)*b", "a" * 50_000, False),
        (r"a*a*a*a*a*x", "a" * 50_000, False),
        (r".*x", "a" * 100_000, False),
    ],
)
def test_regex_runs_in_linear_time_on_hostile_patterns(pattern: str, text: str, expected: bool) -> None:
    condition = compile_condition(f"result.s.matches(r'{pattern}')")
    assert condition.evaluate(make_vars(result={"s": text})) is expected


@pytest.mark.parametrize(
    ("pattern", "detail"),
    [
        (r"(a)\1", "invalid escape sequence"),
        ("(?=a)", "invalid perl operator"),
        ("(?<=a)b", "invalid perl operator"),
    ],
)
def test_regex_features_re2_lacks_are_compile_errors(pattern: str, detail: str) -> None:
    message = str(syntax_error(f"result.name.matches(r'{pattern}')"))
    assert "invalid regular expression" in message and detail in message
@pytest.mark.parametrize(
    ("source", "message", "position"),
    [
        (
            "foo(1)",
            "unknown function 'foo' (supported: size, has, int, double, string, lower, upper, matches)",
            0,
        ),
        ("x && bar()", "unknown function 'bar'", 5),
        ("startsWith('a', 'b')", "startsWith is a method, write x.startsWith(...)", 0),
        (
            "'a'.foo()",
            "unknown method 'foo' (supported: startsWith, endsWith, contains, matches, size, lower, upper)",
            4,
        ),
        ("size()", "size() takes exactly 1 argument (0 given)", 0),
        ("size(1, 2)", "size() takes exactly 1 argument (2 given)", 0),
        ("matches('a')", "matches() takes exactly 2 arguments (1 given)", 0),
        ("'a'.startsWith()", "startsWith() takes exactly 1 argument (0 given)", 4),
        ("'a'.size(1)", "size() takes exactly 0 arguments (1 given)", 4),
    ],
)
def test_function_syntax_errors(source: str, message: str, position: int) -> None:
    err = syntax_error(source)
    assert message in str(err)
    assert err.position == position


# ---------------------------------------------------------------------------
# Syntax errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message", "position"),
    [
        ("result.x ==", "unexpected end of expression", 11),
        ("(1 + 2))", "unexpected token ')'", 7),
        ("(1 + 2", "unexpected end of expression (expected ')')", 6),
        ("[1, 2", "unexpected end of expression (expected ',' or ']')", 5),
        ("[1 2]", "unexpected token '2' (expected ',' or ']')", 3),
        ("size(1 2)", "unexpected token '2' (expected ',' or ')')", 7),
        ("result[0", "unexpected end of expression (expected ']')", 8),
        ("true ? 1", "unexpected end of expression (expected ':')", 8),
        ("abc 'x'", "unexpected token \"'x'\"", 4),
        ('abc"x', "unterminated string starting", 3),
        ("abc'x", "unterminated string starting", 3),
        ("'abc\n'", "unterminated string starting", 0),
        ("'abc\\", "unterminated string starting", 0),
        ("r'abc", "unterminated string starting", 0),
        ("'\\q'", "invalid escape sequence '\\\\q'", 1),
        ("'\\u12'", "expected 4 hex digits", 1),
        ("'\\u12zz'", "expected 4 hex digits", 1),
        ("'\\xZZ'", "expected 2 hex digits", 1),
        ("'\\ud800'", "unpaired surrogate", 1),
        ("'\\udc00\\ud800'", "unpaired surrogate", 1),
        ("'\\U00110000'", "invalid unicode escape", 1),
        ("a = 1", "unexpected character '=' (use '==' to compare values)", 2),
        ("a & b", "unexpected character '&' (use '&&' for logical AND)", 2),
        ("a | b", "unexpected character '|' (use '||' for logical OR)", 2),
        ("a and b", "unexpected token 'and' (use '&&' for logical AND)", 2),
        ("a or b", "unexpected token 'or' (use '||' for logical OR)", 2),
        ("{'a': 1}", "unexpected character '{' (map literals are not supported)", 0),
        ("a # b", "unexpected character '#'", 2),
        ("a @ b", "unexpected character '@'", 2),
        ("a ; b", "unexpected character ';'", 2),
        ("a\u00a0b", "unexpected character '\\xa0'", 1),
        ("résultat", "unexpected character 'é'", 1),
        ("1abc", "invalid number literal '1abc'", 0),
        ("1u == 1", "invalid number literal '1u'", 0),
        ("0x == 1", "invalid number literal '0x'", 0),
        ("1e == 1", "invalid number literal '1e'", 0),
        ("9223372036854775808 > 0", "integer literal '9223372036854775808' is out of range", 0),
        ("1e999 > 0", "number literal '1e999' is out of range", 0),
        ("result.", "unexpected end of expression (expected a field or method name after '.')", 7),
        ("result.1", "unexpected token '.1'", 6),
        ("result.'x'", "unexpected token \"'x'\" (expected a field or method name after '.')", 7),
        ("if == 1", "'if' is a reserved word and cannot be used as a variable name", 0),
        ("in", "'in' is a reserved word", 0),
        ("1 +", "unexpected end of expression", 3),
        ("* 2", "unexpected token '*'", 0),
        ("1 == == 2", "unexpected token '=='", 5),
        ("()", "unexpected token ')'", 1),
        ("(1)(2)", "unexpected token '('", 3),
        ("a ? b", "unexpected end of expression (expected ':')", 5),
        ("a : b", "unexpected token ':'", 2),
        ("", "condition is empty", None),
        ("   ", "condition is empty", None),
        ("// only a comment", "condition is empty", None),
    ],
)
def test_syntax_errors(source: str, message: str, position: int | None) -> None:
    err = syntax_error(source)
    assert message in str(err), str(err)
    assert err.position == position
    assert err.expression == source
    assert str(err).startswith(f"Invalid condition {source!r}: ")
    if position is not None:
        assert str(err).endswith(f" at position {position}")


def test_error_message_truncates_long_sources() -> None:
    source = "result.value == " + "1 + " * 100
    err = syntax_error(source)
    assert err.expression == source
    assert "..." in str(err)
    assert len(str(err)) < 200


# ---------------------------------------------------------------------------
# Evaluation errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message", "position"),
    [
        ("nope", "unknown variable 'nope' (known: result, status, success, error, task_id)", 0),
        ("True", "did you mean 'true'?", 0),
        ("x == None", "unknown variable 'x'", 0),
        ("result.missing == 1", "no key 'missing'", 7),
        ("result['missing'] == 1", "no key 'missing'", 6),
        (
            "result.empty.x == 1",
            "no key 'x' (the map is empty; use has() to test for optional keys)",
            13,
        ),
        ("result.items[5].id == 1", "index 5 out of range (list has 2 elements)", 12),
        ("result.items[-1].id == 1", "index -1 out of range", 12),
        ("result.items['0'] == 1", "list index must be an int, got string", 12),
        ("result.items[1.0] == 1", "list index must be an int, got double", 12),
        ("result.items[true] == 1", "list index must be an int, got bool", 12),
        ("result[[1]] == 1", "map key must be a string, int or bool, got list", 6),
        ("result.status[0] == 'o'", "cannot index into string", 13),
        (
            "result.nothing.x == 1",
            "cannot select field 'x' on null; use has() to test for optional values",
            15,
        ),
        ("result.count.x == 1", "cannot select field 'x' on int", 13),
        ("result.nothing[0] == 1", "cannot index into null", 14),
        ("'a' < 1", "cannot compare string and int with '<'", 4),
        ("1 <= 'a'", "cannot compare int and string with '<='", 2),
        ("true > 1", "cannot compare bool and int with '>'", 5),
        ("null >= null", "cannot compare null and null with '>='", 5),
        ("[1] < [2]", "cannot compare list and list with '<'", 4),
        ("result < result", "cannot compare map and map with '<'", 7),
        ("1 && true", "'&&' requires boolean operands, got int", 0),
        ("true && 'x'", "'&&' requires boolean operands, got string", 8),
        ("false || null", "'||' requires boolean operands, got null", 9),
        ("true && true && 1", "'&&' requires boolean operands, got int", 16),
        ("!1", "'!' requires a boolean, got int", 0),
        ("!result.nothing", "'!' requires a boolean, got null", 0),
        ("-'a' == 1", "unary '-' requires a number, got string", 0),
        ("-true == 1", "unary '-' requires a number, got bool", 0),
        ("result.count ? true : false", "the condition of '?:' must be a boolean, got int", 0),
        ("1 + 'a' == 1", "cannot apply '+' to int and string", 2),
        ("true + 1 == 2", "cannot apply '+' to bool and int", 5),
        ("[1] + 1 == 1", "cannot apply '+' to list and int", 4),
        ("null + null == null", "cannot apply '+' to null and null", 5),
        ("'a' - 'a' == ''", "cannot apply '-' to string and string", 4),
        ("'ab' * 3 == ''", "'*' is not supported on strings", 5),
        ("3 * 'ab' == ''", "'*' is not supported on strings", 2),
        ("[1] * 2 == [1, 1]", "cannot apply '*' to list and int", 4),
        ("1 / 0 == 1", "division by zero", 2),
        ("1.0 / 0 == 1", "division by zero", 4),
        ("1 / 0.0 == 1", "division by zero", 2),
        ("1 % 0 == 1", "modulo by zero", 2),
        ("1.5 % 0.0 == 1", "modulo by zero", 4),
        ("result.count / result.zero == 1", "division by zero", 13),
        ("9223372036854775807 + 1 > 0", "integer overflow", 20),
        ("-9223372036854775807 - 2 < 0", "integer overflow", 21),
        ("4611686018427387904 * 2 > 0", "integer overflow", 20),
        ("1 in 1", "'in' requires a list, map or string on the right, got int", 2),
        ("1 in 'abc'", "'in' on a string needs a string on the left, got int", 2),
        ("1", "condition must evaluate to a boolean, got int", None),
        ("1.5", "condition must evaluate to a boolean, got double", None),
        ("'yes'", "condition must evaluate to a boolean, got string", None),
        ("null", "condition must evaluate to a boolean, got null", None),
        ("[true]", "condition must evaluate to a boolean, got list", None),
        ("result", "condition must evaluate to a boolean, got map", None),
        ("result.count", "condition must evaluate to a boolean, got int", None),
        ("success ? 1 : 2", "condition must evaluate to a boolean, got int", None),
    ],
)
def test_evaluation_errors(source: str, message: str, position: int | None) -> None:
    err = eval_error(source)
    assert message in str(err), str(err)
    assert err.position == position, str(err)
    assert err.expression == source
    assert str(err).startswith(f"Cannot evaluate condition {source!r}: ")


def test_unknown_variable_lists_mapping_keys_in_order() -> None:
    err = eval_error("x", {"b": 1, "a": 2})
    assert "unknown variable 'x' (known: b, a)" in str(err)
    err = eval_error("x", {})
    assert "unknown variable 'x' (no variables are defined)" in str(err)


def test_missing_key_lists_available_keys() -> None:
    err = eval_error("result.x == 1", make_vars(result={"alpha": 1, "beta": 2}))
    assert "no key 'x' (available keys: 'alpha', 'beta'; use has() to test for optional keys)" in str(err)
    many = {f"k{i}": i for i in range(50)}
    err = eval_error("result.x == 1", make_vars(result=many))
    assert "'k19', ..." in str(err)


def test_resource_limits_on_results() -> None:
    half = "x" * 600_000
    err = eval_error("size(result.s + result.s) > 0", make_vars(result={"s": half}))
    assert "string result too long (1200000 characters, maximum 1000000)" in str(err)
    assert ev("size(result.s + 'y') == 600001", make_vars(result={"s": half}))
    big = list(range(600_000))
    err = eval_error("size(result.l + result.l) > 0", make_vars(result={"l": big}))
    assert "list result too long" in str(err)


def test_deeply_nested_values_do_not_crash() -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    err = eval_error("result == result", make_vars(result=deep))
    assert "nested too deeply" in str(err)


def test_unsupported_python_values_are_opaque() -> None:
    class Secret:
        password = "hunter2"

        def __repr__(self) -> str:
            return "Secret()"

    variables = make_vars(result=Secret())
    assert "cannot select field 'password' on unsupported type Secret" in str(
        eval_error("result.password == 'hunter2'", variables)
    )
    assert "cannot select field '__class__'" in str(eval_error("result.__class__ == null", variables))
    assert "cannot index into unsupported type Secret" in str(
        eval_error("result['password'] == 1", variables)
    )
    assert ev("result == result", variables) is True  # identity only
    assert ev("result != 'hunter2'", variables) is True


# ---------------------------------------------------------------------------
# Sandbox: no Python reachable
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "__import__('os')",
        "__import__('os').system('echo pwned')",
        "eval('1')",
        "exec('import os')",
        "open('/etc/passwd')",
        "getattr(result, '__class__')",
        "globals()",
        "type(result)",
        "compile('1', 'x', 'eval')",
        "result.__class__.__mro__()",
        "result.__class__.__subclasses__()",
        "'x'.format(result)",
        "'x'.join(['a'])",
        "result.keys()",
        "result.get('status')",
        "result.items()",
    ],
)
def test_sandbox_unknown_functions_and_methods(source: str) -> None:
    err = syntax_error(source)
    assert "unknown function" in str(err) or "unknown method" in str(err)


@pytest.mark.parametrize(
    "source",
    [
        "().__class__",
        "().__class__.__bases__[0].__subclasses__()",
        "lambda: True",
        "lambda x: x",
        "(lambda: 1)()",
        "[x for x in result]",
        "import os",
        "result; import os",
        "status == 'x' if True else False",
        "f'{result}'",
        "b'abc' == b'abc'",
        "result.status is 'ok'",
        "not success",
        "{}.__class__",
        "`whoami`",
        "${HOME}",
        "1 ** 2",
        "result.status := 'x'",
        "'''triple'''",
    ],
)
def test_sandbox_python_syntax_rejected(source: str) -> None:
    with pytest.raises(ConditionSyntaxError):
        compile_condition(source)


@pytest.mark.parametrize(
    "source",
    [
        "result.__class__ == null",
        "result.__dict__ == null",
        "result['__class__'] == null",
        "result.status.__class__ == null",
        "result.tags.__len__ == 3",
        "result.count.real == 3",
        "result.items[0].__class__ == null",
        "__builtins__ == null",
        "__class__ == null",
        "size.__globals__ == null",
        "result.__class__.__base__.__subclasses__ == null",
    ],
)
def test_sandbox_dunder_access_is_just_a_missing_key(source: str) -> None:
    err = eval_error(source)
    detail = err.detail
    assert (
        detail.startswith("no key '")
        or detail.startswith("cannot select field")
        or detail.startswith("unknown variable")
    ), detail


def test_sandbox_dunder_keys_in_json_are_plain_data() -> None:
    variables = make_vars(result={"__class__": "just data", "__init__": {"x": 1}})
    assert ev("result.__class__ == 'just data' && result.__init__.x == 1", variables)


def test_no_eval_exec_or_compile_in_source() -> None:
    import inspect

    import orion_grpc.core.conditions as module

    text = inspect.getsource(module)
    for forbidden in ("eval(", "exec(", "__import__", "getattr(", "compile(source"):
        # "compile(" occurs only as re.compile / _compile helpers.
        occurrences = [
            line
            for line in text.splitlines()
            if forbidden in line and not line.lstrip().startswith(("#", "``", "*"))
        ]
        assert not [line for line in occurrences if "re.compile" not in line and "_compile" not in line], (
            forbidden,
            occurrences,
        )


def test_too_long_source_rejected() -> None:
    source = "true && " * 600 + "true"
    assert len(source) > MAX_CONDITION_LENGTH
    err = syntax_error(source)
    assert f"condition is too long ({len(source)} characters, maximum 4096)" in str(err)
    assert err.position is None
    at_limit = "true" + " " * (MAX_CONDITION_LENGTH - 4)
    assert ev(at_limit) is True
    assert "too long" in str(syntax_error(at_limit + " "))


@pytest.mark.parametrize(
    ("opener", "closer", "inner"),
    [
        ("(", ")", "true"),
        ("[", "]", "true"),
        ("!(", ")", "true"),
        ("size(", ")", "'x'"),
        ("result[", "]", "'x'"),
        ("[[", "]]", "true"),
    ],
)
def test_nesting_depth_limit(opener: str, closer: str, inner: str) -> None:
    too_deep = opener * 100 + inner + closer * 100
    err = syntax_error(too_deep)
    assert "expression is nested too deeply (maximum depth is 64)" in str(err)


def test_nesting_depth_boundary() -> None:
    # The top-level expression counts as one level.
    ok = "(" * (MAX_NESTING_DEPTH - 1) + "true" + ")" * (MAX_NESTING_DEPTH - 1)
    assert ev(ok) is True
    too_deep = "(" * MAX_NESTING_DEPTH + "true" + ")" * MAX_NESTING_DEPTH
    err = syntax_error(too_deep)
    assert err.position == MAX_NESTING_DEPTH


def test_nested_ternaries_limited() -> None:
    source = "false ? 1 : " * 100 + "true"
    assert "nested too deeply" in str(syntax_error(source))
    source = "false ? true : " * 30 + "true"
    assert ev(source) is True


def test_deep_nesting_unbalanced_junk() -> None:
    for source in ["(" * 3000, "[" * 3000, "!(" * 2000, "-(" * 2000, "a[" * 2000, "f(" * 2000]:
        with pytest.raises(ConditionSyntaxError):
            compile_condition(source)


# ---------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------

SAMPLE_VARIABLES: list[dict[str, Any]] = [
    VARS,
    make_vars(result=None, status="failed", success=False, error="boom: timeout"),
    make_vars(result=[1, "two", 3.0, None, [True]], status="cancelled"),
    make_vars(result="plain text"),
    make_vars(result={"score": "high", "count": -1, "items": []}),
]

_IDENTIFIERS = st.sampled_from(
    ["result", "status", "success", "error", "task_id", "unknown_var", "_x", "has_"]
)
_FIELD_NAMES = st.sampled_from(
    [
        "status",
        "score",
        "count",
        "items",
        "tags",
        "name",
        "nested",
        "__class__",
        "missing",
        "in",
        "true",
    ]
)


def _string_literal(text: str) -> str:
    # JSON escapes (\" \\ \n \uXXXX incl. surrogate pairs) are all valid here.
    return json.dumps(text)


_ATOMS = st.one_of(
    st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=8).map(_string_literal),
    st.sampled_from(["true", "false", "null", "[]", "[1, 'a']", ".5", "0x1f"]),
    _IDENTIFIERS,
)

_BINARY = st.sampled_from(["||", "&&", "==", "!=", "<", "<=", ">", ">=", "in", "+", "-", "*", "/", "%"])


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(children, _BINARY, children).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        st.tuples(st.sampled_from(["!", "-"]), children).map(lambda t: f"{t[0]}{t[1]}"),
        children.map(lambda c: f"({c})"),
        st.tuples(children, children, children).map(lambda t: f"{t[0]} ? {t[1]} : {t[2]}"),
        st.tuples(children, _FIELD_NAMES).map(lambda t: f"({t[0]}).{t[1]}"),
        st.tuples(_IDENTIFIERS, _FIELD_NAMES).map(lambda t: f"{t[0]}.{t[1]}"),
        st.tuples(children, children).map(lambda t: f"({t[0]})[{t[1]}]"),
        st.lists(children, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
        st.tuples(st.sampled_from(["size", "int", "double", "string", "lower", "upper"]), children).map(
            lambda t: f"{t[0]}({t[1]})"
        ),
        st.tuples(_IDENTIFIERS, _FIELD_NAMES).map(lambda t: f"has({t[0]}.{t[1]})"),
        st.tuples(children, st.sampled_from(["startsWith", "endsWith", "contains"]), children).map(
            lambda t: f"({t[0]}).{t[1]}({t[2]})"
        ),
        st.tuples(children, st.sampled_from(["'^a'", "'b+'", "r'\\d'", "'('"])).map(
            lambda t: f"({t[0]}).matches({t[1]})"
        ),
    )


GRAMMAR_EXPRESSIONS = st.recursive(_ATOMS, _extend, max_leaves=40)


def _check_evaluation(condition: CompiledCondition) -> None:
    for variables in SAMPLE_VARIABLES:
        try:
            result = condition.evaluate(variables)
        except ConditionEvaluationError:
            continue
        assert result is True or result is False


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(GRAMMAR_EXPRESSIONS)
def test_property_grammar_expressions_compile_or_raise_syntax_error(source: str) -> None:
    try:
        condition = compile_condition(source)
    except ConditionSyntaxError as err:
        # Everything the generator builds is well-formed, except for literal
        # regexes like '(' and resource limits.
        assert (
            "too long" in err.detail
            or "nested too deeply" in err.detail
            or "invalid regular expression" in err.detail
        ), str(err)
        return
    _check_evaluation(condition)


_JUNK_ALPHABET = st.sampled_from(
    [
        *"()[]{}!&|=<>+-*/%?:.,'\"\\ \n\t0123456789abxyz_#@$`eEuUr",
        "true",
        "false",
        "null",
        "in",
        "has(",
        "size(",
        "result",
        ".5",
        "0x",
        "\\u",
        "&&",
        "||",
        "==",
        "//",
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_JUNK_ALPHABET, max_size=40).map("".join))
def test_property_token_junk_only_raises_condition_errors(source: str) -> None:
    try:
        condition = compile_condition(source)
    except ConditionSyntaxError:
        return
    _check_evaluation(condition)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_property_random_text_only_raises_condition_errors(source: str) -> None:
    try:
        condition = compile_condition(source)
    except ConditionSyntaxError:
        return
    _check_evaluation(condition)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=50))
def test_property_string_literals_round_trip(text: str) -> None:
    condition = compile_condition(f"result == {json.dumps(text)}")
    assert condition.evaluate({"result": text}) is True


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.integers(min_value=-(2**40), max_value=2**40).filter(lambda n: n != 0),
)
def test_property_integer_division_truncates_towards_zero(a: int, b: int) -> None:
    quotient = abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)
    remainder = a - b * quotient
    condition = compile_condition("result.a / result.b == result.q && result.a % result.b == result.r")
    assert condition.evaluate({"result": {"a": a, "b": b, "q": quotient, "r": remainder}}) is True
