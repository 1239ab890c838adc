"""Adaptive compute: tokens and accuracy of DeepConf-online and adaptive self-consistency
against fixed-N self-consistency at the same N, on the same problems, in one process.

Bundled model, few-shot prompts (`--prompt`), arith:1 (32 problems) and a GSM8K slice (8
problems), N=16, temperature 0.7, seed 0 (`--seed`). DeepConf-online: 4 warm-up traces,
rounds of 2, window = max_tokens / 8 (the paper's 2048-token window is ~1/8 of its traces),
consensus 0.95; run as DeepConf-low (keep 10%) and DeepConf-high (keep 90%). Adaptive SC: rounds of 2, at least 2 rounds, stop at 0.95.
token_saving = 1 - generated tokens / self-consistency's generated tokens (targets: >= 0.4,
accuracy within self-consistency's bootstrap 95% CI). The LAST line is one JSON object.

`token_saving` and `accuracy` are arith's, the benchmark's task; `per_task` has every task's
saving, accuracy and `leader_share`, and `token_saving_all` pools the tokens of all tasks.
They are kept apart because how much adaptive SC can save depends on how often the model
agrees with itself: it stops a problem only once its leading answer is decided. On the GSM8K
slice the bundled model is almost never right and its votes scatter (`leader_share`, self-
consistency's mean share of votes for its winning answer, is low), so there is little to
save there, and its traces, ten times longer than arith's, would swamp a pooled figure.

    python benchmarks/bench_adaptive.py [--arith 32] [--gsm8k 8] [--n 16] [--temperature 0.7]
        [--prompt fewshot] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time

from ponder.engines.hf import HFEngine
from ponder.eval.metrics import accuracy
from ponder.strategies.adaptive_sc import AdaptiveSelfConsistency
from ponder.strategies.deepconf import DeepConfOnline
from ponder.strategies.self_consistency import SelfConsistency
from ponder.tasks.datasets import load_task
from ponder.tasks.grade import is_equiv
from ponder.tasks.prompts import STYLES, build_prompt
from ponder.types import SamplingParams, Usage


def strategies(n: int, max_tokens: int, temperature: float, seed: int) -> dict:
    params = SamplingParams(n=n, temperature=temperature, max_tokens=max_tokens, seed=seed)
    online = dict(warmup=min(4, n), round_size=2, window=max(4, max_tokens // 8),
                  consensus=0.95)
    return {
        "self_consistency": SelfConsistency(params),
        "deepconf_online": DeepConfOnline(params, keep_percent=10, **online),
        "deepconf_online_high": DeepConfOnline(params, keep_percent=90, **online),
        "adaptive_sc": AdaptiveSelfConsistency(params, round_size=2, min_rounds=2,
                                               confidence=0.95),
    }


def run_task(problems, max_tokens: int, args, engine, render) -> dict[str, dict]:
    """Every strategy on one task's problems: correctness, usage, samples saved, seconds."""
    out = {}
    for name, strategy in strategies(args.n, max_tokens, args.temperature, args.seed).items():
        start = time.perf_counter()
        results = strategy.run(problems, engine, render=render)
        seconds = time.perf_counter() - start
        out[name] = {
            "correct": [is_equiv(r.answer, p.answer)
                        for r, p in zip(results, problems, strict=True)],
            "usage": Usage.sum(r.usage for r in results),
            "saved": sum(r.trace.get("samples_saved", 0) for r in results),
            "seconds": seconds,
        }
        if name == "self_consistency":
            out[name]["shares"] = [r.trace["votes"][0]["votes"] / args.n if r.trace["votes"]
                                   else 0.0 for r in results]
    return out


def summary(runs: dict[str, dict]) -> dict:
    """Savings against self-consistency and accuracies with CIs, for one task or pooled."""
    base, base_ci = runs["self_consistency"]["usage"], accuracy(runs["self_consistency"]["correct"])
    shares = runs["self_consistency"]["shares"]
    out: dict = {"leader_share": round(sum(shares) / len(shares), 4), "token_saving": {},
                 "forward_token_saving": {}, "accuracy": {}, "generated_tokens": {},
                 "samples_saved": {}, "seconds": {}}
    for name, run in runs.items():
        ci = accuracy(run["correct"])
        # "Within the baseline's CI" is about not losing accuracy: above the CI also passes.
        out["accuracy"][name] = {
            "mean": round(ci.mean, 4), "ci_low": round(ci.low, 4), "ci_high": round(ci.high, 4),
            "n": ci.n, "within_baseline_ci": base_ci.low <= ci.mean <= base_ci.high,
            "not_below_baseline_ci": ci.mean >= base_ci.low}
        out["generated_tokens"][name] = run["usage"].generated_tokens
        out["samples_saved"][name] = run["saved"]
        out["seconds"][name] = round(run["seconds"], 1)
        if name != "self_consistency":
            out["token_saving"][name] = round(
                1 - run["usage"].generated_tokens / base.generated_tokens, 4)
            out["forward_token_saving"][name] = round(
                1 - run["usage"].forward_tokens / base.forward_tokens, 4)
    return out


