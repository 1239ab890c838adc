"""The 2025-26 selection and aggregation methods against self-consistency, and answer probing
against full chain of thought, on the bundled model, side by side in one process.

Tasks (the same problems for every method): arith level 1 with the few-shot prompt
(--arith problems) and GSM8K (--gsm8k problems, the boxed prompt). Methods, n=8 samples at
temperature 0.7 where they sample:
  sc@8             self-consistency (majority vote)
  self_certainty   best-of-8 by self-certainty (Kang et al., 2025)
  genselect@8      the model picks among the 8 candidates (--passes selection passes)
  rsa              recursive self-aggregation, N=8, K=3, T=2
  tot              Tree of Thoughts, BFS with breadth 3, the model valuing its own steps
  cot / probe      one greedy chain of thought, in full and with answer probing
                   (probe_exit: probe every --probe-every tokens, stop when the last
                   --probe-agree probes agree)
For each: accuracy with a 95% bootstrap CI, and generated and total tokens per problem
(total = forward tokens through the policy + scorer tokens). Every engine call goes through a
counter, and each method's summed Result.usage is checked against what the engine counted.
probe_token_saving is probing's saving in every token past the prompt (trace, probe text fed
and probe answers), against full CoT: 1 - (probe total - prompt) / (CoT total - prompt);
probe_generated_token_saving counts generated tokens only (probe text fed is not in it). Both
per task; the top-level probe_token_saving pools every problem's tokens over the tasks.
The LAST line is one JSON object with the figures.

    python benchmarks/bench_aggregation.py [--arith 32] [--gsm8k 16] [--passes 2]
        [--methods sc@8,genselect@8,...] [--offset 32]
"""

from __future__ import annotations

import argparse
import json
import time

from ponder.engines.hf import HFEngine
from ponder.eval.metrics import accuracy
from ponder.strategies.registry import make_strategy
from ponder.tasks.datasets import load_task
from ponder.tasks.grade import is_equiv
from ponder.tasks.prompts import build_prompt
from ponder.types import Usage


class Counting:
    """The engine, with every Usage it hands out summed: what the methods really spent."""

    def __init__(self, engine):
        self._engine, self.spent = engine, Usage()

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, requests, *args, **kwargs):
        out = self._engine.generate(requests, *args, **kwargs)
        for g in out:
            self.spent = self.spent + g.usage
        return out

    def score(self, requests):
        out = self._engine.score(requests)
        for s in out:
            self.spent = self.spent + s.usage
        return out


