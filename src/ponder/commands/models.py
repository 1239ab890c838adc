"""`ponder models`: what can be loaded."""

from __future__ import annotations

import argparse
import json

EPILOG = """examples:
  ponder models                            the bundled models (installed, converted) and the
                                           shipped verifiers
  ponder models --json                     the same as one JSON object
  ponder generate hi --model NAME          use one of them (or an HF folder, .gguf, hub id)
  ponder eval --task arith:1 --strategy bon --n 8 --scorer verifier:smollm2-135m-arith-orm
"""


def register(sub) -> None:
    p = sub.add_parser("models", help="list loadable models and shipped verifiers",
                       description="List the bundled models and their state, and the trained "
                                   "verifiers that ship with ponder (use one with --scorer "
                                   "verifier:NAME). Besides these, --model takes any HF model "
                                   "folder, a .gguf file, or a hub id (loaded by transformers "
                                   "where the hub is reachable), and --scorer verifier:FOLDER "
                                   "any folder `ponder train-verifier` made.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true",
                   help='print one JSON object: {"models": [...], "verifiers": [...]}')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ponder.models import list_models, ponder_home
    from ponder.scorers.trained import shipped_summaries

    rows, verifiers = list_models(), shipped_summaries()
    if args.json:
        print(json.dumps({"models": rows, "verifiers": verifiers}))
        return 0
    for row in rows:
        print(f"{row['name']:16} {row['description']}\n{'':16} {row['state']}")
    if verifiers:
        print("\nverifiers (--scorer verifier:NAME):")
    for row in verifiers:
        auroc = "" if row["val_auroc"] is None else f", validation AUROC {row['val_auroc']:.2f}"
        print(f"{row['name']:28} {row['kind']} verifier for {row['base_model']}, trained on "
              f"{row['task']}{auroc}")
    print(f"\ncache: {ponder_home()} (set PONDER_HOME to move it)")
    print("also: any HF model folder, any .gguf file, or a hub id like Qwen/Qwen2.5-0.5B-Instruct")
    return 0
