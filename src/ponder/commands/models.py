"""`ponder models`: what can be loaded."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("models", help="list loadable models",
                       description="List the bundled models and their state. Besides these, "
                                   "--model takes any HF model folder, a .gguf file, or a hub "
                                   "id (loaded by transformers where the hub is reachable).")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ponder.models import list_models, ponder_home

    rows = list_models()
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        print(f"{row['name']:16} {row['description']}\n{'':16} {row['state']}")
    print(f"\ncache: {ponder_home()} (set PONDER_HOME to move it)")
    print("also: any HF model folder, any .gguf file, or a hub id like Qwen/Qwen2.5-0.5B-Instruct")
    return 0
