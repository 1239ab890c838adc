"""`ponder train-verifier`: an outcome or process verifier for a policy, from its own samples."""

from __future__ import annotations

import argparse
import shlex
import sys

from ponder.models import DEFAULT_MODEL

EPILOG = """examples:
  ponder train-verifier --out verifiers/arith-orm            an ORM for the bundled model on
                                                             arith's training split
  ponder train-verifier --recipe smollm2-arith-orm           the verifier shipped with ponder,
                                                             made again
  ponder train-verifier --kind process --rollouts 4 --out verifiers/arith-prm
  ponder train-verifier --recipe smollm2-arith-prm           the process verifier measured in
                                                             docs/verifiers.md (~7 min on a
                                                             2-core AMD EPYC, 12-17 on a Xeon)
  ponder train-verifier --head lora --out verifiers/arith-orm-lora
                                                             LoRA on the top layers instead of
                                                             a probe (slower to train)
  ponder train-verifier --from runs.db --out verifiers/mine  reuse samples an eval paid for
  ponder train-verifier --task my_train.jsonl --eval-task my_test.jsonl --out verifiers/mine

then use it wherever a scorer goes:
  ponder eval --task arith:1 --strategy bon --n 8 --scorer verifier:verifiers/arith-orm

The data stage is an ordinary eval run into --data (SQLite): killed, it resumes where it
stopped. Training problems must not be evaluation problems (arith:N, MATH-500, GSM8K test,
...): train on arith-train:N, or on a file checked against --eval-task.
"""

# Presets for the bundled model; each is the exact configuration of a verifier (shipped, or
# measured in docs/verifiers.md).
RECIPES = {
    "smollm2-arith-orm": {"task": "arith-train:1", "model": DEFAULT_MODEL, "prompt": "plain",
                          "limit": 200, "samples": 8, "temperature": 0.8, "max_tokens": 64,
                          "kind": "outcome", "pool": "mean-max", "seed": 0},
    "smollm2-arith-orm-lora": {"task": "arith-train:1", "model": DEFAULT_MODEL,
                               "prompt": "plain", "limit": 200, "samples": 8,
                               "temperature": 0.8, "max_tokens": 64, "kind": "outcome",
                               "seed": 0, "head": "lora", "lora_layers": 6, "lora_rank": 8,
                               "epochs": 4},
    "smollm2-arith-prm": {"task": "arith-train:1", "model": DEFAULT_MODEL, "prompt": "plain",
                          "limit": 200, "samples": 8, "temperature": 0.8, "max_tokens": 64,
                          "kind": "process", "rollouts": 4, "pool": "mean-max", "seed": 0},
}


