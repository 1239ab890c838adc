"""`ponder sweep`: a grid of runs (strategies x option values) over one task, one store.

Every grid point is an ordinary `ponder eval` run (same config hash, same store rows), so
one command produces a scaling curve for `ponder report --png/--html`, and re-running the
command resumes: finished runs are skipped, a killed run continues where it stopped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from typing import Any

EPILOG = """\
examples:
  ponder sweep --task arith:1 --strategy sc --grid n=1,2,4,8 --limit 50 --out sc.db
  ponder sweep --task arith:1 --strategy power --grid alpha=1,2,4 --grid mcmc_steps=2,5,10 \\
      --max-tokens 128 --limit 20 --out power.db
  ponder sweep --task gsm8k --strategy sc,bon --scorer mean_logprob --grid n=2,4,8,16
  ponder sweep ... --dry-run                  list the runs, load nothing
  ponder report sweep.db --html report.html --png plots/

--grid KEY=V1,V2,... takes any run or strategy option (n, temperature, max_tokens, alpha,
mcmc_steps, m, token_budget, prompt, ...); several --grid flags make their product. A key
that a strategy does not take (n for greedy, alpha for self-consistency) is left out of its
runs, so strategies with different knobs share one sweep. Re-running the same command (it is
safe after a kill) continues it: each grid point is a run keyed by its config hash.
"""


def register(sub: Any) -> None:
    from ponder.commands._common import add_engine_args
    from ponder.commands.eval import add_strategy_args

    p = sub.add_parser("sweep", help="run a grid of strategies x options over one task",
                       description="Run every combination of strategies and option values "
                       "(--grid) over one task into one store, resumable like `ponder eval`; "
                       "ends with the table of every run.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    task = p.add_argument_group("task")
    task.add_argument("--task", required=True,
                      help="arith, arith:1..3, math500, gsm8k, aime24, amc23 or a .jsonl")
    task.add_argument("--limit", type=int, help="first N problems (after filters and shuffle)")
    task.add_argument("--levels", help="comma list of levels to keep (math500, arith)")
    task.add_argument("--subjects", help="comma list of subjects to keep (math500)")
    task.add_argument("--shuffle-seed", type=int, help="shuffle problems with this seed first")
    add_strategy_args(p, multi=True)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="an option and its values (repeatable: the product is run)")
    add_engine_args(p)
    p.set_defaults(model=None, dtype=None)
    out = p.add_argument_group("store and output")
    out.add_argument("--out", default="sweep.db", help="SQLite file (default sweep.db)")
    out.add_argument("--chunk", type=int, default=None,
                     help="problems per strategy call (default: fill the batch, 1-16)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument("--dry-run", action="store_true", help="list the runs and stop")
    out.add_argument("--json", action="store_true", help="end with one JSON line of summaries")
    p.set_defaults(func=run, resume=False)


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """`["n=1,2", "alpha=2,4"]` -> {"n": [1, 2], "alpha": [2, 4]} (values as YAML reads)."""
    from ponder.commands.eval import _scalar

    grid: dict[str, list[Any]] = {}
    for item in items:
        key, eq, values = item.partition("=")
        key = key.strip().replace("-", "_")
        parsed = [_scalar(v.strip()) for v in values.split(",") if v.strip()]
        if not eq or not key or not parsed:
            raise ValueError(f"--grid takes KEY=V1,V2,... (e.g. n=1,2,4), got {item!r}")
        if key in grid:
            raise ValueError(f"--grid {key} given twice")
        if key in ("task", "strategy", "label"):
            raise ValueError(f"--grid {key}: a sweep has one task; list strategies in "
                             "--strategy; labels are made per run")
        grid[key] = parsed
    return grid


def _takes(strategy: str, key: str) -> bool:
    """Whether a run of `strategy` uses option `key` (greedy ones take no sampling keys)."""
    from ponder.commands.eval import SAMPLING_FLAGS
    from ponder.eval.runner import RUN_KEYS
    from ponder.strategies.registry import SAMPLING_OPTIONS, STRATEGIES, canonical_name

    entry = STRATEGIES[canonical_name(strategy)]
    if key in SAMPLING_FLAGS and entry.defaults.get("temperature", 1.0) == 0:
        return False
    return key in RUN_KEYS or key in SAMPLING_OPTIONS or key in entry.extra_options


def build_specs(args: argparse.Namespace) -> list:
    """Every grid point as a validated RunSpec, duplicates removed (nothing loaded)."""
    from ponder.commands.eval import flag_options
    from ponder.eval.runner import make_spec

    flags = flag_options(args)
    if args.label:
        raise ValueError("--label names one run; a sweep labels each run itself")
    grid = parse_grid(args.grid)
    strategies = [s.strip() for s in (args.strategy or "").split(",") if s.strip()]
    if not strategies:
        raise ValueError("give --strategy (a name or a comma list, e.g. sc,power)")
    unused = [k for k in grid if not any(_takes(s, k) for s in strategies)]
    if unused:
        raise ValueError(f"--grid {', '.join(unused)}: no strategy of this sweep "
                         f"({', '.join(strategies)}) takes it")
    specs, seen = [], set()
    for strategy in strategies:
        keys = [k for k in grid if _takes(strategy, k)]
        for values in itertools.product(*(grid[k] for k in keys)):
            point = dict(zip(keys, values, strict=True))
            spec = make_spec({**flags, **point, "strategy": strategy})
            if spec.run_id in seen:
                continue
            seen.add(spec.run_id)
            extra = ", ".join(f"{k}={v}" for k, v in point.items() if k != "n")
            if extra:
                from dataclasses import replace

                spec = replace(spec, label=f"{spec.label} {extra}")
            specs.append(spec)
    return specs


def run(args: argparse.Namespace) -> int:
    from ponder.commands.eval import _run_one, _sigterm_as_interrupt
    from ponder.engines import ENGINES
    from ponder.eval.report import format_table
    from ponder.eval.store import Store

    if args.chunk is not None and args.chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {args.chunk}")
    if args.engine not in ENGINES:
        raise ValueError(f"unknown engine {args.engine!r}; known: {', '.join(ENGINES)}")
    specs = build_specs(args)
    if args.dry_run:
        print(f"sweep: {len(specs)} run(s) into {args.out}", file=sys.stderr)
        for spec in specs:
            print(f"{spec.run_id[:8]}  {spec.label}")
        return 0
    with Store(args.out) as store, _sigterm_as_interrupt():
        print(f"sweep: {len(specs)} run(s) into {args.out}", file=sys.stderr)
        summaries, engines = [], {}
        for i, spec in enumerate(specs):
            print(f"[{i + 1}/{len(specs)}] {spec.label}", file=sys.stderr)
            summary = _run_one(spec, store, engines, args)
            if summary is None:
                print("re-run the same `ponder sweep` command to continue the sweep",
                      file=sys.stderr)
                return 130
            summaries.append(summary)
    print(format_table(summaries))
    print(f"\nstored in {args.out}; `ponder report {args.out} --html report.html --png plots/`"
          " draws the curves", file=sys.stderr)
    if args.json:
        print(json.dumps({"runs": [s.to_dict() for s in summaries]}))
    return 0