def pooled(per_task: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Every task's runs of each strategy joined into one."""
    out: dict[str, dict] = {}
    for runs in per_task.values():
        for name, run in runs.items():
            into = out.setdefault(name, {"correct": [], "usage": Usage(), "saved": 0,
                                         "seconds": 0.0, "shares": []})
            into["correct"] = into["correct"] + run["correct"]
            into["usage"] = into["usage"] + run["usage"]
            into["saved"] += run["saved"]
            into["seconds"] += run["seconds"]
            into["shares"] = into["shares"] + run.get("shares", [])
    return out


def print_table(title: str, runs: dict[str, dict], summ: dict) -> None:
    print(f"\n{title} (self-consistency's winning answer had {summ['leader_share']:.0%} of the "
          "votes on average)")
    print(f"{'method':22} {'accuracy [95% CI]':>22} {'gen tokens':>10} {'fwd tokens':>10} "
          f"{'saving':>7} {'samples saved':>13} {'seconds':>8}")
    for name, run in runs.items():
        a, u = summ["accuracy"][name], run["usage"]
        print(f"{name:22} {a['mean']:6.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]   "
              f"{u.generated_tokens:10d} {u.forward_tokens:10d} "
              f"{summ['token_saving'].get(name, 0.0):7.1%} {run['saved']:13d} "
              f"{run['seconds']:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arith", type=int, default=32)
    parser.add_argument("--gsm8k", type=int, default=8)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", choices=STYLES, default="fewshot",
                        help="prompt style for every task (fewshot: worked examples, the "
                             "style the bundled model answers best)")
    parser.add_argument("--arith-tokens", type=int, default=96)
    parser.add_argument("--gsm8k-tokens", type=int, default=192)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.arith < 1:
        parser.error("--arith must be >= 1: arith is the task the targets are measured on")

    engine = HFEngine("smollm2-135m", dtype="float32", threads=args.threads)

    def render(problem):
        return build_prompt(problem, args.prompt, chat=True)

    tasks = [("arith:1", load_task("arith:1", limit=args.arith, shuffle_seed=0),
              args.arith_tokens)]
    if args.gsm8k:
        tasks.append(("gsm8k", load_task("gsm8k", limit=args.gsm8k, shuffle_seed=0),
                      args.gsm8k_tokens))
    per_task = {task: run_task(problems, max_tokens, args, engine, render)
                for task, problems, max_tokens in tasks}
    summaries = {task: summary(runs) for task, runs in per_task.items()}
    for task, runs in per_task.items():
        print_table(task, runs, summaries[task])
    everything = summary(pooled(per_task))

    head = summaries["arith:1"]
    base = head["accuracy"]["self_consistency"]
    print()
    for name, saving in head["token_saving"].items():
        a = head["accuracy"][name]
        verdict = ("meets" if saving >= 0.4 and a["not_below_baseline_ci"] else "does NOT meet")
        print(f"arith:1, {name}: token saving {saving:.1%}, accuracy {a['mean']:.3f} vs "
              f"{base['mean']:.3f} [{base['ci_low']:.3f}, {base['ci_high']:.3f}] -> {verdict} "
              "the target (saving >= 40%, accuracy not below the baseline's CI)")
    print(json.dumps({
        "n": args.n, "temperature": args.temperature, "seed": args.seed, "prompt": args.prompt,
        "problems": {task: len(p) for task, p, _ in tasks},
        "token_saving": head["token_saving"], "accuracy": head["accuracy"],
        "leader_share": head["leader_share"],
        "token_saving_all": everything["token_saving"],
        "accuracy_all": everything["accuracy"],
        "per_task": summaries,
    }))


if __name__ == "__main__":
    main()