def register(sub) -> None:
    p = sub.add_parser("train-verifier", help="train an outcome or process verifier for a policy",
                       description="Sample the policy on training problems, label the samples "
                                   "(graded outcomes, or Monte Carlo step labels), train a probe "
                                   "on the policy's hidden states, validate it on held-out "
                                   "problems, and write a folder any --scorer can name.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="a preset (flags given as well override it)")
    data = p.add_argument_group("data")
    data.add_argument("--task", default=None,
                      help="training problems: arith-train, arith-train:1..3, or a .jsonl "
                           "(default arith-train:1)")
    data.add_argument("--limit", type=int, default=None, help="training problems (default 200)")
    data.add_argument("--samples", type=int, default=None,
                      help="samples per problem (default 8)")
    data.add_argument("--prompt", default=None, help="prompt style the policy answers in "
                                                     "(default boxed)")
    data.add_argument("--temperature", type=float, default=None, help="default 0.8")
    data.add_argument("--max-tokens", type=int, default=None, help="default 96")
    data.add_argument("--seed", type=int, default=None, help="default 0")
    data.add_argument("--data", default="verifier-data.db",
                      help="SQLite store of the samples and labels (resumable; default "
                           "verifier-data.db)")
    data.add_argument("--from", dest="from_store", default=None, metavar="STORE",
                      help="learn from the samples of an existing eval store instead")
    data.add_argument("--run", action="append", default=None, metavar="ID",
                      help="with --from: only this run (id or label; repeatable)")
    data.add_argument("--eval-task", default=None,
                      help="with a .jsonl --task: refuse training questions that are also in "
                           "this evaluation task")
    data.add_argument("--force", action="store_true",
                      help="train on evaluation problems anyway (contaminates evaluation)")
    model = p.add_argument_group("verifier")
    model.add_argument("--kind", choices=["outcome", "process"], default=None,
                       help="outcome (ORM, default) or process (PRM, Math-Shepherd labels)")
    model.add_argument("--reads", choices=["answer", "end"], default=None,
                       help="read the hidden states at the final answer's last token "
                            "(default; a sample that rambles past its answer is judged by the "
                            "answer; a process verifier reads its last step there) or at the "
                            "response's last token")
    model.add_argument("--pool", choices=["none", "mean-max"], default=None,
                       help="probe: also read the mean and maximum of the response's hidden "
                            "states, beside the state where the verdict is read (how the "
                            "answer was reached, not only the answer). Default: mean-max for "
                            "a probe, none for LoRA")
    model.add_argument("--rollouts", type=int, default=None,
                       help="process labels: completions per step prefix (default 4)")
    model.add_argument("--head", choices=["probe", "lora"], default=None,
                       help="probe: logistic regression on frozen hidden states (default; "
                            "seconds to fit); lora: LoRA on the policy's top layers with a "
                            "head (minutes per epoch on a CPU; on the bundled model no better "
                            "than the probe, see docs/verifiers.md)")
    model.add_argument("--lora-layers", type=int, default=None,
                       help="lora: top layers adapted (default 6)")
    model.add_argument("--lora-rank", type=int, default=None, help="lora: rank (default 8)")
    model.add_argument("--epochs", type=int, default=None,
                       help="lora: most epochs; the best on validation is kept (default 4)")
    model.add_argument("--val-fraction", type=float, default=None,
                       help="problems held out for validation (default 0.25)")
    model.add_argument("--out", default=None,
                       help="the verifier folder to write (default verifiers/<recipe or kind>)")
    run = p.add_argument_group("model and output")
    run.add_argument("--model", default=None, help=f"the policy (default {DEFAULT_MODEL})")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    run.add_argument("--chunk", type=int, default=None,
                     help="problems per engine call in the data stage (default: fill the batch)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--json", action="store_true", help="print the card as JSON")
    p.set_defaults(func=run_command)


def config_from_args(args: argparse.Namespace):
    from ponder.train.trainer import VerifierConfig

    values = dict(RECIPES[args.recipe]) if args.recipe else {}
    for flag in ("task", "limit", "samples", "prompt", "temperature", "max_tokens", "seed",
                 "kind", "reads", "pool", "rollouts", "val_fraction", "model", "eval_task", "head",
                 "lora_layers", "lora_rank", "epochs"):
        given = getattr(args, flag)
        if given is not None:
            values[flag] = given
    values["force"] = args.force
    if values.get("limit") is not None and values["limit"] < 2:
        raise ValueError(f"--limit must be >= 2 (some problems train, some validate), got "
                         f"{values['limit']}")
    return VerifierConfig(**values)


def run_command(args: argparse.Namespace) -> int:
    from ponder.engines import load_engine
    from ponder.train.contamination import check_training_task
    from ponder.train.trainer import train_verifier

    config = config_from_args(args)
    if args.from_store is None:
        check_training_task(config.task, config.force)  # before seconds of model loading
    out = args.out or f"verifiers/{args.recipe or config.kind}"
    engine = load_engine("hf", model=config.model, threads=args.threads)
    command = "ponder train-verifier " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    card, fit, timings = train_verifier(config, engine, args.data, out, args.from_store,
                                        args.run, progress=not args.no_progress,
                                        command=command, chunk=args.chunk)
    if args.json:
        print(card.to_json())
    else:
        m, d = card.metrics, card.data
        print(f"{card.kind} verifier for {card.base_model} -> {out}")
        print(f"data: {d['problems']} problems, {d['samples']} samples, {d['positives']} of "
              f"{d['positions']} labels positive; validated on {d['val_problems']} held-out "
              "problems")
        fitted = f"l2 {m['l2']}" if card.head == "probe" else \
            f"LoRA rank {card.lora['rank']} on the top {card.lora['layers']} layers"
        print(f"validation: AUROC {m['val_auroc']:.3f}, ECE {m['val_ece']:.3f}, accuracy "
              f"{m['val_accuracy']:.3f} ({fitted}, {m['epochs']} epochs)")
        print("seconds: " + ", ".join(f"{k.removesuffix('_seconds')} {v:.1f}"
                                      for k, v in timings.items()))
        print(f"use it: --scorer verifier:{out}")
    return 0
