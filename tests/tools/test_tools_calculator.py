"""The calculator: exact arithmetic, safe AST walk, guards, and errors that come back as tool errors."""

from __future__ import annotations

import math
import time

import pytest

from turngym.tools import ToolCall, ToolSet
from turngym.tools.calculator import CalculatorError, calculator, evaluate, format_number


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("2*(3+4)", "14"),
        ("7/2", "3.5"),
        ("6/2", "3"),
        ("7//2", "3"),
        ("-7 % 3", "2"),
        ("2**64", "18446744073709551616"),
        ("-(-3)", "3"),
        ("+5", "5"),
        ("0.1+0.2", "0.3"),
        ("sqrt(16) + abs(-2)", "6"),
        ("round(2.675, 2)", "2.67"),
        ("max(1, 5, 3) - min(4, 2)", "3"),
        ("floor(2.7) + ceil(2.1)", "5"),
        ("log10(1000)", "3"),
        ("factorial(5)", "120"),
        ("2^10", "1024"),  # caret is read as power
        ("3 × 4 ÷ 2", "6"),
        ("  12  ", "12"),
        ("1e3", "1000"),
        ("10**20 + 1", "100000000000000000001"),
    ],
)
def test_values(expr, expected):
    assert calculator(expr) == expected


def test_constants_and_float_format():
    assert evaluate("pi") == math.pi
    assert calculator("pi") == "3.14159265359"
    assert format_number(1e20) == "1e+20"
    assert format_number(-0.5) == "-0.5"


@pytest.mark.parametrize(
    "expr, fragment",
    [
        ("1/0", "division by zero"),
        ("5 % 0", "modulo by zero"),
        ("3 // 0.0", "division by zero"),
        ("__import__('os')", "unknown function '__import__'"),
        ("__import__('os').system('id')", "is not allowed"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("x + 1", "unknown name 'x'"),
        ("(1).__class__", "Attribute is not allowed"),
        ("[1, 2]", "List is not allowed"),
        ("'a' * 3", "only numbers"),
        ("True + 1", "only numbers"),
        ("lambda: 1", "Lambda is not allowed"),
        ("1 << 100000", "operator LShift is not allowed"),
        ("~1", "unary operator Invert"),
        ("1 +", "invalid syntax"),
        ("", "empty expression"),
        ("9**9**9", "exponent"),
        ("2**100000", "exponent"),
        ("10**4000 * 10**4000", "too large"),
        ("factorial(100000)", "too large"),
        ("1e308 * 10", "not a finite number"),
        ("exp(1000)", "exp"),
        ("sqrt(-1)", "math domain error"),
        ("(-8) ** 0.5", "complex"),
        ("1+" * 400 + "1", "too long"),
        ("-" * 100 + "1", "nested too deeply"),
        ("(" * 300 + "1" + ")" * 300, "too long"),
        ("round(1.5, 10**9)", "round's second argument"),
        ("max(x=1)", "keyword arguments"),
    ],
)
def test_rejected_with_clear_message(expr, fragment):
    t0 = time.perf_counter()
    with pytest.raises(CalculatorError) as ei:
        calculator(expr)
    assert fragment in str(ei.value), str(ei.value)
    assert time.perf_counter() - t0 < 0.5  # guards keep every case cheap


def test_errors_come_back_as_tool_errors():
    with ToolSet([calculator]) as ts:
        ok, bad, wrong_type = ts.execute(
            [
                ToolCall("calculator", {"expression": "(12 + 30) * 2"}),
                ToolCall("calculator", {"expression": "1/0"}),
                ToolCall("calculator", {"expression": 12}),
            ]
        )
    assert ok.ok and ok.output == "84"
    assert not bad.ok and "division by zero" in bad.error
    assert not wrong_type.ok and "should be string" in wrong_type.error


def test_schema():
    fn = calculator.schema["function"]
    assert fn["name"] == "calculator"
    assert fn["parameters"]["required"] == ["expression"]
    assert fn["parameters"]["properties"]["expression"]["type"] == "string"
