"""The `ponder` command line. Each subcommand lives in ponder/commands/<name>.py and
exposes `register(subparsers)`; this file only wires them together."""

from __future__ import annotations

import argparse
import importlib
import sys

from ponder.openmp import wait_briefly

# Order here is the order `ponder --help` lists them.
COMMANDS = ["generate", "run", "eval", "sweep", "report", "models", "rescore", "serve",
            "train-verifier"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ponder",
        description="Inference-time scaling for LLM reasoning: spend more compute at inference "
        "to get better answers. Run `ponder COMMAND --help` for each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"ponder.commands.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Before any command imports torch: a short spin, then sleep (see ponder/openmp.py).
    wait_briefly()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:  # bad input the user can fix: no traceback
        print(f"ponder {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ponder {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
