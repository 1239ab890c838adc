"""`ponder report runs.db`: the results table for every run stored in a file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

EPILOG = """\
examples:
  ponder report runs.db                    every run: accuracy [95% CI], tokens, seconds,
                                           then maj@k and pass@k for k = 1, 2, 4, ... n
  ponder report runs.db --run 3fa2c1d0     one run (an id prefix or a label)
  ponder report runs.db --json             one JSON object with every summary
  ponder report runs.db --png plots/       also PNG plots: accuracy vs tokens, maj@k and
                                           pass@k, power-sampling histograms, sweeps
  ponder report runs.db --html report.html one self-contained page (no network): sortable
                                           runs, plots, every problem's samples, votes,
                                           search trees and MCMC chains

Safe while `ponder eval` is writing to the same file (it only reads).
"""


def register(sub: Any) -> None:
    p = sub.add_parser("report", help="summarize the runs stored by `ponder eval`",
                       description="Print accuracy with a bootstrap 95% CI, tokens and "
                       "seconds per problem, maj@k and pass@k for each run in a store.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", help="SQLite file written by `ponder eval --out`")
    p.add_argument("--run", action="append", default=[], metavar="ID_OR_LABEL",
                   help="only this run (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--png", metavar="DIR", help="also write PNG plots into DIR")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ponder.eval.report import format_table, summarize_store
    from ponder.eval.store import Store

    _check_outputs(args)
    with Store(args.store, read_only=True) as store:
        summaries = summarize_store(store, args.run)
        done = {s.run_id: s for s in summaries}  # computed once for every output
        if args.png:
            _write_pngs(store, args.png, done)
    if args.json:
        print(json.dumps({"store": args.store, "runs": [s.to_dict() for s in summaries]}))
    else:
        print(format_table(summaries))
    if args.html:
        import sys

        from ponder.eval.html import write_html

        print(f"wrote {write_html(args.store, args.html, done)}", file=sys.stderr)
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    """Where --png and --html write, made ready (folders created) before any work, so a bad
    path fails first, with a message."""
    if args.png:
        if Path(args.png).exists() and not Path(args.png).is_dir():
            raise ValueError(f"--png {args.png}: that is a file; give a folder for the plots "
                             "(it is created when missing)")
        Path(args.png).mkdir(parents=True, exist_ok=True)
    if args.html:
        if Path(args.html).is_dir():
            raise ValueError(f"--html {args.html}: that is a folder; give a file name, e.g. "
                             f"{Path(args.html) / 'report.html'}")
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)


def _write_pngs(store: Any, folder: str, summaries: dict) -> None:
    import sys

    from ponder.eval.plots import build_figures, collect, save_figures

    paths = save_figures(build_figures(collect(store, summaries)), folder)
    print(f"wrote {len(paths)} plot(s) to {folder}: "
          + ", ".join(p.name for p in paths), file=sys.stderr)
