"""Answers as canonical keys and as numbers: the cheap steps of grading (see grade.py).

    normalize_answer("\\dfrac12") -> "1/2"         (the key answers are pooled by)
    normalize(raw) -> Norm                          (the key, plus the number(s) it holds)
    compare_numbers(a, b) -> bool | None            (None: not numbers, sympy decides)

normalize strips what does not change an answer (\\left/\\right, spacing commands, `$`,
\\text{} units, degrees, percent, `x =` prefixes, thousands separators), rewrites
\\dfrac12 as \\frac{1}{2} and (C) as C, turns numbers into exact fractions and sorts bare
lists. Constant expressions (3\\sqrt{13}) also get a value, from tasks.evaluate.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from ponder.tasks.evaluate import evaluate_constant
from ponder.tasks.extract import extract_boxed

# A value: exact (Fraction) for numbers as written, a float for evaluated constant
# expressions like 3\\sqrt{13} or \\frac{\\pi}{2}; plus decimal places if written as a decimal.
Number = tuple[Fraction | float, int | None]


@dataclass(frozen=True)
class Norm:
    """An answer normalized: its key, whether it had a percent sign, and its value(s)."""

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
        s = as_text(answer)
        return normalize(s).key if s is not None else ""
    except Exception:
        return ""


CHOICES = frozenset("ABCDE")  # multiple-choice letters
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


def normalize(raw: str) -> Norm:
    """The key of `raw` and the number(s) it holds (see the module docstring)."""
    s = raw.strip()
    if len(s) > 20_000:  # not an answer anyone wrote on purpose; keep it cheap
        return Norm(s, False)
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
        return Norm((choice.group(1) or choice.group(2)).upper(), percent)
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


def _canonical_numbers(s: str, percent: bool) -> Norm:
    """A number becomes its exact fraction; a bare list of numbers is sorted (it is a set
    of solutions); numbers inside (...) [...] \\{...\\} become exact fractions in place.
    Constant expressions (3\\sqrt{13}, \\frac{\\pi}{2}) keep their text and get a value."""
    value = _parse_number(s)
    if value is not None:
        return Norm(_fraction_key(value[0]), percent, number=value)  # type: ignore[arg-type]
    seq = _split_sequence(s)
    if seq is None:
        return Norm(s, percent, number=_as_value(evaluate_constant(s)))
    left, items, right = seq
    values: list[Number | None] = []
    texts: list[str] = []
    for item in items:
        exact = _parse_number(item)
        if exact is not None:
            values.append(exact)  # type: ignore[arg-type]
            texts.append(_fraction_key(exact[0]))
        else:
            values.append(_as_value(evaluate_constant(item)))
            texts.append(item)
    if any(v is None for v in values):
        return Norm(left + ",".join(texts) + right, percent)
    pairs = list(zip(values, texts, strict=True))
    if left in ("", "\\{"):  # unordered
        pairs.sort(key=lambda vt: (float(vt[0][0]), vt[1]))  # type: ignore[index]
    key = left + ",".join(t for _, t in pairs) + right
    return Norm(key, percent, numbers=(left, tuple(v for v, _ in pairs), right))  # type: ignore[misc]


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
    if not _depth_ok(body):
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


def compare_numbers(a: Norm, b: Norm) -> bool | None:
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


def as_text(value: Any) -> str | None:
    """An answer given as text, bytes or a number, as text; None for anything else."""
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
