"""Beam search speed: batched with prefix reuse vs one problem at a time without, and vs
best-of-N at the same number of generated tokens, side by side in one process.

Bundled model as policy and as judge (P(Yes) that the last step is correct), beam search with
N=8, M=2, at most 6 steps, over 8 arith problems:
  - batched: every expansion is one engine call over all beams of all problems, each
    continuing from its parent's KV state; the judge continues each step's state too;
  - unbatched: one problem at a time, and every request re-feeds its whole prefix (no KV
    state kept or reused), for the policy and the judge alike: the naive implementation;
  - best-of-N: n full samples per problem, n chosen so that the generated tokens match beam
    search's, judged once each (P(Yes) that the final answer is correct, from their states).
The LAST line is one JSON object with the figures.

    python benchmarks/bench_search.py [--problems 8] [--step-tokens 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time

from ponder.engines.hf import HFEngine
from ponder.scorers.base import ScoreItem
from ponder.scorers.judge import JudgeScorer
from ponder.strategies.base import default_render, problem_seed
from ponder.strategies.beam_search import BeamSearch
from ponder.tasks.datasets import load_task
from ponder.tasks.extract import extract_answer
from ponder.tasks.grade import is_equiv
from ponder.types import GenerateRequest, SamplingParams, SequenceState, Usage


class NoReuse:
    """The same engine, but every request starts from bare token ids: no KV state is kept,
    and none is reused."""

    def __init__(self, engine: HFEngine):
        self.engine, self.name, self.capabilities = engine, "no-reuse", engine.capabilities

    def generate(self, requests, on_token=None):
        bare = [GenerateRequest(state=SequenceState(r.state.token_ids), params=r.params)
                if r.state is not None else GenerateRequest(r.prompt, r.params) for r in requests]
        return self.engine.generate(bare)

    def score(self, requests):
        return self.engine.score(requests)

    def tokenize(self, prompt):
        return self.engine.tokenize(prompt)

    def detokenize(self, ids):
        return self.engine.detokenize(ids)


def best_of_n(engine, judge, problems, n: int, max_tokens: int, temperature: float):
    """n samples per problem in one call; the judge rates each from its own state."""
    gens = engine.generate([GenerateRequest(default_render(p), SamplingParams(
        n=n, temperature=temperature, max_tokens=max_tokens,
        seed=problem_seed(0, p.id, "bon")), keep_state=True) for p in problems])
    items, states = [], []
    for p, g in zip(problems, gens, strict=True):
        for c in g.completions:
            items.append(ScoreItem(p.question, default_render(p), c.text))
            states.append(c.state)
    ratings = iter(judge.score_last_step(items, states))
    answers, usages = [], []
    for g in gens:
        rated = [next(ratings) for _ in g.completions]
        best = max(range(len(rated)), key=lambda i: (rated[i].score, -i))
        answers.append(extract_answer(g.completions[best].text))
        usages.append(g.usage + Usage.sum(r.usage for r in rated))
    return answers, usages


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--m", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=6)
    parser.add_argument("--step-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest on a CPU shared with other jobs)")
    args = parser.parse_args()

    engine = HFEngine("smollm2-135m", dtype="float32", threads=args.threads)
    problems = load_task("arith:1", limit=args.problems, shuffle_seed=0)
    beam = BeamSearch(n=args.n, m=args.m, max_steps=args.max_steps, seed=0,
                      step_max_tokens=args.step_tokens, temperature=args.temperature)

    batched, batched_s = timed(lambda: beam.run(problems, engine, JudgeScorer(engine)))
    slow = NoReuse(engine)
    unbatched, unbatched_s = timed(
        lambda: [beam.run([p], slow, JudgeScorer(slow))[0] for p in problems])

    generated = sum(r.usage.generated_tokens for r in batched)
    path_len = [c.tokens for r in batched for c in r.candidates]
    bon_n = max(1, round(generated / len(problems) / (sum(path_len) / len(path_len))))
    (bon_answers, bon_usage), bon_s = timed(lambda: best_of_n(
        engine, JudgeScorer(engine, target="answer"), problems, bon_n,
        args.max_steps * args.step_tokens, args.temperature))

    def total(results, field):
        return sum(getattr(r.usage if hasattr(r, "usage") else r, field) for r in results)

    rows = {"beam_batched": (batched, batched_s), "beam_unbatched": (unbatched, unbatched_s),
            "bon": (bon_usage, bon_s)}
    answers = {"beam_batched": [r.answer for r in batched],
               "beam_unbatched": [r.answer for r in unbatched], "bon": bon_answers}
    print(f"beam search N={args.n} M={args.m} <= {args.max_steps} steps of <= "
          f"{args.step_tokens} tokens, judge scorer, {len(problems)} arith problems; "
          f"best-of-N with n={bon_n}")
    print(f"{'variant':16} {'wall s':>8} {'generated':>10} {'forward':>9} {'scorer':>8} "
          f"{'accuracy':>9}")
    figures = {}
    for name, (results, wall) in rows.items():
        acc = sum(is_equiv(a, p.answer) for a, p in zip(answers[name], problems, strict=True))
        figures[name] = {"wall_s": round(wall, 2),
                         "generated_tokens": total(results, "generated_tokens"),
                         "forward_tokens": total(results, "forward_tokens"),
                         "scorer_tokens": total(results, "scorer_tokens"),
                         "accuracy": acc / len(problems)}
        f = figures[name]
        print(f"{name:16} {wall:8.1f} {f['generated_tokens']:10d} {f['forward_tokens']:9d} "
              f"{f['scorer_tokens']:8d} {f['accuracy']:9.2f}")
    same = sum(a == b for a, b in zip(answers["beam_batched"], answers["beam_unbatched"],
                                      strict=True))
    speedup = unbatched_s / batched_s
    ratio = batched_s / bon_s
    print(f"batched + reuse is {speedup:.1f}x faster than per problem without reuse "
          f"({same}/{len(problems)} same answers); beam search takes {ratio:.2f}x the wall "
          f"time of best-of-{bon_n} at "
          f"{figures['bon']['generated_tokens'] / max(1, generated):.2f}x its generated tokens")
    print(json.dumps({
        "speedup_vs_unbatched": round(speedup, 2),
        "beam_over_bon_wall_ratio": round(ratio, 2),
        "forward_tokens": {k: v["forward_tokens"] for k, v in figures.items()},
        "generated_tokens": {k: v["generated_tokens"] for k, v in figures.items()},
        "scorer_tokens": {k: v["scorer_tokens"] for k, v in figures.items()},
        "wall_s": {k: v["wall_s"] for k, v in figures.items()},
        "accuracy": {k: v["accuracy"] for k, v in figures.items()},
        "bon_n": bon_n, "same_answers_batched_unbatched": same, "problems": len(problems),
        "n": args.n, "m": args.m, "max_steps": args.max_steps, "step_tokens": args.step_tokens,
    }))


if __name__ == "__main__":
    main()
