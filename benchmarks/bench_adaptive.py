"""Adaptive compute: tokens and accuracy of DeepConf-online and adaptive self-consistency
against fixed-N self-consistency at the same N, on the same problems, in one process.

Bundled model, arith:1 (16 problems) and a GSM8K slice (8 problems), N=16, temperature 0.7,
seed 0. DeepConf-online: 4 warm-up traces, rounds of 2, window = max_tokens / 8 (the paper's
2048-token window is ~1/8 of its traces), consensus 0.95; run as DeepConf-low (keep 10%)
and DeepConf-high (keep 90%). Adaptive SC: rounds of 2, at least 2 rounds, stop at 0.95.
token_saving = 1 - generated tokens / self-consistency's generated tokens (targets: >= 0.4,
accuracy within self-consistency's bootstrap 95% CI). The LAST line is one JSON object.

How much adaptive SC can save depends on how often the model agrees with itself: it stops a
problem only once its leading answer is decided. `leader_share` (self-consistency's mean share
of votes for its winning answer) shows how decided the problems were.

    python benchmarks/bench_adaptive.py [--arith 16] [--gsm8k 8] [--n 16] [--temperature 0.7]
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
from ponder.types import SamplingParams, Usage


def strategies(n: int, max_tokens: int, temperature: float) -> dict:
    params = SamplingParams(n=n, temperature=temperature, max_tokens=max_tokens, seed=0)
    online = dict(warmup=min(4, n), round_size=2, window=max(4, max_tokens // 8),
                  consensus=0.95)
    return {
        "self_consistency": SelfConsistency(params),
        "deepconf_online": DeepConfOnline(params, keep_percent=10, **online),
        "deepconf_online_high": DeepConfOnline(params, keep_percent=90, **online),
        "adaptive_sc": AdaptiveSelfConsistency(params, round_size=2, min_rounds=2,
                                               confidence=0.95),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arith", type=int, default=16)
    parser.add_argument("--gsm8k", type=int, default=8)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--arith-tokens", type=int, default=128)
    parser.add_argument("--gsm8k-tokens", type=int, default=192)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    engine = HFEngine("smollm2-135m", dtype="float32", threads=args.threads)
    tasks = [("arith:1", load_task("arith:1", limit=args.arith, shuffle_seed=0),
              args.arith_tokens)]
    if args.gsm8k:
        tasks.append(("gsm8k", load_task("gsm8k", limit=args.gsm8k, shuffle_seed=0),
                      args.gsm8k_tokens))

    correct: dict[str, list[bool]] = {}
    usage: dict[str, Usage] = {}
    seconds: dict[str, float] = {}
    saved: dict[str, int] = {}
    shares: list[float] = []
    per_task: dict[str, dict] = {}
    for task, problems, max_tokens in tasks:
        per_task[task] = {}
        for name, strategy in strategies(args.n, max_tokens, args.temperature).items():
            start = time.perf_counter()
            results = strategy.run(problems, engine)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
            ok = [is_equiv(r.answer, p.answer) for r, p in zip(results, problems, strict=True)]
            if name == "self_consistency":
                shares += [r.trace["votes"][0]["votes"] / args.n if r.trace["votes"] else 0.0
                           for r in results]
            spent = Usage.sum(r.usage for r in results)
            correct.setdefault(name, []).extend(ok)
            usage[name] = usage.get(name, Usage()) + spent
            saved[name] = saved.get(name, 0) + sum(r.trace.get("samples_saved", 0)
                                                   for r in results)
            per_task[task][name] = {"accuracy": round(sum(ok) / len(ok), 4),
                                    "generated_tokens": spent.generated_tokens}

    base = usage["self_consistency"]
    base_ci = accuracy(correct["self_consistency"])
    rows, saving, forward_saving, acc = [], {}, {}, {}
    for name in usage:
        ci = accuracy(correct[name])
        # "Within the baseline's CI" is about not losing accuracy: above the CI also passes.
        acc[name] = {"mean": round(ci.mean, 4), "ci_low": round(ci.low, 4),
                     "ci_high": round(ci.high, 4), "n": ci.n,
                     "within_baseline_ci": base_ci.low <= ci.mean <= base_ci.high,
                     "not_below_baseline_ci": ci.mean >= base_ci.low}
        if name != "self_consistency":
            saving[name] = round(1 - usage[name].generated_tokens / base.generated_tokens, 4)
            forward_saving[name] = round(1 - usage[name].forward_tokens / base.forward_tokens, 4)
        rows.append((name, ci, usage[name], saving.get(name, 0.0), saved[name], seconds[name]))

    print(f"{'method':22} {'accuracy [95% CI]':>22} {'gen tokens':>10} {'fwd tokens':>10} "
          f"{'saving':>7} {'samples saved':>13} {'seconds':>8}")
    for name, ci, u, s, k, sec in rows:
        print(f"{name:22} {ci.mean:6.3f} [{ci.low:.3f}, {ci.high:.3f}]   {u.generated_tokens:10d} "
              f"{u.forward_tokens:10d} {s:7.1%} {k:13d} {sec:8.1f}")
    for name in saving:
        verdict = ("meets" if saving[name] >= 0.4 and acc[name]["not_below_baseline_ci"]
                   else "does NOT meet")
        print(f"{name}: token saving {saving[name]:.1%}, accuracy {acc[name]['mean']:.3f} vs "
              f"{base_ci.mean:.3f} [{base_ci.low:.3f}, {base_ci.high:.3f}] -> {verdict} the "
              "target (saving >= 40%, accuracy not below the baseline's CI)")
    leader_share = sum(shares) / len(shares)
    print(f"self-consistency's winning answer had {leader_share:.0%} of the votes on average")
    print(json.dumps({
        "n": args.n, "temperature": args.temperature, "leader_share": round(leader_share, 4), "problems": {task: len(p) for task, p, _ in tasks},
        "token_saving": saving, "forward_token_saving": forward_saving, "accuracy": acc,
        "generated_tokens": {k: u.generated_tokens for k, u in usage.items()},
        "samples_saved": saved, "per_task": per_task,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }))


if __name__ == "__main__":
    main()
