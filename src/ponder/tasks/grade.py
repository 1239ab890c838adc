"""Is a predicted answer equivalent to the gold one?

    is_equiv(pred, gold, timeout=3.0) -> bool
    grade(pred, gold, timeout=3.0) -> Grade (correct, how it was decided, seconds)
    is_equiv_many(preds, golds, ...) -> list[bool]   (parallel, cached)
    normalize_answer(answer) -> str                  (a key to pool answers for voting)

How a pair is decided, cheapest first:

1. Both answers are normalized (\\left/\\right, spacing commands, `$`, \\text{} units,
   degrees, percent, `x =` prefixes, \\dfrac, thousands separators, (C) -> C, numbers to
   exact fractions, bare lists sorted). Equal keys: equivalent.
2. If both are plain numbers (or lists/tuples of them), they are compared exactly as
   rationals; a decimal with 6 or more places also matches a value within one unit of its
   last place (so 0.333333 == 1/3, 0.33 != 1/3). With a percent sign, value/100 counts too.
3. Otherwise math-verify (sympy) decides, in a worker process with a deadline: sympy can
   loop for minutes or sit in C code no signal interrupts, so the only sure stop is to
   kill the process. Workers are started on first use (about 0.5 s), reused, and
   replaced after a kill. Answers sympy must not see (very long, towers of powers, huge
   factorials) are decided by steps 1-2 only.

Nothing here raises on bad input: None, bytes, junk or 100 kB strings grade False.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import lru_cache
from typing import Any

from ponder.tasks.extract import extract_boxed

DEFAULT_TIMEOUT = 3.0
# Longer answers than this are compared as strings/numbers only, never given to sympy.
MAX_SYMBOLIC_CHARS = 400
_STARTUP_TIMEOUT = 120.0  # a worker's import of sympy and math-verify (slow disks, busy CPUs)


@dataclass(frozen=True)
class Grade:
    """The verdict on one (pred, gold) pair.

    how: "empty" (no prediction), "string" (equal normalized keys), "numeric" (decided
        as numbers), "symbolic" (math-verify), "timeout" (math-verify ran out of time:
        graded False), "unsafe" (not given to sympy: graded on steps 1-2 only), "error".
    """

    correct: bool
    how: str
    seconds: float


def is_equiv(pred: Any, gold: Any, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """True when `pred` is mathematically the same answer as `gold`; False otherwise,
    including on any malformed input or when deciding takes longer than `timeout` s."""
    return grade(pred, gold, timeout).correct


def grade(pred: Any, gold: Any, timeout: float = DEFAULT_TIMEOUT) -> Grade:
    """Like is_equiv, and says how it decided and how long it took."""
    start = time.perf_counter()
    try:
        p, g = _as_text(pred), _as_text(gold)
        if p is None or g is None or not p.strip() or not g.strip():
            return Grade(False, "empty", time.perf_counter() - start)
        correct, how = _decide(p, g, float(timeout))
    except Exception:  # a grader must never take a run down
        correct, how = False, "error"
    return Grade(correct, how, time.perf_counter() - start)


def is_equiv_many(
    preds: Sequence[Any],
    golds: Sequence[Any],
    timeout: float = DEFAULT_TIMEOUT,
    workers: int | None = None,
) -> list[bool]:
    """is_equiv over pairs, in parallel (one grading process per thread), each pair
    decided once however often it repeats. workers defaults to the CPU count."""
    if len(preds) != len(golds):
        raise ValueError(f"got {len(preds)} predictions but {len(golds)} gold answers")
    pairs = [(_as_text(p) or "", _as_text(g) or "") for p, g in zip(preds, golds, strict=True)]
    unique = list(dict.fromkeys(pairs))
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(unique) or 1))
    if n_workers == 1:
        verdicts = [is_equiv(p, g, timeout) for p, g in unique]
    else:
        with ThreadPoolExecutor(n_workers, thread_name_prefix="ponder-grade") as pool:
            verdicts = list(pool.map(lambda pg: is_equiv(pg[0], pg[1], timeout), unique))
    table = dict(zip(unique, verdicts, strict=True))
    return [table[pair] for pair in pairs]


def close_workers() -> None:
    """Stop the grading worker processes (they also stop when Python exits)."""
    _POOL.close()


# --------------------------------------------------------------------------- deciding


def _decide(pred: str, gold: str, timeout: float) -> tuple[bool, str]:
    np_, ng = _normalize(pred), _normalize(gold)
    if np_.base and ng.base and np_.base != ng.base:
        return False, "string"  # 4210_4 vs 4210_5: the digits agree, the bases do not
    if np_.key and np_.key == ng.key:
        return True, "string"
    numeric = _compare_numbers(np_, ng)
    if numeric is not None:
        return numeric, "numeric"
    if ng.key in _CHOICES:  # multiple choice: only the letter counts
        return False, "string"
    if _unsafe(pred) or _unsafe(gold):
        return False, "unsafe"
    verdict = _symbolic_equal(pred, gold, timeout)
    if verdict is None:
        return False, "timeout"
    return verdict, "symbolic"


@lru_cache(maxsize=65536)
def _symbolic_equal(pred: str, gold: str, timeout: float) -> bool | None:
    """math-verify's verdict, None on timeout. Cached: voting grades the same strings often."""
    return _POOL.run(pred, gold, timeout)


