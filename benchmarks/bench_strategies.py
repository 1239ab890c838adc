"""Self-consistency batched across problems vs one problem at a time, and what it buys.

Bundled model, the first 16 `arith:1` problems, SC with n=8 samples each (cot prompt,
temperature 0.7, seed 0). The batched run hands all problems to the strategy at once (one
engine call: 128 samples decoded together; the engine's batch holds them all by default);
the baseline calls the strategy once per problem (8 samples at a time). Same seeds, so both
must give the same samples. Greedy and CoT (greedy decoding, cot prompt) run on the same problems for
the accuracy table. Prints a table; the LAST line is one JSON object.

    python benchmarks/bench_strategies.py [--problems 16] [--n 8] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import json
import os
import time

# Before torch loads OpenMP: spinning waiters crawl when another process shares the cores
# (5-10x slower on a busy 2-core box). Passive waiting keeps this benchmark's ratios steady;
# it costs a decode step 20-40% on an idle machine (see ponder/openmp.py), both sides alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ponder.engines.hf import HFEngine  # noqa: E402
from ponder.strategies.registry import make_strategy  # noqa: E402
from ponder.tasks.datasets import load_task  # noqa: E402
from ponder.tasks.grade import is_equiv  # noqa: E402
from ponder.tasks.prompts import build_prompt  # noqa: E402
from ponder.types import GenerateRequest, SamplingParams  # noqa: E402


def renderer(style: str):
    return lambda problem: build_prompt(problem, style, chat=True)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def accuracy(results, problems) -> float:
    return sum(is_equiv(r.answer, p.answer) for r, p in zip(results, problems, strict=True)) / len(problems)


def tokens(results) -> int:
    return sum(r.usage.generated_tokens for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--prompt", default="cot", help="prompt style for SC (default cot)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-batch-size", type=int, default=None,
                        help="engine batch (default problems x n: every sample in flight)")
    args = parser.parse_args()
    args.max_batch_size = args.max_batch_size or args.problems * args.n

    engine = HFEngine("smollm2-135m", dtype=args.dtype, device="cpu",
                      max_batch_size=args.max_batch_size)
    problems = load_task("arith:1", limit=args.problems)
    engine.generate([GenerateRequest("warm up", SamplingParams(n=2, max_tokens=4))])

    sc = make_strategy("self_consistency", n=args.n, temperature=0.7,
                       max_tokens=args.max_tokens, seed=0)
    render = renderer(args.prompt)
    batched, batched_s = timed(lambda: sc.run(problems, engine, render=render))
    print(f"SC@{args.n} batched across {len(problems)} problems: {batched_s:7.1f} s, "
          f"{tokens(batched) / batched_s:6.1f} generated tok/s", flush=True)
    single, single_s = timed(lambda: [sc.run([p], engine, render=render)[0] for p in problems])
    print(f"SC@{args.n} one problem at a time:        {single_s:7.1f} s, "
          f"{tokens(single) / single_s:6.1f} generated tok/s", flush=True)
    same = all([c.text for c in a.candidates] == [c.text for c in b.candidates]
               for a, b in zip(batched, single, strict=True))

    greedy_s = make_strategy("greedy", max_tokens=args.max_tokens)
    greedy, greedy_time = timed(lambda: greedy_s.run(problems, engine, render=renderer("plain")))
    cot, cot_time = timed(lambda: greedy_s.run(problems, engine, render=renderer("cot")))

    rows = [("greedy [plain]", greedy, greedy_time), ("cot (greedy) [cot]", cot, cot_time),
            (f"sc@{args.n} [{args.prompt}]", batched, batched_s)]
    print(f"\n{'method':22} {'accuracy':>9} {'gen tok/problem':>16} {'s/problem':>10}")
    for name, results, seconds in rows:
        print(f"{name:22} {accuracy(results, problems):9.3f} "
              f"{tokens(results) / len(problems):16.1f} {seconds / len(problems):10.2f}")
    speedup = single_s / batched_s
    print(f"\nbatched vs per-problem: {speedup:.2f}x (target >= 2); identical samples: {same}")
    print(json.dumps({
        "problems": len(problems), "n": args.n, "max_tokens": args.max_tokens,
        "sc_prompt": args.prompt, "dtype": args.dtype, "max_batch_size": args.max_batch_size,
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "batched_seconds": round(batched_s, 2), "per_problem_seconds": round(single_s, 2),
        "speedup_batched_vs_per_problem": round(speedup, 2),
        "identical_samples": same,
        "accuracy": {"greedy": accuracy(greedy, problems), "cot": accuracy(cot, problems),
                     f"sc@{args.n}": accuracy(batched, problems)},
        "generated_tokens_per_problem": {
            "greedy": tokens(greedy) / len(problems), "cot": tokens(cot) / len(problems),
            f"sc@{args.n}": tokens(batched) / len(problems)},
    }))


if __name__ == "__main__":
    main()
