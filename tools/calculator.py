"""A safe arithmetic calculator: the expression is parsed with `ast` and walked; nothing is `eval`-ed.

Allowed: int/float literals, ``+ - * / // % **``, unary ``+``/``-``, parentheses, the constants
``pi``, ``e``, ``tau`` and the functions ``sqrt abs round min max floor ceil log log2 log10 exp sin cos
tan asin acos atan hypot factorial``. Guards keep it cheap: the expression length, exponent size,
result size (bits) and nesting depth are bounded. Any problem raises `CalculatorError` (a
`ValueError`) whose message the `ToolSet` shows to the model.

Results: integers print exactly (``2**64`` -> ``18446744073709551616``); floats print with 12
significant digits (``0.1+0.2`` -> ``0.3``) and integral floats print without a fraction (``6/2`` -> ``3``).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from turngym.tools.base import tool

__all__ = ["MAX_EXPRESSION_CHARS", "CalculatorError", "calculator", "evaluate", "format_number"]

MAX_EXPRESSION_CHARS = 500
MAX_RESULT_BITS = 4096  # ~1233 decimal digits
MAX_EXPONENT = 10_000
MAX_FACTORIAL = 300
MAX_DEPTH = 60


class CalculatorError(ValueError):
    """The expression is not allowed or cannot be evaluated."""


def _check_size(x: Any) -> Any:
    if isinstance(x, int) and not isinstance(x, bool) and x.bit_length() > MAX_RESULT_BITS:
        raise CalculatorError(f"result too large (more than {MAX_RESULT_BITS} bits)")
    if isinstance(x, float) and not math.isfinite(x):
        raise CalculatorError("result is not a finite number (overflow or invalid operation)")
    return x


def _pow(a: Any, b: Any) -> Any:
    if isinstance(b, (int, float)) and abs(b) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {b!r} is too large (limit {MAX_EXPONENT})")
    big = isinstance(a, int) and isinstance(b, int) and b > 0 and a not in (0, 1, -1)
    if big and a.bit_length() * b > MAX_RESULT_BITS + 64:
        raise CalculatorError(f"result of {a}**{b} is too large (more than {MAX_RESULT_BITS} bits)")
    if isinstance(a, (int, float)) and a < 0 and isinstance(b, float) and not b.is_integer():
        raise CalculatorError("negative number raised to a fractional power (complex result)")
    try:
        return operator.pow(a, b)
    except OverflowError as e:
        raise CalculatorError(f"overflow in {a!r}**{b!r}") from e


def _mul(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > MAX_RESULT_BITS + 64:
        raise CalculatorError(f"result too large (more than {MAX_RESULT_BITS} bits)")
    return a * b


def _div(a: Any, b: Any) -> Any:
    if b == 0:
        raise CalculatorError("division by zero")
    return operator.truediv(a, b)


def _floordiv(a: Any, b: Any) -> Any:
    if b == 0:
        raise CalculatorError("division by zero")
    return operator.floordiv(a, b)


def _mod(a: Any, b: Any) -> Any:
    if b == 0:
        raise CalculatorError("modulo by zero")
    return operator.mod(a, b)


_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _mul,
    ast.Div: _div,
    ast.FloorDiv: _floordiv,
    ast.Mod: _mod,
    ast.Pow: _pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _factorial(n: Any) -> int:
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or n < 0:
        raise CalculatorError(f"factorial needs a non-negative integer, got {n!r}")
    if n > MAX_FACTORIAL:
        raise CalculatorError(f"factorial argument {n} is too large (limit {MAX_FACTORIAL})")
    return math.factorial(n)


def _round(x: Any, ndigits: Any = None) -> Any:
    if ndigits is not None and (not isinstance(ndigits, int) or abs(ndigits) > 100):
        raise CalculatorError(f"round's second argument must be an integer in [-100, 100], got {ndigits!r}")
    return round(x) if ndigits is None else round(x, ndigits)


_FUNCS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": _round,
    "min": min,
    "max": max,
    "floor": math.floor,
    "ceil": math.ceil,
    "log": math.log,
    "log2": math.log2,
    "log10": math.log10,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "hypot": math.hypot,
    "factorial": _factorial,
}
_CONSTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _eval(node: ast.AST, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise CalculatorError(f"expression nested too deeply (limit {MAX_DEPTH})")
    if isinstance(node, ast.Expression):
        return _eval(node.body, depth + 1)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculatorError(f"only numbers are allowed, got {node.value!r}")
        return _check_size(node.value)
    if isinstance(node, ast.BinOp):
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise CalculatorError(f"operator {type(node.op).__name__} is not allowed; use + - * / // % **")
        return _check_size(op(_eval(node.left, depth + 1), _eval(node.right, depth + 1)))
    if isinstance(node, ast.UnaryOp):
        uop = _UNARY.get(type(node.op))
        if uop is None:
            raise CalculatorError(f"unary operator {type(node.op).__name__} is not allowed")
        return _check_size(uop(_eval(node.operand, depth + 1)))
    if isinstance(node, ast.Name):
        if node.id in _CONSTS:
            return _CONSTS[node.id]
        raise CalculatorError(f"unknown name {node.id!r}; known constants: {', '.join(sorted(_CONSTS))}")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise CalculatorError(
                f"calling {ast.unparse(node.func)[:40]!r} is not allowed; known functions: {', '.join(sorted(_FUNCS))}"
            )
        if node.func.id not in _FUNCS:
            raise CalculatorError(f"unknown function {node.func.id!r}; known: {', '.join(sorted(_FUNCS))}")
        if node.keywords:
            raise CalculatorError("keyword arguments are not allowed")
        args = [_eval(a, depth + 1) for a in node.args]
        try:
            return _check_size(_FUNCS[node.func.id](*args))
        except CalculatorError:
            raise
        except (ValueError, TypeError, OverflowError) as e:
            raise CalculatorError(f"{node.func.id}({', '.join(map(repr, args))}): {e}") from e
    raise CalculatorError(f"{type(node).__name__} is not allowed in a calculator expression")


def format_number(x: float) -> str:
    """Print a result: ints exactly, floats with 12 significant digits, integral floats without '.0'."""
    if isinstance(x, int):
        return str(x)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return format(x, ".12g")


def evaluate(expression: str) -> int | float:
    """Evaluate an arithmetic expression safely.

    Args:
        expression: E.g. ``"2*(3+4)"`` or ``"sqrt(2)**2"``.

    Returns:
        The numeric value.

    Raises:
        CalculatorError: On syntax errors, disallowed constructs, division by zero or oversized results.
    """
    if not isinstance(expression, str):
        raise CalculatorError(f"expression must be a string, got {type(expression).__name__}")
    expr = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    if not expr:
        raise CalculatorError("empty expression")
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression too long ({len(expr)} chars, limit {MAX_EXPRESSION_CHARS})")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise CalculatorError(f"invalid syntax in {expression!r}: {e.msg}") from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise CalculatorError(f"cannot parse {expression!r}: {type(e).__name__}") from None
    try:
        return _eval(tree)
    except RecursionError:
        raise CalculatorError(f"expression nested too deeply (limit {MAX_DEPTH})") from None
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except OverflowError as e:
        raise CalculatorError(f"overflow: {e}") from None
    except TypeError as e:
        raise CalculatorError(f"invalid operands: {e}") from None


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression and return the result.

    Args:
        expression: Arithmetic with numbers, + - * / // % ** and parentheses, e.g. "(12 + 30) * 2"; functions sqrt, log, exp, sin, cos, round, min, max, abs and constants pi, e.
    """
    return format_number(evaluate(expression))