_POWER_TOWER = re.compile(r"\^\s*\{?[^{}$]{0,40}\^|\*\*[^*]{0,40}\*\*")
_BIG_EXPONENT = re.compile(r"(?:\^|\*\*)\s*\{?\s*\(?\s*[-+]?\d{5,}")
_BIG_FACTORIAL = re.compile(r"\d{4,}\s*\}?\s*!|!\s*!")


def _unsafe(s: str) -> bool:
    """Inputs that can make sympy run for minutes or eat memory: keep them away from it."""
    return (
        len(s) > MAX_SYMBOLIC_CHARS
        or "\x00" in s
        or bool(_POWER_TOWER.search(s) or _BIG_EXPONENT.search(s) or _BIG_FACTORIAL.search(s))
    )


# --------------------------------------------------------------------------- normalizing


# A value: exact (Fraction) for numbers as written, a float for evaluated constant
# expressions like 3\\sqrt{13} or \\frac{\\pi}{2}; plus decimal places if written as a decimal.
Number = tuple[Fraction | float, int | None]


@dataclass(frozen=True)
class _Norm:
    key: str
    percent: bool
    number: Number | None = None  # the answer is one number or constant expression
    # the answer is a flat list of those: (opening bracket, values, closing bracket)
    numbers: tuple[str, tuple[Number, ...], str] | None = None
    base: str | None = None  # 52_8 -> "8"


def normalize_answer(answer: Any) -> str:
    """A canonical string for an answer, equal for answers that are plainly the same:
    "1/2", "\\frac{1}{2}", "\\dfrac12", "0.5" and "$0.5$" all give "1/2"; "10,\\!080" and
    "10080" give "10080"; "\\text{(C)}" gives "C"; "x = 5" gives "5"; "864 \\mbox{ inches}^2"
    gives "864". Used to pool answers before voting; "" for no answer."""
    try:
        s = _as_text(answer)
        return _normalize(s).key if s is not None else ""
    except Exception:
        return ""


