"""How fast does the sandbox grade code, in parallel and one at a time, and does any
candidate run past its timeout?

Builds 8 candidates for each of the 164 HumanEval problems: the canonical solution as a
raw continuation and as a whole function from a fenced code block, then planted bugs
(return None, a flipped comparison, an off-by-one constant, a swapped operator, a negated
condition, a dropped statement, reversed results; problems with fewer applicable bugs
repeat return None). All 1,312 run once through the worker pool and once one at a time,
under the same limits; both runs must agree on every verdict.

    python benchmarks/bench_code.py [--timeout 3] [--workers N] [--limit 164]

The last line printed is one JSON object: speedup_parallel (serial seconds / pool
seconds), max_candidate_s (the slowest candidate of both runs, bounded by the timeout
plus start-up), verdict counts, canonical solutions passed, and bugs_passing: planted
bugs that HumanEval's own tests do not catch (an off-by-one in a constant that does not
matter, a dropped statement with no effect on the tested inputs), a property of the data.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter

from ponder.eval.metrics import mean_pass_at_k
from ponder.tasks.code import extract_code, load_humaneval
from ponder.tasks.code.grade import assemble
from ponder.tasks.code.mutate import mutants
from ponder.tasks.code.sandbox import Limits, Sandbox

PER_PROBLEM = 8


def candidates(problem) -> list[tuple[str, bool]]:
    """(completion, is it a correct solution) x 8."""
    right = [(problem.metadata["canonical_solution"], True),
             (extract_code(f"```python\n{problem.answer}\n```"), True)]
    bugs = list(mutants(problem).items())
    wrong = [(code, False) for _, code in bugs]
    filler = dict(bugs)["return_none"]
    while len(right) + len(wrong) < PER_PROBLEM:
        wrong.append((filler + f"# variant {len(wrong)}\n", False))
    return (right + wrong)[:PER_PROBLEM]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--limit", type=int, default=164)
    args = parser.parse_args()

    problems = load_humaneval()[:args.limit]
    items = [(p, code, ok) for p in problems for code, ok in candidates(p)]
    programs = [assemble(p, code) for p, code, _ in items]
    limits = Limits(timeout=args.timeout)
    pool, serial = Sandbox(limits, workers=args.workers), Sandbox(limits, workers=1)
    print(f"{len(programs)} candidates, {pool.mode} sandbox, timeout {args.timeout:g} s")

    start = time.perf_counter()
    parallel_outcomes = pool.run_many(programs)
    parallel_s = time.perf_counter() - start
    print(f"pool of {args.workers}: {parallel_s:.1f} s")
    start = time.perf_counter()
    serial_outcomes = serial.run_many(programs)
    serial_s = time.perf_counter() - start
    print(f"one at a time: {serial_s:.1f} s")

    agree = [a.status == b.status for a, b in zip(parallel_outcomes, serial_outcomes,
                                                   strict=True)]
    right = [o.passed for o, (_, _, ok) in zip(parallel_outcomes, items, strict=True) if ok]
    bugs_passing = sum(o.passed for o, (_, _, ok) in zip(parallel_outcomes, items, strict=True)
                       if not ok)
    statuses = Counter(o.status for o in parallel_outcomes)
    reasons = Counter(o.reason for o in parallel_outcomes if not o.passed)
    graded = [[o.passed for o in parallel_outcomes[i:i + PER_PROBLEM]]
              for i in range(0, len(items), PER_PROBLEM)]
    slowest = max(parallel_outcomes + serial_outcomes, key=lambda o: o.seconds)
    print("verdicts:", dict(statuses))
    print("reasons:", dict(reasons.most_common(6)))
    print(f"slowest candidate: {slowest.seconds:.2f} s ({slowest.status} {slowest.reason})")
    print(json.dumps({
        "candidates": len(programs),
        "workers": args.workers,
        "mode": pool.mode,
        "timeout_s": args.timeout,
        "serial_s": round(serial_s, 2),
        "parallel_s": round(parallel_s, 2),
        "speedup_parallel": round(serial_s / parallel_s, 2),
        "candidates_per_s_parallel": round(len(programs) / parallel_s, 1),
        "max_candidate_s": round(slowest.seconds, 3),
        "verdicts": dict(statuses),
        "canonical_passed": f"{sum(right)}/{len(right)}",
        "bugs_passing": bugs_passing,
        "runs_agree": sum(agree),
        "pass@1": round(mean_pass_at_k(graded, [1])["pass@1"], 4),
    }))


if __name__ == "__main__":
    main()
