"""The `ponder` command line. Each subcommand lives in ponder/commands/<name>.py and
exposes `register(subparsers)`; this file only wires them together."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

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
    # How torch's OpenMP threads wait between parallel regions. Spinning long (libgomp's
    # default) made decoding several times slower on a CPU shared with another busy process;
    # sleeping at once (OMP_WAIT_POLICY=PASSIVE, this default before) cost a decode step
    # 20-40% on a free CPU, where each of its ~150 regions woke a sleeping thread. A short
    # spin keeps most of both: on a 2-core AMD EPYC, tokens/s at batch 16 (2026-12-05) were
    # 652 spinning 1000 times, 509-541 passive, 688 at libgomp's default on a free CPU, and
    # 342, 398 and 184 beside a busy process. Set before any command imports torch; a
    # user's own setting wins (OMP_WAIT_POLICY=PASSIVE for a shared machine).
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # libgomp's (torch's on Linux)
        os.environ.setdefault("KMP_BLOCKTIME", "0")  # LLVM's and Intel's OpenMP: passive
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