_CHOICES = frozenset("ABCDE")
_TEXT_CMD = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|textup|mbox|mathrm|mathbf|mathit|operatorname)"
    r"\s*\{([^{}]*)\}"
)
_TRAILING_UNIT_CMD = re.compile(
    r"\\(?:text|textrm|textnormal|textup|mbox|mathrm)\s*\{\s*([A-Za-z][A-Za-z .]*)\}"
    r"(?:\s*\^\s*\{?\s*[23]\s*\}?)?\s*$"
)
_TRAILING_UNIT_WORDS = re.compile(
    r"(?<![\\A-Za-z])\s+([A-Za-z]{2,}(?:\s+[A-Za-z]+)*)(?:\s*\^\s*\{?\s*[23]\s*\}?)?\s*$"
)
_NOT_UNITS = frozenset({"pi", "and", "or", "i", "e"})
_SPACING = re.compile(r"\\[,;:! ]|\\q?quad|\\displaystyle|\\(?:big|Big|bigg|Bigg)[lr]?|~")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|°")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)\s*(?:\.|(?![A-Za-z]))")
_ASSIGNMENT = re.compile(r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\w+\}?)?\s*(?:=|\\in(?![A-Za-z]))\s*")
_BASE_SUBSCRIPT = re.compile(r"^(\d+)_\{?(\d+)\}?$")
_FRAC_FIXES = (
    (re.compile(r"\\[dt]?frac\s*([0-9A-Za-z])\s*([0-9A-Za-z])"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\[dt]?frac\s*(\{[^{}]*\})\s*([0-9A-Za-z])"), r"\\frac\1{\2}"),
    (re.compile(r"\\[dt]?frac\s*([0-9A-Za-z])\s*\{"), r"\\frac{\1}{"),
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\sqrt\s*([0-9A-Za-z])"), r"\\sqrt{\1}"),
)
_CHOICE = re.compile(r"^\(([A-Ea-e])\)(?:\s.*)?$|^([A-E])\)?$", re.DOTALL)
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def _normalize(raw: str) -> _Norm:
    s = raw.strip()
    if len(s) > 20_000:  # not an answer anyone wrote on purpose; keep it cheap
        return _Norm(s, False)
    if s.startswith(("\\boxed", "\\fbox")):
        s = extract_boxed(s) or s
    s = s.strip()
    for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right):
            s = s[2:-2]
    s = s.replace("\\$", "").replace("$", "")
    percent = "%" in s
    s = s.replace("\\%", "").replace("%", "")
    s = _SPACING.sub(" ", s)
    s = _LEFT_RIGHT.sub("", s)
    s = _DEGREES.sub("", s)
    s = s.strip().rstrip(".").strip()
    # Units: a trailing \text{ cm}^2 or plain "dollars" after a number goes away.
    unit = _TRAILING_UNIT_CMD.search(s)
    if unit and _only_math(s[: unit.start()]):
        s = s[: unit.start()].strip()
    s = _unwrap_text(s)
    words = _TRAILING_UNIT_WORDS.search(s)
    if words and words.group(1).lower() not in _NOT_UNITS and _only_math(s[: words.start()]):
        s = s[: words.start()].strip()
    s = _ASSIGNMENT.sub("", s, count=1) if s.count("=") <= 1 else s
    choice = _CHOICE.match(s.strip())
    if choice:
        return _Norm((choice.group(1) or choice.group(2)).upper(), percent)
    for pattern, repl in _FRAC_FIXES:
        s = pattern.sub(repl, s)
    s = re.sub(r"\s+", "", s)
    if s and re.fullmatch(r"[A-Za-z]+", s) and len(s) > 1:
        s = s.lower()  # a word answer: "East" == "east"
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    base = _BASE_SUBSCRIPT.match(s)
    if base:  # 52_8: the digits are the answer; a base given on both sides must agree
        s = base.group(1)
    s = s.lstrip("+")
    norm = _canonical_numbers(s, percent)
    return replace(norm, base=base.group(2)) if base else norm


def _only_math(s: str) -> bool:
    """True when s has a digit and no letters outside LaTeX commands (e.g. 3\\sqrt{2})."""
    if not re.search(r"\d", s):
        return False
    return not re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", s))


def _unwrap_text(s: str) -> str:
    for _ in range(10):  # nested \text{\textbf{...}}: innermost first
        t = _TEXT_CMD.sub(lambda m: m.group(1), s)
        if t == s:
            break
        s = t
    return s


def _canonical_numbers(s: str, percent: bool) -> _Norm:
    """A number becomes its exact fraction; a bare list of numbers is sorted (it is a set
    of solutions); numbers inside (...) [...] \\{...\\} become exact fractions in place.
    Constant expressions (3\\sqrt{13}, \\frac{\\pi}{2}) keep their text and get a value."""
    value = _parse_number(s)
    if value is not None:
        return _Norm(_fraction_key(value[0]), percent, number=value)  # type: ignore[arg-type]
    seq = _split_sequence(s)
    if seq is None:
        real = _evaluate(s)
        return _Norm(s, percent, number=None if real is None else (real, None))
    left, items, right = seq
    values: list[Number | None] = []
    texts: list[str] = []
    for item in items:
        exact = _parse_number(item)
        if exact is not None:
            values.append(exact)  # type: ignore[arg-type]
            texts.append(_fraction_key(exact[0]))
        else:
            values.append(_as_value(_evaluate(item)))
            texts.append(item)
    if any(v is None for v in values):
        return _Norm(left + ",".join(texts) + right, percent)
    pairs = list(zip(values, texts, strict=True))
    if left in ("", "\\{"):  # unordered
        pairs.sort(key=lambda vt: (float(vt[0][0]), vt[1]))  # type: ignore[index]
    key = left + ",".join(t for _, t in pairs) + right
    return _Norm(key, percent, numbers=(left, tuple(v for v, _ in pairs), right))  # type: ignore[misc]


def _as_value(real: float | None) -> Number | None:
    return None if real is None else (real, None)


def _fraction_key(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _split_sequence(s: str) -> tuple[str, list[str], str] | None:
    """("(", ["1", "2"], "]") for "(1,2]"; None when s is not a flat comma list."""
    left = right = ""
    body = s
    for lb in ("\\{", "(", "["):
        if body.startswith(lb):
            for rb in ("\\}", ")", "]"):
                if body.endswith(rb) and len(body) >= len(lb) + len(rb):
                    left, right, body = lb, rb, body[len(lb) : len(body) - len(rb)]
                    break
            break
    if "," not in body or any(c in body for c in "()[]") or "\\{" in body:
        return None
    if _depth_ok(body) is False:
        return None
    items = _split_top_level(body)
    if len(items) < 2 or any(not item for item in items):
        return None
    return left, items, right


def _depth_ok(s: str) -> bool:
    depth = 0
    for c in s:
        depth += (c == "{") - (c == "}")
        if depth < 0:
            return False
    return depth == 0


def _split_top_level(s: str) -> list[str]:
    items, depth, current = [], 0, []
    for c in s:
        if c == "," and depth == 0:
            items.append("".join(current))
            current = []
            continue
        depth += (c == "{") - (c == "}")
        current.append(c)
    items.append("".join(current))
    return items


_INT = r"[-+]?\d+"
_DEC = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)"
_NUM_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"({_DEC})"), "decimal"),
    (re.compile(rf"({_INT})/({_INT})"), "slash"),
    (re.compile(rf"([-+]?)\\frac\{{({_INT})\}}\{{({_INT})\}}"), "frac"),
    (re.compile(rf"({_INT})\\frac\{{(\d+)\}}\{{(\d+)\}}"), "mixed"),
    (re.compile(rf"({_DEC})[eE]({_INT})"), "sci"),
    (re.compile(rf"({_DEC})(?:\\times|\\cdot|\*)10\^\{{?({_INT})\}}?"), "sci"),
)


