"""`ponder sweep`: a grid of runs (strategies x option values) over one task, one store.

Every grid point is an ordinary `ponder eval` run (same config hash, same store rows), so
one command produces a scaling curve for `ponder report --png/--html`, and re-running the
command resumes: finished runs are skipped, a killed run continues where it stopped.
"""

from __future__ import annotations

import argparse
import itertools
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
    from ponder.commands._common import (
        add_engine_args,
        add_store_args,
        add_strategy_args,
        add_task_args,
        command_parser,
    )

    p = command_parser(sub, "sweep", help="run a grid of strategies x options over one task",
                       description="Run every combination of strategies and option values "
                       "(--grid) over one task into one store, resumable like `ponder eval`; "
                       "ends with the table of every run.", epilog=EPILOG)
    add_task_args(p, required=True)
    add_strategy_args(p, multi=True)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="an option and its values (repeatable: the product is run)")
    add_engine_args(p)
    p.set_defaults(model=None, dtype=None)
    add_store_args(p, "sweep.db", dry_run=True)
    p.set_defaults(func=run, resume=False)


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """`["n=1,2", "alpha=2,4"]` -> {"n": [1, 2], "alpha": [2, 4]} (values as YAML reads)."""
    from ponder.commands._common import yaml_scalar

    grid: dict[str, list[Any]] = {}
    for item in items:
        key, eq, values = item.partition("=")
        key = key.strip().replace("-", "_")
        parsed = [yaml_scalar(v.strip()) for v in values.split(",") if v.strip()]
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
    from ponder.commands._common import SAMPLING_FLAGS, greedy
    from ponder.eval.spec import RUN_KEYS
    from ponder.strategies.registry import SAMPLING_OPTIONS, STRATEGIES, canonical_name

    entry = STRATEGIES[canonical_name(strategy)]
    if key in SAMPLING_FLAGS and greedy(strategy):
        return False
    return key in RUN_KEYS or key in SAMPLING_OPTIONS or key in entry.extra_options


def build_specs(args: argparse.Namespace) -> list:
    """Every grid point as a validated RunSpec, duplicates removed (nothing loaded)."""
    from ponder.commands._common import flag_options
    from ponder.eval.spec import make_spec

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
    from ponder.commands._common import check_run_args, print_summaries, run_specs

    config = check_run_args(args)
    specs = build_specs(args)
    if args.dry_run:
        print(f"sweep: {len(specs)} run(s) into {args.out}", file=sys.stderr)
        for spec in specs:
            print(f"{spec.run_id[:8]}  {spec.label}")
        return 0

    def announce(i: int, spec) -> None:
        if i == 0:  # the store is open
            print(f"sweep: {len(specs)} run(s) into {args.out}", file=sys.stderr)
        print(f"[{i + 1}/{len(specs)}] {spec.label}", file=sys.stderr)

    summaries = run_specs(specs, args, config, announce=announce)
    if summaries is None:
        print("re-run the same `ponder sweep` command to continue the sweep", file=sys.stderr)
        return 130
    print_summaries(summaries, args, f"`ponder report {args.out} --html report.html --png "
                    "plots/` draws the curves")
    return 0
