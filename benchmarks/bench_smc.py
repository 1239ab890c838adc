"""Particle methods on the bundled model, side by side in one process.

1. Verifier-guided search at about matched policy tokens, on held-out arith problems (the
   evaluation split: no operand pair in common with the split the verifier trained on), with
   the trained ORM shipped with ponder (`verifier:smollm2-135m-arith-orm`, or --orm FOLDER) as
   every method's scorer, and the prompt and temperature it was trained on:
     particle_filter   n particles, steps of up to --step-tokens, at most --steps steps
     beam_search       n candidate steps, keep m=2, same step limits
     weighted bon      n samples of up to steps x step-tokens tokens, summed ORM score
   Accuracy, and policy generated and forward tokens per problem, for each.
2. The power family on --power-problems arith problems at alpha=4, T_max=--max-tokens: MH
   (`power`, run twice with different seeds for its run-to-run spread), Power-SMC
   (`power_smc`) and scalable power sampling (`power_ar`). For each, wall time and generated
   tokens relative to one standard sample (temperature 1, the same problems, batched the
   same way), and the mean log-likelihood per token of the answers' samples.
The LAST line is one JSON object with the figures.

    python benchmarks/bench_smc.py [--problems 24] [--n 8] [--orm FOLDER]
        [--power-problems 8] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import time

from ponder.commands.train_verifier import RECIPES
from ponder.engines.hf import HFEngine
from ponder.scorers.registry import make_scorer
from ponder.strategies.registry import make_strategy
from ponder.tasks.datasets import load_task
from ponder.tasks.grade import is_equiv
from ponder.tasks.prompts import build_prompt

RECIPE = RECIPES["smollm2-arith-orm"]


def accuracy(results, problems) -> float:
    return round(sum(is_equiv(r.answer, p.answer)
                     for r, p in zip(results, problems, strict=True)) / len(problems), 4)


def per_problem(results, field: str) -> float:
    return round(sum(getattr(r.usage, field) for r in results) / len(results), 1)


def mean_loglik(results) -> float:
    """Mean over problems of the answer's sample's mean log p per token (T=1)."""
    values = [r.candidates[r.chosen if r.chosen is not None else 0].meta["mean_logprob"]
              for r in results]
    return round(sum(values) / len(values), 4)


def timed(strategy, problems, engine, scorer=None, render=None):
    started = time.perf_counter()
    kwargs = {"render": render} if render else {}
    results = strategy.run(problems, engine, scorer, **kwargs)
    return results, time.perf_counter() - started


def verifier_search(engine, orm, args) -> dict:
    problems = load_task("arith:1", limit=args.problems, shuffle_seed=0)

    def render(p):
        return build_prompt(p, RECIPE["prompt"], chat=True)

    temperature = RECIPE["temperature"]
    methods = {
        "pf": make_strategy("particle_filter", n=args.n, max_tokens=args.step_tokens,
                            temperature=temperature, max_steps=args.steps, seed=0),
        "beam": make_strategy("beam_search", n=args.n, m=2, max_tokens=args.step_tokens,
                              temperature=temperature, max_steps=args.steps, seed=0),
        "wbon": make_strategy("weighted_best_of_n", n=args.n,
                              max_tokens=args.steps * args.step_tokens,
                              temperature=temperature, seed=0),
    }
    out = {}
    for name, strategy in methods.items():
        results, seconds = timed(strategy, problems, engine, orm, render)
        out[name] = {"acc": accuracy(results, problems),
                     "generated_tokens": per_problem(results, "generated_tokens"),
                     "forward_tokens": per_problem(results, "forward_tokens"),
                     "scorer_tokens": per_problem(results, "scorer_tokens"),
                     "seconds": round(seconds, 1)}
        print(f"{name:5} acc {out[name]['acc']:.3f}  generated {out[name]['generated_tokens']:7.1f}"
              f"  forward {out[name]['forward_tokens']:7.1f} tokens/problem  {seconds:6.1f} s",
              flush=True)
    out["problems"] = len(problems)
    return out


def power_family(engine, args) -> dict:
    problems = load_task("arith:1", limit=args.power_problems, shuffle_seed=0)
    alpha, tokens = 4.0, args.max_tokens
    one, one_s = timed(make_strategy("sample", temperature=1.0, max_tokens=tokens, seed=0),
                       problems, engine)
    one_tokens = sum(r.usage.generated_tokens for r in one)
    methods = {
        "mh": make_strategy("power", alpha=alpha, max_tokens=tokens, block_size=tokens // 4,
                            mcmc_steps=args.mcmc_steps, seed=0),
        "mh_seed1": make_strategy("power", alpha=alpha, max_tokens=tokens,
                                  block_size=tokens // 4, mcmc_steps=args.mcmc_steps, seed=1),
        "power_smc": make_strategy("power_smc", alpha=alpha, max_tokens=tokens,
                                   particles=args.particles, seed=0),
        "power_ar": make_strategy("power_ar", alpha=alpha, max_tokens=tokens, seed=0),
    }
    out = {"one_sample_seconds": round(one_s, 2), "one_sample_tokens": one_tokens,
           "one_sample_loglik": mean_loglik(one)}
    for name, strategy in methods.items():
        results, seconds = timed(strategy, problems, engine)
        generated = sum(r.usage.generated_tokens for r in results)
        out[name] = {"cost_ratio": round(seconds / one_s, 2),
                     "token_ratio": round(generated / max(1, one_tokens), 2),
                     "loglik": mean_loglik(results), "acc": accuracy(results, problems),
                     "seconds": round(seconds, 1)}
        print(f"{name:9} wall {out[name]['cost_ratio']:6.2f}x one sample, tokens "
              f"{out[name]['token_ratio']:6.2f}x, mean log p {out[name]['loglik']:.3f}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=24)
    parser.add_argument("--n", type=int, default=8, help="particles / beam candidates / samples")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--step-tokens", type=int, default=32)
    parser.add_argument("--orm", default="smollm2-135m-arith-orm",
                        help="a trained ORM folder or shipped name (default: the shipped one)")
    parser.add_argument("--power-problems", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--mcmc-steps", type=int, default=4)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    engine = HFEngine("smollm2-135m", threads=args.threads)
    figures: dict = {}
    orm = make_scorer(f"verifier:{args.orm}", engine)
    search = verifier_search(engine, orm, args)
    power = power_family(engine, args)
    spread = abs(power["mh"]["loglik"] - power["mh_seed1"]["loglik"])
    figures |= {
        "pf_acc": search["pf"]["acc"], "beam_acc": search["beam"]["acc"],
        "wbon_acc": search["wbon"]["acc"], "pf_tokens": search["pf"]["generated_tokens"],
        "beam_tokens": search["beam"]["generated_tokens"],
        "wbon_tokens": search["wbon"]["generated_tokens"],
        "power_ar_cost_ratio": power["power_ar"]["cost_ratio"],
        "power_smc_cost_ratio": power["power_smc"]["cost_ratio"],
        "mh_cost_ratio": power["mh"]["cost_ratio"],
        "power_ar_loglik": power["power_ar"]["loglik"],
        "power_smc_loglik": power["power_smc"]["loglik"],
        "mh_loglik": power["mh"]["loglik"], "mh_loglik_spread": round(spread, 4),
        "search": search, "power": power,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