def _parse_number(s: str) -> Number | None:
    """(exact value, decimal places if written as a decimal else None) for a plain number:
    42, -0.5, .35, 3/4, \\frac{3}{4}, -\\frac{3}{4}, 1\\frac{4}{5}, 3e5, 3\\times10^{5}."""
    if not s or len(s) > 200:
        return None
    for pattern, kind in _NUM_PATTERNS:
        m = pattern.fullmatch(s)
        if not m:
            continue
        if kind == "decimal":
            text = m.group(1)
            places = len(text.split(".", 1)[1]) if "." in text else None
            return Fraction(text.rstrip(".") if text.endswith(".") else text), places
        if kind == "slash":
            den = int(m.group(2))
            return (Fraction(int(m.group(1)), den), None) if den else None
        if kind == "frac":
            den = int(m.group(3))
            if not den:
                return None
            value = Fraction(int(m.group(2)), den)
            return (-value if m.group(1) == "-" else value), None
        if kind == "mixed":
            whole, num, den = int(m.group(1)), int(m.group(2)), int(m.group(3))
            if not den or num >= den:  # 2\frac{5}{3} is a product, not a mixed number
                return None
            part = Fraction(num, den)
            return (Fraction(whole) - part if s.startswith("-") else whole + part), None
        if kind == "sci":
            exponent = int(m.group(2))
            if abs(exponent) > 300:
                return None
            mantissa = Fraction(m.group(1))
            return mantissa * Fraction(10) ** exponent, None
    return None


