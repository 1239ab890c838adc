"""Power sampling speed and accounting: ponder vs the paper's code path, side by side.

Bundled model, alpha=4, T_max=256, B=64, N_MCMC=4, 8 arith problems, in one process:
  - ponder: every chain's proposals decode in one batch, each continuing from the KV state of
    its prefix x[:m]; each chain steps as soon as its proposal is back, and in the tail (few
    rows left) starts the steps that follow a rejection early (tokens of those that turn
    stale are counted, and reported as speculative_tokens_wasted);
  - reference: one problem at a time, every proposal regenerated from scratch (the prefix is
    re-fed through the model each time), as the authors' code does.
Same seeds, so both run the same chains (chain lengths, and so the tail, vary with --seed).
Also greedy, low-temperature and SMC accuracy on the same problems. The LAST line is one JSON
object with the figures.

    python benchmarks/bench_power.py [--problems 8] [--max-tokens 256] [--block 64] [--steps 4]
        [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from ponder.engines.hf import HFEngine
from ponder.strategies.registry import make_strategy
from ponder.tasks.datasets import load_task
from ponder.tasks.grade import is_equiv
from ponder.types import GenerateRequest, SequenceState


class NoReuse:
    """The reference code path: the same engine, but every request starts from bare token ids
    (no KV state kept or reused), one request at a time."""

    def __init__(self, engine: HFEngine):
        self.engine, self.name = engine, "no-reuse"
        self.capabilities = dataclasses.replace(engine.capabilities, follow_ups=False)

    def generate(self, requests, on_token=None):
        out = []
        for r in requests:
            if r.state is not None:
                r = GenerateRequest(state=SequenceState(r.state.token_ids), params=r.params)
            else:
                r = GenerateRequest(r.prompt, r.params)
            out += self.engine.generate([r])
        return out

    def detokenize(self, ids):
        return self.engine.detokenize(ids)


def accuracy(results, problems) -> float:
    return sum(is_equiv(r.answer, p.answer) for r, p in zip(results, problems, strict=True)) / len(problems)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0, help="chain seeds (the same for both)")
    args = parser.parse_args()

    engine = HFEngine("smollm2-135m", dtype="float32", device="cpu")
    problems = load_task("arith:1", limit=args.problems, shuffle_seed=0)
    power = make_strategy("power", alpha=args.alpha, max_tokens=args.max_tokens,
                          block_size=args.block, mcmc_steps=args.steps, seed=args.seed)

    start = time.perf_counter()
    ours = power.run(problems, engine)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    reference = [power.run([p], NoReuse(engine))[0] for p in problems]
    ref_s = time.perf_counter() - start

    same_answers = sum(a.answer == b.answer for a, b in zip(ours, reference, strict=True))
    fwd_ours = sum(r.usage.forward_tokens for r in ours)
    fwd_ref = sum(r.usage.forward_tokens for r in reference)
    gen_ours = sum(r.usage.generated_tokens for r in ours)
    lengths = sum(r.candidates[0].tokens for r in ours)
    measured_ratio = gen_ours / max(1, lengths)
    wasted = sum(r.trace["speculative_tokens_wasted"] for r in ours)
    acceptance = [a for r in ours for chain in r.trace["acceptance_per_block"] for a in chain]

    budget = max(1, gen_ours // len(problems))
    others = {
        "greedy": make_strategy("greedy", max_tokens=args.max_tokens),
        "low_temperature": make_strategy("low_temp", alpha=args.alpha,
                                         max_tokens=args.max_tokens, seed=0),
        # SMC with particles chosen to spend about what power sampling spent per problem.
        "smc": make_strategy("smc", alpha=args.alpha, max_tokens=args.max_tokens,
                             particles=max(2, min(16, budget // max(1, lengths // len(problems)))),
                             block_size=args.block // 2, seed=0),
    }
    accuracies = {"power": accuracy(ours, problems)}
    smc_ratio = None
    for name, strategy in others.items():
        results = strategy.run(problems, engine)
        accuracies[name] = accuracy(results, problems)
        if name == "smc":
            smc_ratio = sum(r.trace["cost_ratio_vs_one_sample"] for r in results) / len(results)

    print(f"ponder    {ours_s:7.1f} s  forward tokens {fwd_ours}  (of the generated tokens, "
          f"{wasted} went to speculative steps that turned stale)")
    print(f"reference {ref_s:7.1f} s  forward tokens {fwd_ref}  (same answers: {same_answers}/{len(problems)})")
    print(f"speedup {ref_s / ours_s:.2f}x (target >= 3); cost ratio vs one sample: measured "
          f"{measured_ratio:.2f}, paper's N_MCMC*T/(4B) at T_max {power.claimed_cost_ratio():.2f}")
    print("accuracy: " + ", ".join(f"{k} {v:.2f}" for k, v in accuracies.items()))
    print(json.dumps({
        "problems": len(problems), "alpha": args.alpha, "max_tokens": args.max_tokens,
        "block": args.block, "mcmc_steps": args.steps,
        "speedup_vs_reference": round(ref_s / ours_s, 2),
        "forward_tokens_ponder": fwd_ours, "forward_tokens_reference": fwd_ref,
        "generated_tokens_ponder": gen_ours,
        "generated_tokens_reference": sum(r.usage.generated_tokens for r in reference),
        "speculative_tokens_wasted": wasted, "seed": args.seed,
        "cost_ratio_vs_one_sample": {"measured": round(measured_ratio, 2),
                                     "claimed_at_t_max": power.claimed_cost_ratio(),
                                     "claimed_at_mean_length": round(
                                         power.claimed_cost_ratio(lengths // len(problems)), 2)},
        "smc_cost_ratio_vs_one_sample": round(smc_ratio, 2),
        "mean_acceptance": round(sum(acceptance) / len(acceptance), 3),
        "accuracy": accuracies,
    }))


if __name__ == "__main__":
    main()
