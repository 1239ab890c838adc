"""A small evaluator for constant LaTeX expressions: numbers, + - * / ^, \\frac, \\sqrt,
\\pi, \\infty and implicit products.

    evaluate_constant("3\\sqrt{13}") -> 10.816...     evaluate_constant("x+1") -> None

Most near misses (3\\sqrt{13} vs 3\\sqrt{14}) are decided with it in microseconds instead
of by sympy. Anything it does not know (variables, functions, huge powers) gives None.
"""

from __future__ import annotations

import math
import re

# Longer answers than this are never evaluated here, nor given to sympy (see grade.py):
# they are compared as strings and plain numbers only.
MAX_SYMBOLIC_CHARS = 400

_TOKEN = re.compile(r"\\[A-Za-z]+|\d+(?:\.\d*)?|\.\d+|\S")
_ATOM_START = re.compile(r"\d|\.\d|[{(]|\\(?:frac|sqrt|pi|infty)$")


class _NotConstant(Exception):
    pass


def evaluate_constant(s: str) -> float | None:
    """The value of a constant expression as a float; None for anything else."""
    if not s or len(s) > MAX_SYMBOLIC_CHARS or not re.search(r"\d|\\pi|\\infty", s):
        return None
    try:
        parser = _Evaluator(_TOKEN.findall(s))
        value = parser.expr()
        if parser.i != len(parser.tokens):
            return None
    except (_NotConstant, ArithmeticError, ValueError, TypeError, RecursionError):
        return None
    if isinstance(value, complex) or math.isnan(value):
        return None
    return float(value)


class _Evaluator:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.i = tokens, 0

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise _NotConstant
        self.i += 1
        return token

    def expect(self, token: str) -> None:
        if self.take() != token:
            raise _NotConstant

    def expr(self) -> float:
        value = self.term()
        while self.peek() in ("+", "-"):
            op, rhs = self.take(), self.term()
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self) -> float:
        value = self.unary()
        while True:
            token = self.peek()
            if token in ("*", "\\cdot", "\\times"):
                self.take()
                value *= self.unary()
            elif token in ("/", "\\div"):
                self.take()
                value /= self.unary()
            elif token is not None and _ATOM_START.match(token):
                value *= self.power()  # implicit product: 3\\sqrt{2}, 2\\pi
            else:
                return value

    def unary(self) -> float:
        if self.peek() == "-":
            self.take()
            return -self.unary()
        if self.peek() == "+":
            self.take()
            return self.unary()
        return self.power()

    def power(self) -> float:
        base = self.atom()
        if self.peek() != "^":
            return base
        self.take()
        sign = 1.0
        if self.peek() == "-":
            self.take()
            sign = -1.0
        exponent = sign * self.atom(single_digit=True)
        if abs(exponent) > 1000 or abs(base) > 1e100:
            raise _NotConstant  # leave huge powers alone
        result = base**exponent
        if isinstance(result, complex):
            raise _NotConstant
        return result

    def atom(self, single_digit: bool = False) -> float:
        token = self.take()
        if token[0].isdigit() or token[0] == ".":
            if single_digit and len(token) > 1 and token.isdigit():
                self.i -= 1  # x^23 in LaTeX is x^2 times 3
                self.tokens[self.i] = token[1:]
                return float(token[0])
            return float(token)
        if token in ("{", "("):
            value = self.expr()
            self.expect("}" if token == "{" else ")")
            return value
        if token == "\\frac":
            numerator = self.atom(single_digit=True)
            return numerator / self.atom(single_digit=True)
        if token == "\\sqrt":
            degree = 2.0
            if self.peek() == "[":
                self.take()
                degree = self.expr()
                self.expect("]")
            radicand = self.atom(single_digit=True)
            if radicand < 0 or degree == 0:
                raise _NotConstant
            return radicand ** (1.0 / degree)
        if token == "\\pi":
            return math.pi
        if token == "\\infty":
            return math.inf
        raise _NotConstant