def _compare_numbers(a: _Norm, b: _Norm) -> bool | None:
    """A verdict when both sides are numbers / constant expressions or flat lists of them;
    None when math-verify must decide."""
    x, y = a.number, b.number
    if x is not None and y is not None:
        candidates = [y]
        if a.percent != b.percent:  # 50% vs 0.5
            candidates.append((y[0] / 100 if b.percent else y[0] * 100, y[1]))
        return any(_close(x, c) for c in candidates)
    if a.numbers is None or b.numbers is None:
        return None
    (lx, vx, rx), (ly, vy, ry) = a.numbers, b.numbers
    unordered_x, unordered_y = lx in ("", "\\{"), ly in ("", "\\{")
    if unordered_x != unordered_y:
        return None  # 1,2 vs (1,2): let math-verify judge
    if len(vx) != len(vy):
        return False
    if not unordered_x and (lx, rx) != (ly, ry) and len(vx) == 2:
        return False  # intervals: (3,4] vs (3,4); a point (1,2) vs an interval [1,2]
    return all(_close(p, q) for p, q in zip(vx, vy, strict=True))


def _close(x: Number, y: Number) -> bool:
    if x[0] == y[0]:
        return True
    if isinstance(x[0], float) or isinstance(y[0], float):
        fx, fy = float(x[0]), float(y[0])
        if math.isinf(fx) or math.isinf(fy):
            return False  # equal infinities were caught above
        places = max(p for p in (x[1], y[1], -1) if p is not None)
        if places >= 6 and abs(fx - fy) < 10.0**-places + 1e-12 * max(1.0, abs(fx)):
            return True  # 1.732051 for \\sqrt{3}
        # Two evaluated expressions: equal up to float rounding.
        return places < 0 and abs(fx - fy) <= 1e-9 * max(1.0, abs(fx), abs(fy))
    # A decimal written to 6+ places stands for any value within one unit of its last place.
    places = max(p for p in (x[1], y[1], -1) if p is not None)
    return places >= 6 and abs(x[0] - y[0]) < Fraction(1, 10**places)


# A small evaluator for constant LaTeX expressions (numbers, + - * / ^, \\frac, \\sqrt,
# \\pi, \\infty, implicit products): most near misses (3\\sqrt{13} vs 3\\sqrt{14}) are
# decided here in microseconds instead of by sympy. Anything else returns None.
_TOKEN = re.compile(r"\\[A-Za-z]+|\d+(?:\.\d*)?|\.\d+|\S")
_ATOM_START = re.compile(r"\d|\.\d|[{(]|\\(?:frac|sqrt|pi|infty)$")


class _NotConstant(Exception):
    pass


def _evaluate(s: str) -> float | None:
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


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


# --------------------------------------------------------------------------- math-verify


