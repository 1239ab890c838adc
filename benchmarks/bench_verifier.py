"""Does compute buy accuracy with a trained verifier? Selectors over one shared sample pool,
on held-out arith problems (the evaluation split: no operands in common with the training
split the verifier learned from), side by side in one process.

For each level (1, and 2 beside it): per problem, one greedy answer and a pool of 16 samples
(temperature 0.8, the prompt the verifier was trained on). Every selector reads the same
pool, its first N samples for N = 1, 2, 4, 8, 16:
  greedy                       the greedy answer (N-independent)
  greedy few-shot              the greedy answer to the few-shot prompt: what a better prompt
                               buys instead of compute (N-independent; not a selector)
  maj@N                        majority vote
  bon@N mean log-prob          the sample with the highest mean token log-probability
  bon@N confidence             ... the highest mean negative entropy
  bon@N ORM                    ... the highest trained-ORM score
  weighted bon@N ORM           the answer with the largest summed ORM score
  bon@N PRM                    ... the highest process-verifier score (its steps' minimum)
  pass@N                       any sample correct (the ceiling)
ORM and PRM AUROC are measured on the held-out pool's samples. The ORM is trained first,
timed (the shipped recipe unless --orm names a folder; then its card's training time is
reported); then the PRM (recipe smollm2-arith-prm: Math-Shepherd labels, --rollouts completions
from every step prefix, on the ORM recipe's problems and samples: --prm-limit training
problems, 200 as the ORM's, x 8 samples; --prm-limit 0 skips it), timed too.
Then PRM beam search on the same problems (--beam-widths, default 8 and 16 candidate steps,
2 kept, at most 4 steps of at most --max-tokens tokens, temperature 0.8: the demo recipe's
beam@8), guided by the same PRM, next to the pool's selectors at matched policy tokens: the
N whose pool tokens (N samples' generated tokens) are nearest to the beam's generated
tokens. Beam search's own tokens (re-prefills, the PRM's scoring) are reported beside.
The LAST line is one JSON object with the figures.

    python benchmarks/bench_verifier.py [--problems 64] [--levels 1,2] [--orm FOLDER]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

from ponder.commands.train_verifier import RECIPES
from ponder.engines.hf import HFEngine
from ponder.scorers.base import ScoreItem
from ponder.scorers.trained import TrainedVerifier
from ponder.strategies.registry import make_strategy
from ponder.tasks.datasets import load_task
from ponder.tasks.extract import extract_answer
from ponder.tasks.grade import is_equiv
from ponder.tasks.prompts import build_prompt
from ponder.train.probe import auroc
from ponder.train.trainer import VerifierConfig, train_verifier
from ponder.types import GenerateRequest, SamplingParams

NS = (1, 2, 4, 8, 16)


def pool(engine, problems, prompt: str, n: int, max_tokens: int, seed: int):
    """Greedy answers (to the prompt and to the few-shot prompt) and n samples per problem,
    in three batched calls."""
    rendered = [build_prompt(p, prompt, chat=True) for p in problems]
    greedy, fewshot = (engine.generate([GenerateRequest(r, SamplingParams(
        temperature=0.0, max_tokens=max_tokens)) for r in prompts])
        for prompts in (rendered, [build_prompt(p, "fewshot", chat=True) for p in problems]))
    sampled = engine.generate([GenerateRequest(r, SamplingParams(
        n=n, temperature=0.8, max_tokens=max_tokens, seed=seed + i))
        for i, r in enumerate(rendered)])
    return rendered, greedy, fewshot, sampled


def select(values, keys) -> int:
    return max(range(len(values)), key=lambda i: keys[i])


def evaluate_level(engine, orm, prm, level: int, args) -> dict:
    problems = load_task(f"arith:{level}", limit=args.problems)
    started = time.perf_counter()
    rendered, greedy, fewshot, sampled = pool(engine, problems, args.prompt, max(NS), args.max_tokens,
                                     args.seed)
    pool_seconds = time.perf_counter() - started
    correct = collections.Counter()
    labels, orm_scores, prm_scores = [], [], []
    policy_tokens = 0
    for problem, prompt, g, f, s in zip(problems, rendered, greedy, fewshot, sampled,
                                        strict=True):
        completions = s.completions
        answers = [extract_answer(c.text) for c in completions]
        ok = [is_equiv(a, problem.answer) for a in answers]
        items = [ScoreItem(problem.question, prompt, c.text) for c in completions]
        scores = [r.score for r in orm.score(items)]
        process = [r.score for r in prm.score(items)] if prm else None
        labels += ok
        orm_scores += scores
        prm_scores += process or []
        policy_tokens += s.usage.generated_tokens
        correct["greedy"] += is_equiv(extract_answer(g.completions[0].text), problem.answer)
        correct["greedy fewshot"] += is_equiv(extract_answer(f.completions[0].text),
                                              problem.answer)
        for n in NS:
            a, k, sc = answers[:n], ok[:n], scores[:n]
            votes = collections.Counter(x for x in a if x is not None)
            correct[f"maj@{n}"] += bool(votes) and is_equiv(votes.most_common(1)[0][0],
                                                            problem.answer)
            correct[f"pass@{n}"] += any(k)
            mean_lp = [c.mean_logprob for c in completions[:n]]
            conf = [-(sum(c.entropies) / max(1, len(c.entropies))) for c in completions[:n]]
            correct[f"bon@{n} mean_logprob"] += k[select(a, mean_lp)]
            correct[f"bon@{n} confidence"] += k[select(a, conf)]
            correct[f"bon@{n} orm"] += k[select(a, sc)]
            if process:
                correct[f"bon@{n} prm"] += k[select(a, process[:n])]
            summed = collections.defaultdict(float)
            for x, v in zip(a, sc, strict=True):
                if x is not None:
                    summed[x] += v
            correct[f"wbon@{n} orm"] += bool(summed) and is_equiv(
                max(summed, key=summed.get), problem.answer)
    count = len(problems)
    return {"problems": count, "pool_seconds": round(pool_seconds, 1),
            "policy_tokens_per_problem_at_16": round(policy_tokens / count, 1),
            "acc": {k: round(v / count, 4) for k, v in correct.items()},
            "orm_auroc": round(auroc([int(x) for x in labels], orm_scores), 4),
            "prm_auroc": round(auroc([int(x) for x in labels], prm_scores), 4) if prm else None}


def beam_search(engine, prm, level: int, width: int, args, pool_tokens: float) -> dict:
    """PRM beam search (the demo recipe's beam@8 at width 8) on the level's problems; the
    pool's N at matched policy tokens (pool_tokens: generated tokens a problem at N=16)."""
    problems = load_task(f"arith:{level}", limit=args.problems)
    strategy = make_strategy("beam_search", n=width, m=2, max_steps=4, temperature=0.8,
                             max_tokens=args.max_tokens, seed=args.seed)
    started = time.perf_counter()
    results = strategy.run(problems, engine, prm,
                           render=lambda p: build_prompt(p, args.prompt, chat=True))
    seconds = time.perf_counter() - started
    count = len(problems)
    generated = sum(r.usage.generated_tokens for r in results) / count
    matched = min(NS, key=lambda n: abs(pool_tokens * n / max(NS) - generated))
    return {"acc": round(sum(is_equiv(r.answer, p.answer)
                             for r, p in zip(results, problems, strict=True)) / count, 4),
            "generated_tokens_per_problem": round(generated, 1),
            "forward_tokens_per_problem": round(sum(r.usage.forward_tokens
                                                    for r in results) / count, 1),
            "scorer_tokens_per_problem": round(sum(r.usage.scorer_tokens
                                                   for r in results) / count, 1),
            "matched_n": matched, "seconds": round(seconds, 1)}


def beam_table(level: int, figures: dict) -> str:
    acc = figures["acc"]
    rows = [f"arith:{level}, PRM beam search (2 kept) vs the pool at matched policy tokens",
            f"{'width':>6}{'acc':>8}{'gen tok':>9}{'all tok':>9}{'N':>4}{'bon orm':>9}"
            f"{'bon prm':>9}{'wbon orm':>10}{'maj':>7}"]
    for width, b in figures["beam"].items():
        n = b["matched_n"]
        rows.append(f"{width:>6}{b['acc']:>8.3f}{b['generated_tokens_per_problem']:>9.1f}"
                    f"{b['forward_tokens_per_problem'] + b['scorer_tokens_per_problem']:>9.1f}"
                    f"{n:>4}{acc[f'bon@{n} orm']:>9.3f}{acc.get(f'bon@{n} prm', float('nan')):>9.3f}"
                    f"{acc[f'wbon@{n} orm']:>10.3f}{acc[f'maj@{n}']:>7.3f}")
    return "\n".join(rows)


def table(level: int, figures: dict) -> str:
    acc = figures["acc"]
    prm = f", PRM AUROC {figures['prm_auroc']:.3f}" if figures["prm_auroc"] is not None else ""
    rows = [f"arith:{level}, {figures['problems']} held-out problems; ORM AUROC "
            f"{figures['orm_auroc']:.3f}{prm}",
            f"{'selector':22}" + "".join(f"{'N=' + str(n):>8}" for n in NS)]
    rows.append(f"{'greedy':22}" + f"{acc['greedy']:>8.3f}" * len(NS))
    rows.append(f"{'greedy few-shot':22}" + f"{acc['greedy fewshot']:>8.3f}" * len(NS))
    names = ("maj", "bon mean_logprob", "bon confidence", "bon orm", "wbon orm", "bon prm",
             "pass")
    for name in names:
        base, _, kind = name.partition(" ")
        keys = [f"{base}@{n}" + (f" {kind}" if kind else "") for n in NS]
        if keys[0] not in acc:  # no PRM this run
            continue
        rows.append(f"{name:22}" + "".join(f"{acc[k]:>8.3f}" for k in keys))
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--levels", default="1,2")
    parser.add_argument("--orm", default=None, help="a trained ORM folder (default: train the "
                                                     "shipped recipe here, timed)")
    parser.add_argument("--prompt", default=RECIPES["smollm2-arith-orm"]["prompt"])
    parser.add_argument("--max-tokens", type=int,
                        default=RECIPES["smollm2-arith-orm"]["max_tokens"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--prm", default=None, help="a trained process verifier folder "
                                                     "(default: train one here, timed)")
    parser.add_argument("--prm-limit", type=int,
                        default=RECIPES["smollm2-arith-prm"]["limit"],
                        help="training problems for the process verifier (0: no PRM)")
    parser.add_argument("--rollouts", type=int, default=RECIPES["smollm2-arith-prm"]["rollouts"],
                        help="the PRM's Monte Carlo completions per step prefix")
    parser.add_argument("--beam-widths", default="8,16",
                        help="PRM beam search widths, comma-separated (empty: none)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    engine = HFEngine("smollm2-135m", threads=args.threads)
    figures: dict = {}
    if args.orm is None:
        folder = Path(tempfile.mkdtemp(prefix="ponder-orm-"))
        config = VerifierConfig(**RECIPES["smollm2-arith-orm"])
        card, _fit, timings = train_verifier(
            config, engine, folder / "data.db", folder / "orm", progress=True,
            command="ponder train-verifier --recipe smollm2-arith-orm")
        figures["train_seconds"] = round(timings["total_seconds"], 1)
        figures["train_timings"] = {k: round(v, 1) for k, v in timings.items()}
        figures["orm_val_auroc"] = card.metrics["val_auroc"]
        args.orm = str(folder / "orm")
        print(f"trained ORM: {args.orm}", flush=True)
    if args.prm is None and args.prm_limit:
        folder = Path(tempfile.mkdtemp(prefix="ponder-prm-"))
        config = VerifierConfig(**{**RECIPES["smollm2-arith-prm"], "limit": args.prm_limit,
                                   "rollouts": args.rollouts})
        card, _fit, timings = train_verifier(config, engine, folder / "data.db",
                                             folder / "prm", progress=True)
        figures["prm_train_seconds"] = round(timings["total_seconds"], 1)
        figures["prm_val_auroc"] = card.metrics["val_auroc"]
        args.prm = str(folder / "prm")
        print(f"trained PRM: {args.prm}", flush=True)
    orm = TrainedVerifier(args.orm, engine)
    prm = TrainedVerifier(args.prm, engine) if args.prm else None
    figures.setdefault("train_seconds", orm.card.metrics.get("train_seconds"))
    figures.setdefault("orm_val_auroc", orm.card.metrics.get("val_auroc"))
    per_level = {}
    for level in (int(x) for x in args.levels.split(",")):
        per_level[level] = figures_of = evaluate_level(engine, orm, prm, level, args)
        print(table(level, figures_of), flush=True)
        if prm and args.beam_widths:
            figures_of["beam"] = {
                width: beam_search(engine, prm, level, width, args,
                                   figures_of["policy_tokens_per_problem_at_16"])
                for width in (int(x) for x in args.beam_widths.split(","))}
            print(beam_table(level, figures_of), flush=True)
    one = per_level[min(per_level)]["acc"]
    figures |= {
        "orm_auroc": per_level[min(per_level)]["orm_auroc"],
        "greedy_acc": one["greedy"], "greedy_fewshot_acc": one["greedy fewshot"],
        "maj16_acc": one["maj@16"],
        "bon16_orm_acc": one["bon@16 orm"], "wbon16_orm_acc": one["wbon@16 orm"],
        "bon16_mean_logprob_acc": one["bon@16 mean_logprob"],
        "bon16_confidence_acc": one["bon@16 confidence"], "pass16": one["pass@16"],
        "prm_auroc": per_level[min(per_level)]["prm_auroc"],
        "bon16_prm_acc": one.get("bon@16 prm"),
        "beam_prm_acc": {w: b["acc"] for w, b in per_level[min(per_level)].get("beam", {}).items()},
        "levels": per_level,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
