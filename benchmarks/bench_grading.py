"""How fast is grading, and does any call hang?

Grades the 500 MATH-500 gold answers against the \\boxed{} of their own solutions, then
2,000 near misses made from the gold answers (a number off by one, a fraction flipped,
tuple elements swapped, a sign flipped, an interval end opened, a list item dropped, a
letter changed, a decimal point moved). Every call is timed one by one in this thread;
then the same pairs are graded again in parallel, cold, with is_equiv_many.

    python benchmarks/bench_grading.py [--timeout 3] [--near-misses 2000] [--seed 0]

The last line printed is one JSON object (answers_per_s, max_call_s, counts).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections import Counter

from ponder.tasks import grade as grading
from ponder.tasks.datasets import load_task
from ponder.tasks.extract import extract_boxed


def bump_number(s: str, rng: random.Random) -> str | None:
    # not the exponent of a unit (15\mbox{ cm}^2): units are ignored by design
    numbers = list(re.finditer(r"(?<!\}\^)\d+", s))
    if not numbers:
        return None
    m = rng.choice(numbers)
    value = int(m.group(0))
    new = value + 1 if value == 0 or rng.random() < 0.5 else value - 1
    return s[: m.start()] + str(new) + s[m.end() :]


def flip_fraction(s: str, rng: random.Random) -> str | None:
    m = re.search(r"\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}", s)
    if m and m.group(1) != m.group(2):
        return s[: m.start()] + f"\\frac{{{m.group(2)}}}{{{m.group(1)}}}" + s[m.end() :]
    m = re.search(r"(\d+)/(\d+)", s)
    if m and m.group(1) != m.group(2):
        return s[: m.start()] + f"{m.group(2)}/{m.group(1)}" + s[m.end() :]
    return None


def swap_items(s: str, rng: random.Random) -> str | None:
    m = re.fullmatch(r"(\\left\s*)?([(\[])(.*?)(\\right\s*)?([)\]])", s.strip())
    if not m or "," not in m.group(3) or "{" in m.group(3):
        return None
    items = [x.strip() for x in m.group(3).split(",")]
    pairs = [(i, j) for i in range(len(items)) for j in range(i + 1, len(items))]
    pairs = [(i, j) for i, j in pairs if items[i] != items[j]]
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    items[i], items[j] = items[j], items[i]
    return f"{m.group(2)}{', '.join(items)}{m.group(5)}"


def flip_sign(s: str, rng: random.Random) -> str | None:
    t = s.strip()
    if t.startswith("-"):
        return t[1:]
    if t == "0":
        return None
    return f"-{t}" if rng.random() < 0.5 or not any(c in t for c in "+,") else f"-({t})"


def open_interval(s: str, rng: random.Random) -> str | None:
    t = s.strip()
    if t.endswith("]") and "[" not in t[:-1]:
        return t[:-1] + ")"
    if t.startswith("[") and t.endswith(")"):
        return "(" + t[1:]
    if t.startswith("(") and t.endswith(")") and t.count(",") == 1 and "infty" not in t:
        return "[" + t[1:-1] + "]"  # a point (8,-2) is not the list [8,-2]
    return None


def drop_item(s: str, rng: random.Random) -> str | None:
    if "," not in s or "\\!" in s or re.fullmatch(r"\d{1,3}(,\d{3})+", s.strip()):
        return None
    head, _, tail = s.rpartition(",")
    if tail.strip().endswith((")", "]", "\\}")):  # keep the closing bracket
        return head + tail.strip()[-1:] if not tail.strip().endswith("\\}") else head + "\\}"
    return head


def change_letter(s: str, rng: random.Random) -> str | None:
    m = re.search(r"\(([A-E])\)", s)
    if m:
        other = rng.choice([c for c in "ABCDE" if c != m.group(1)])
        return s[: m.start(1)] + other + s[m.end(1) :]
    m = re.search(r"\\text\{([A-Za-z]+)\}", s)
    if m and len(m.group(1)) > 2:
        word = m.group(1)
        i = rng.randrange(len(word))
        swap = "a" if word[i].lower() != "a" else "e"
        return s[: m.start(1)] + word[:i] + swap + word[i + 1 :] + s[m.end(1) :]
    return None


def move_decimal(s: str, rng: random.Random) -> str | None:
    m = re.fullmatch(r"(-?)(\d*)\.(\d+)", s.strip())
    if m:
        whole, frac = m.group(2), m.group(3)
        return f"{m.group(1)}{whole}{frac[0]}.{frac[1:] or '0'}".replace("..", ".")
    m = re.fullmatch(r"-?\d+", s.strip())
    if m and len(s.strip().lstrip("-")) > 1:
        t = s.strip()
        return t[:-1] + "." + t[-1]
    return None


PERTURBATIONS = [
    bump_number,
    flip_fraction,
    swap_items,
    flip_sign,
    open_interval,
    drop_item,
    change_letter,
    move_decimal,
]


def near_misses(golds: list[str], count: int, seed: int) -> list[tuple[str, str, str]]:
    """(prediction, gold, perturbation name), `count` of them, deterministic for a seed."""
    rng = random.Random(seed)
    out: list[tuple[str, str, str]] = []
    while len(out) < count:
        for gold in golds:
            kinds = PERTURBATIONS[:]
            rng.shuffle(kinds)
            for kind in kinds:
                pred = kind(gold, rng)
                if pred and pred.strip() and pred != gold:
                    out.append((pred, gold, kind.__name__))
                    break
            if len(out) >= count:
                break
    return out


def timed(pairs: list[tuple[str, str]], timeout: float) -> tuple[list[grading.Grade], list[float]]:
    grades, seconds = [], []
    for pred, gold in pairs:
        start = time.perf_counter()
        grades.append(grading.grade(pred, gold, timeout=timeout))
        seconds.append(time.perf_counter() - start)
    return grades, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=grading.DEFAULT_TIMEOUT)
    parser.add_argument("--near-misses", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    problems = load_task("math500")
    gold_pairs = [(extract_boxed(p.metadata["solution"]) or "", p.answer) for p in problems]
    misses = near_misses([p.answer for p in problems], args.near_misses, args.seed)
    miss_pairs = [(pred, gold) for pred, gold, _ in misses]

    start = time.perf_counter()
    # Start a worker process (it imports sympy and math-verify): timed apart from the calls.
    assert grading.grade("x^2", "x \\cdot x", timeout=60).how == "symbolic"
    startup = time.perf_counter() - start
    grading.close_workers()  # ...and forget it and its caches, then start a fresh one
    grading.grade("y^2", "y \\cdot y", timeout=60)

    t0 = time.perf_counter()
    gold_grades, gold_secs = timed(gold_pairs, args.timeout)
    t1 = time.perf_counter()
    miss_grades, miss_secs = timed(miss_pairs, args.timeout)
    t2 = time.perf_counter()
    grading.close_workers()
    t3 = time.perf_counter()
    parallel = grading.is_equiv_many(
        [p for p, _ in gold_pairs + miss_pairs], [g for _, g in gold_pairs + miss_pairs],
        timeout=args.timeout,
    )  # fmt: skip
    t4 = time.perf_counter()

    all_grades = gold_grades + miss_grades
    all_secs = gold_secs + miss_secs
    n = len(all_grades)
    hows = Counter(g.how for g in all_grades)
    false_hits = [
        (pred, gold, kind)
        for (pred, gold, kind), g in zip(misses, miss_grades, strict=True)
        if g.correct
    ]
    by_kind = Counter(kind for _, _, kind in misses)
    gold_equal = sum(g.correct for g in gold_grades)
    slowest = sorted(zip(all_secs, gold_pairs + miss_pairs, strict=True), reverse=True)[:5]
    agree = sum(p == g.correct for p, g in zip(parallel, all_grades, strict=True))

    print(f"grading benchmark: timeout {args.timeout} s per call, worker start {startup:.2f} s")
    print(f"  MATH-500 gold vs own solution: {gold_equal}/{len(gold_pairs)} equal, "
          f"{len(gold_pairs) / (t1 - t0):,.0f} answers/s")  # fmt: skip
    print(f"  near misses: {len(false_hits)}/{len(misses)} graded equal, "
          f"{len(misses) / (t2 - t1):,.0f} answers/s; kinds: {dict(by_kind)}")  # fmt: skip
    for pred, gold, kind in false_hits[:10]:
        print(f"    equal after {kind}: {pred!r} vs {gold!r}")
    print(f"  decided by: {dict(hows)}")
    print(f"  one thread: {n / (t2 - t0):,.0f} answers/s; max call {max(all_secs):.3f} s")
    print(f"  is_equiv_many (cold, parallel): {n / (t4 - t3):,.0f} answers/s, "
          f"{agree}/{n} agree with one-by-one")  # fmt: skip
    for secs, (pred, gold) in slowest:
        print(f"    {secs:.3f} s  {pred[:40]!r} vs {gold[:40]!r}")
    print(
        json.dumps(
            {
                "answers_per_s": round(n / (t2 - t0), 1),
                "parallel_answers_per_s": round(n / (t4 - t3), 1),
                "max_call_s": round(max(all_secs), 4),
                "timeout_s": args.timeout,
                "pairs": n,
                "gold_pairs": len(gold_pairs),
                "gold_equal": gold_equal,
                "near_miss_pairs": len(misses),
                "near_miss_equal": len(false_hits),
                "timeouts": hows.get("timeout", 0),
                "symbolic_calls": hows.get("symbolic", 0) + hows.get("timeout", 0),
                "worker_start_s": round(startup, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