def methods(args, max_tokens: int) -> dict:
    sampled = {"n": 8, "temperature": 0.7, "max_tokens": max_tokens, "seed": 0}
    return {
        "sc@8": make_strategy("self_consistency", **sampled),
        "self_certainty": make_strategy("self_certainty", **sampled),
        "genselect@8": make_strategy("genselect", **sampled, passes=args.passes,
                                     select_tokens=args.select_tokens),
        "rsa": make_strategy("rsa", **sampled, k=3, steps=2),
        "tot": make_strategy("tot", n=3, breadth=3, max_tokens=args.step_tokens,
                             temperature=0.7, max_steps=max(1, max_tokens // args.step_tokens),
                             seed=0),
        "cot": make_strategy("greedy", max_tokens=max_tokens),
        "probe": make_strategy("probe_exit", n=1, temperature=0.0, max_tokens=max_tokens,
                               probe_every=args.probe_every, agree=args.probe_agree),
    }


def run_task(engine, task: str, problems, style: str, max_tokens: int, args) -> dict:
    def render(p):
        return build_prompt(p, style, chat=True)

    out = {}
    chosen = methods(args, max_tokens)
    for name, strategy in chosen.items():
        if args.methods and name not in args.methods.split(","):
            continue
        counter = Counting(engine)
        started = time.perf_counter()
        results = strategy.run(problems, counter, render=render)
        seconds = time.perf_counter() - started
        used = Usage.sum(r.usage for r in results)
        correct = [is_equiv(r.answer, p.answer) for r, p in zip(results, problems, strict=True)]
        ci = accuracy(correct)
        count = len(problems)
        engine_total = counter.spent.forward_tokens + counter.spent.scorer_tokens
        out[name] = {
            "acc": round(ci.mean, 4), "ci": [round(ci.low, 4), round(ci.high, 4)],
            "generated_tokens": round(used.generated_tokens / count, 1),
            "tokens": round((used.forward_tokens + used.scorer_tokens) / count, 1),
            "prompt_tokens": round(used.prompt_tokens / count, 1),
            "usage_matches_engine": (used.generated_tokens == counter.spent.generated_tokens
                                     and used.forward_tokens + used.scorer_tokens
                                     == engine_total),
            "seconds": round(seconds, 1)}
        print(f"{task:6} {name:15} acc {ci.mean:.3f} [{ci.low:.2f}, {ci.high:.2f}]  generated "
              f"{out[name]['generated_tokens']:8.1f}  total {out[name]['tokens']:8.1f} "
              f"tokens/problem  usage=engine {out[name]['usage_matches_engine']}  "
              f"{seconds:6.1f} s", flush=True)
    if "cot" in out and "probe" in out:
        cot, probe = out["cot"], out["probe"]
        # greedy CoT makes one request per problem, so its prompt_tokens is the prompt's length
        prompt = cot["prompt_tokens"]
        past = {name: (out[name]["tokens"] - prompt) * len(problems) for name in ("cot", "probe")}
        out["tokens_past_prompt"] = past  # summed over problems, for the pooled figure
        out["probe_token_saving"] = round(1 - past["probe"] / max(past["cot"], 1e-9), 4)
        out["probe_generated_token_saving"] = round(
            1 - probe["generated_tokens"] / max(cot["generated_tokens"], 1e-9), 4)
        print(f"{task:6} probing saves {out['probe_token_saving']:.1%} of CoT's tokens past "
              f"the prompt ({out['probe_generated_token_saving']:.1%} of its generated tokens)",
              flush=True)
    return out


def _problems(task: str, count: int, args):
    return load_task(task, limit=args.offset + count, shuffle_seed=0)[args.offset:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arith", type=int, default=32)
    parser.add_argument("--gsm8k", type=int, default=16)
    parser.add_argument("--passes", type=int, default=2, help="GenSelect selection passes")
    parser.add_argument("--select-tokens", type=int, default=64)
    parser.add_argument("--step-tokens", type=int, default=32, help="ToT's step cap")
    parser.add_argument("--probe-every", type=int, default=16)
    parser.add_argument("--probe-agree", type=int, default=2,
                        help="probe_exit's agree: stop a trace once its last W probes agree")
    parser.add_argument("--methods", default=None,
                        help="a comma list of the methods to run (default: all)")
    parser.add_argument("--offset", type=int, default=0,
                        help="skip this many problems of each task's shuffled order: problems "
                             "that no setting was chosen on")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    engine = HFEngine("smollm2-135m", threads=args.threads)
    tasks = {}
    if args.arith:
        tasks["arith"] = run_task(engine, "arith", _problems("arith:1", args.arith, args),
                                  "fewshot", 64, args)
    if args.gsm8k:
        tasks["gsm8k"] = run_task(engine, "gsm8k", _problems("gsm8k", args.gsm8k, args),
                                  "boxed", 256, args)
    figures = {task: {name: {"acc": v["acc"], "tokens": v["tokens"],
                             "generated_tokens": v["generated_tokens"]}
                      for name, v in res.items() if isinstance(v, dict) and "acc" in v}
               for task, res in tasks.items()}
    # Pooled over every problem of every task: a task whose CoT is too short to cut (few-shot
    # arith ends in ~17 tokens) counts for its tokens, not as much as GSM8K's long chains.
    past = [res["tokens_past_prompt"] for res in tasks.values() if "tokens_past_prompt" in res]
    figures["probe_token_saving"] = round(
        1 - sum(p["probe"] for p in past) / max(sum(p["cot"] for p in past), 1e-9), 4) \
        if past else None
    for task, res in tasks.items():
        if "probe_token_saving" in res:
            figures[f"probe_token_saving_{task}"] = res["probe_token_saving"]
            figures[f"probe_generated_token_saving_{task}"] = res["probe_generated_token_saving"]
    figures["detail"] = tasks
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