def _math_verify_equal(pred: str, gold: str) -> bool:
    """math-verify's verdict with its own signal timeouts off (we enforce ours)."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    g = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
    p = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
    if not g or not p:
        return False
    return bool(verify(g, p, timeout_seconds=None))


def _worker_main() -> None:
    """A grading process: reads [pred, gold] JSON lines on stdin, answers "1"/"0" lines.

    Started as `python -c` rather than through multiprocessing, so the user's __main__ is
    never re-imported (no `if __name__ == "__main__"` guard needed in scripts)."""
    import json
    import sys

    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    with contextlib.suppress(Exception):  # cap memory: 2^(10^10) should fail, not swap
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = 4 << 30
        if soft == resource.RLIM_INFINITY or soft > cap:
            resource.setrlimit(resource.RLIMIT_AS, (cap, min(hard, cap) if hard > 0 else cap))
    with contextlib.suppress(Exception):
        _math_verify_equal("1", "1")  # import and warm up before saying ready
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            pred, gold = json.loads(line)
            answer = _math_verify_equal(str(pred), str(gold))
        except BaseException:  # MemoryError, RecursionError, sympy bugs: not equal
            answer = False
        out.write("1\n" if answer else "0\n")
        out.flush()


class _Worker:
    """One grading subprocess; a reader thread turns its stdout lines into a queue so that
    waiting for an answer can have a deadline on every platform."""

    def __init__(self) -> None:
        import ponder

        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(ponder.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from ponder.tasks.grade import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
        )
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True, name="ponder-grade-reader").start()
        self.ready = False

    def _read(self) -> None:
        with contextlib.suppress(Exception):
            for line in self.proc.stdout:  # type: ignore[union-attr]
                self.lines.put(line.strip())
        self.lines.put("eof")

    def wait_ready(self) -> bool:
        if not self.ready:
            with contextlib.suppress(queue.Empty):
                self.ready = self.lines.get(timeout=_STARTUP_TIMEOUT) == "ready"
        return self.ready

    def ask(self, pred: str, gold: str, timeout: float) -> bool | None:
        self.proc.stdin.write(json.dumps([pred, gold]) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        try:
            reply = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        if reply not in ("0", "1"):  # the process died
            raise RuntimeError("grading worker exited")
        return reply == "1"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()
            self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(Exception):
                stream.close()  # type: ignore[union-attr]


class _Pool:
    """Grading processes shared by all threads: each call borrows one, a timeout kills it.

    Falls back to grading in this process (with a SIGALRM timer in the main thread, none
    elsewhere) if worker processes cannot be started here.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._pid = os.getpid()
        self._broken = False
        self._slots = threading.BoundedSemaphore(max(2, os.cpu_count() or 1))
        self._registered = False

    def run(self, pred: str, gold: str, timeout: float) -> bool | None:
        if self._broken:
            return _run_in_process(_math_verify_equal, pred, gold, timeout)
        with self._slots:
            worker = self._borrow()
            if worker is None:
                return _run_in_process(_math_verify_equal, pred, gold, timeout)
            try:
                verdict = worker.ask(pred, gold, timeout)
            except Exception:  # the worker died (e.g. out of memory): not equal
                worker.close()
                return False
            if verdict is None:
                worker.close()  # stuck in sympy: killing it is the only sure stop
                # Start the replacement now, while we report; if that fails the next call
                # starts one (or falls back to this process).
                with contextlib.suppress(Exception):
                    self._give_back(_Worker())
            else:
                self._give_back(worker)
            return verdict

    def _borrow(self) -> _Worker | None:
        with self._lock:
            if self._pid != os.getpid():  # we were forked: those workers are not ours
                self._idle, self._pid = [], os.getpid()
            worker = self._idle.pop() if self._idle else None
            if not self._registered:
                atexit.register(self.close)
                self._registered = True
        if worker is None:
            try:
                worker = _Worker()
            except Exception:
                self._broken = True
                return None
        if not worker.wait_ready():
            worker.close()
            self._broken = True
            return None
        return worker

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.close()
        _symbolic_equal.cache_clear()


class _Timeout(Exception):
    pass


def _run_in_process(fn: Callable[[str, str], bool], pred: str, gold: str, timeout: float):
    """Fallback without worker processes: a SIGALRM timer where signals work."""
    usable = (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    )
    if not usable:
        try:
            return fn(pred, gold)
        except Exception:
            return False

    def on_alarm(signum: int, frame: Any) -> None:
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return fn(pred, gold)
    except _Timeout:
        return None
    except Exception:
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_POOL = _Pool()
