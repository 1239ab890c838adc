"""`ponder run "question"`: one question through a strategy; the answer, votes and Usage."""

from __future__ import annotations

import argparse
import json
from typing import Any

EPILOG = """\
examples:
  ponder run "What is 12 + 35?"                                     greedy, boxed prompt
  ponder run "What is 12 + 35?" --strategy self-consistency --n 8 --seed 0
  ponder run "What is 12 + 35?" --strategy best_of_n --n 8 --scorer mean_logprob
  ponder run "What is 12 + 35?" --strategy self_refine --iterations 2 -v
  ponder run "What is 7 + 5?" --strategy cot --json

{strategies}
"""


def register(sub: Any) -> None:
    from ponder.commands._common import add_engine_args, add_strategy_args, command_parser

    p = command_parser(sub, "run", help="answer one question with a strategy",
                       description="Answer QUESTION with an inference-time strategy and print "
                       "the chosen answer, the vote table (voting strategies) or the scored "
                       "candidates, and the compute used.", epilog=EPILOG)
    p.add_argument("question", help="the question, rendered with --prompt")
    add_strategy_args(p, stored=False)  # nothing stored: no --label
    add_engine_args(p)
    p.add_argument("-v", "--verbose", action="store_true", help="print every candidate's text")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ponder.commands._common import engine_config_from_args, flag_options
    from ponder.engines.config import build_engine
    from ponder.eval.spec import RUN_KEYS
    from ponder.scorers.registry import make_scorer
    from ponder.strategies.registry import STRATEGIES, canonical_name, make_strategy
    from ponder.tasks.prompts import build_prompt
    from ponder.types import Problem

    if not args.question.strip():
        raise ValueError("the question is empty")
    name = args.strategy or "greedy"
    key = canonical_name(name)
    options = {k: v for k, v in flag_options(args).items() if k not in RUN_KEYS}
    strategy = make_strategy(key, **options)
    prompt = args.prompt or ("cot" if name.strip().lower() == "cot" else "boxed")
    problem = Problem(id="cli", question=args.question, answer="")
    build_prompt(problem, prompt, chat=not args.raw)  # validates the style
    if STRATEGIES[key].needs_scorer and not args.scorer:
        from ponder.scorers.trained import scorer_hint

        raise ValueError(f"strategy {key!r} needs a scorer: {scorer_hint()}")
    if args.scorer:
        make_scorer(args.scorer, None)  # validates the name before the model loads
    engine = build_engine(engine_config_from_args(args))
    scorer = make_scorer(args.scorer, engine) if args.scorer else None
    [result] = strategy.run([problem], engine, scorer,
                            render=lambda p: build_prompt(p, prompt, chat=not args.raw))
    if args.json:
        print(json.dumps({
            "answer": result.answer, "strategy": key, "prompt": prompt,
            "votes": result.trace.get("votes"),
            "candidates": [{"answer": c.answer, "score": c.score, "tokens": c.tokens,
                            "text": c.text, **dict(c.meta)} for c in result.candidates],
            "usage": result.usage.to_dict(), "budget": result.trace.get("budget")},
            default=str))
        return 0
    _print_result(result, args.verbose)
    return 0


def _print_result(result, verbose: bool) -> None:
    votes = result.trace.get("votes")
    if verbose or len(result.candidates) == 1:
        for i, c in enumerate(result.candidates):
            print(f"--- candidate {i}: answer {c.answer!r}"
                  + (f", score {c.score:.4f}" if c.score is not None else ""))
            print(c.text.strip())
        print("---")
    print(f"answer: {result.answer}")
    if votes:
        print("votes:")
        # Voters without an answer: where only some candidates vote (RSA's last population),
        # the trace says how many voted.
        voters = result.trace.get("voters")
        abstained = (voters - sum(v["votes"] for v in votes) if voters is not None
                     else sum(c.answer is None for c in result.candidates))
        width = max([len(str(v["answer"])) for v in votes] + [len("(no answer)")] * bool(abstained))
        weighted = any(v["weight"] != v["votes"] for v in votes)
        for v in votes:
            print(f"  {str(v['answer']):<{width}}  {v['votes']:3d} vote(s)"
                  + (f"  weight {v['weight']:.4f}" if weighted else ""))
        if abstained:
            print(f"  {'(no answer)':<{width}}  {abstained:3d} voter(s) gave none")
    elif len(result.candidates) > 1:
        chosen = result.chosen
        print("candidates:")
        for i, c in enumerate(result.candidates):
            mark = "*" if i == chosen else " "
            score = f"{c.score:9.4f}" if c.score is not None else "        -"
            step = f"  {c.meta['step']}" if "step" in c.meta else ""
            step += " (kept)" if c.meta.get("kept") else ""
            print(f" {mark}{i:3d}  score {score}  {c.tokens:4d} tok  answer {c.answer!r}{step}")
    u = result.usage
    print(f"usage: {u.prompt_tokens} prompt, {u.generated_tokens} generated, {u.forward_tokens} "
          f"forward, {u.scorer_tokens} scorer tokens; engine calls {u.calls}; "
          f"{u.wall_seconds:.1f} s")
