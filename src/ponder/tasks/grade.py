"""Is a predicted answer equivalent to the gold one?

    is_equiv(pred, gold, timeout=3.0) -> bool
    grade(pred, gold, timeout=3.0) -> Grade (correct, how it was decided, seconds)
    is_equiv_many(preds, golds, ...) -> list[bool]   (parallel, cached)
    normalize_answer(answer) -> str                  (a key to pool answers for voting)

How a pair is decided, cheapest first:

1. Both answers are normalized (\\left/\\right, spacing commands, `$`, \\text{} units,
   degrees, percent, `x =` prefixes, \\dfrac, thousands separators, (C) -> C, numbers to
   exact fractions, bare lists sorted). Equal keys: equivalent. (tasks.normalize)
2. If both are plain numbers (or lists/tuples of them), they are compared exactly as
   rationals; a decimal with 6 or more places also matches a value within one unit of its
   last place (so 0.333333 == 1/3, 0.33 != 1/3). With a percent sign, value/100 counts too.
   Constant expressions (3\\sqrt{13}, \\frac{\\pi}{2}) are evaluated and compared as
   floats. (tasks.normalize, tasks.evaluate)
3. Otherwise math-verify (sympy) decides, in a worker process with a deadline: sympy can
   loop for minutes or sit in C code no signal interrupts, so the only sure stop is to
   kill the process. Workers are started on first use (about 0.5 s), reused, and
   replaced after a kill. Answers sympy must not see (very long, towers of powers, huge
   factorials) are decided by steps 1-2 only. (tasks.grade_workers)

Nothing here raises on bad input: None, bytes, junk or 100 kB strings grade False.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ponder.tasks import grade_workers
from ponder.tasks.evaluate import MAX_SYMBOLIC_CHARS
from ponder.tasks.normalize import CHOICES, as_text, compare_numbers, normalize, normalize_answer

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_SYMBOLIC_CHARS",
    "Grade",
    "close_workers",
    "grade",
    "is_equiv",
    "is_equiv_many",
    "normalize_answer",
]

DEFAULT_TIMEOUT = 3.0


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
        p, g = as_text(pred), as_text(gold)
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
    pairs = [(as_text(p) or "", as_text(g) or "") for p, g in zip(preds, golds, strict=True)]
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
    grade_workers.close()


def _decide(pred: str, gold: str, timeout: float) -> tuple[bool, str]:
    np_, ng = normalize(pred), normalize(gold)
    if np_.base and ng.base and np_.base != ng.base:
        return False, "string"  # 4210_4 vs 4210_5: the digits agree, the bases do not
    if np_.key and np_.key == ng.key:
        return True, "string"
    numeric = compare_numbers(np_, ng)
    if numeric is not None:
        return numeric, "numeric"
    if ng.key in CHOICES:  # multiple choice: only the letter counts
        return False, "string"
    if _unsafe(pred) or _unsafe(gold):
        return False, "unsafe"
    verdict = grade_workers.symbolic_equal(pred, gold, timeout)
    if verdict is None:
        return False, "timeout"
    return verdict, "symbolic"


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
