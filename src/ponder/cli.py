"""The `ponder` command line. Each subcommand lives in ponder/commands/<name>.py and
exposes `register(subparsers)`; this file only wires them together."""

from __future__ import annotations

import argparse
import importlib
import sys

from ponder.openmp import wait_briefly

EPILOG = """examples:
  ponder models                                         what can be loaded
  ponder generate "What is 12 + 35?"                    one sample, streamed
  ponder eval --recipe demo --out runs.db               the main job on the bundled model
  ponder run "What is 12 + 35?" --strategy sc --n 8     one question by self-consistency
  ponder report runs.db --html report.html              tables, plots and a page of a store
  ponder serve --api-key secret                         every strategy behind an OpenAI API
"""

# Order here is the order `ponder --help` lists them.
COMMANDS = ["generate", "run", "eval", "sweep", "report", "models", "rescore", "serve",
            "train-verifier"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ponder",
        description="Inference-time scaling for LLM reasoning: spend more compute at inference "
        "to get better answers. Run `ponder COMMAND --help` for each command.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ponder {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"ponder.commands.{name.replace('-', '_')}").register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ponder")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "(not installed)"


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
    except (ValueError, OSError, ImportError) as exc:
        # Bad input, a path that cannot be read or written, an optional engine not installed,
        # a server that cannot be reached: each a message to act on, not a traceback.
        print(f"ponder {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ponder {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
