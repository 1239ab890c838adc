"""`ponder eval`: run strategies over a task, store every sample in SQLite, print a table.

Runs come from flags, a YAML recipe (`--recipe`), or both (flags override the recipe).
Each run streams into the store one transaction per problem; re-running the same command,
or `--resume`, continues where a killed run stopped.
"""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = """\
examples:
  ponder eval --task arith:1 --strategy greedy,cot,sc --limit 30 --max-tokens 128
  ponder eval --task math500 --strategy self-consistency --n 8 --limit 50 --out runs.db
  ponder eval --recipe demo                       the README comparison (shipped recipe)
  ponder eval --recipe sc8 --task gsm8k --limit 100
  ponder eval --recipe my_runs.yaml --model /path/to/hf-folder
  ponder eval --resume --out runs.db              continue every unfinished run in runs.db
  ponder eval --task gsm8k --strategy sc --n 8 --ray --ray-workers 4   one engine per Ray worker
  ponder report runs.db                           the table again, with maj@k and pass@k

{strategies}
Runs are keyed by a hash of their config (task and filters, strategy and options, prompt, model, dtype, seed,
scorer; not --limit or --label), so re-running a command skips the problems already stored
and a larger --limit extends a run.

recipe (YAML): run options at the top level, optionally a `runs:` list whose entries
override them, e.g.
  task: arith:1
  limit: 30
  runs:
    - {label: greedy, strategy: greedy, prompt: plain}
    - {label: sc8, strategy: self_consistency, n: 8, prompt: fewshot}
shipped recipes: ponder/recipes/*.yaml (greedy, cot, sc8, bon8, self-refine, demo).
"""


def register(sub: Any) -> None:
    from ponder.commands._common import (
        add_engine_args,
        add_store_args,
        add_strategy_args,
        add_task_args,
        command_parser,
    )

    p = command_parser(sub, "eval", help="evaluate strategies on a task; results go to SQLite",
                       description="Run one or more strategies over a task's problems, grade "
                       "every sample, and store everything in a SQLite file as it goes. "
                       "Ends with a table of accuracy (95% CI), tokens and seconds per problem.",
                       epilog=EPILOG)
    p.add_argument("--recipe", help="YAML recipe: a file, or a shipped name (e.g. sc8, demo)")
    add_task_args(p)
    add_strategy_args(p, multi=True)
    add_engine_args(p)
    p.set_defaults(model=None, dtype=None)  # None: the recipe's, else the default
    add_store_args(p, "runs.db", resume=True)
    add_ray_args(p)
    p.set_defaults(func=run)


def add_ray_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("distributed (Ray; pip install 'ponder[ray]')")
    g.add_argument("--ray", action="store_true",
                   help="one engine per Ray worker (built from the engine flags); the problems "
                   "are shared among them and every result goes into --out")
    g.add_argument("--ray-workers", type=int, metavar="N",
                   help="workers, each with its own engine (default 2)")
    g.add_argument("--ray-address", metavar="ADDR",
                   help="join a running Ray cluster (auto, HOST:6379 or ray://HOST:10001); "
                   "default: start a local Ray with one CPU per worker")
    g.add_argument("--ray-cpus-per-worker", type=float, default=1, metavar="C",
                   help="CPUs each worker reserves; its torch threads unless --threads (default 1)")
    g.add_argument("--ray-gpus-per-worker", type=float, default=0, metavar="G",
                   help="GPUs each worker reserves (default 0; 1 for one engine per GPU)")


def build_specs(args: argparse.Namespace) -> list:
    """Every run this command asks for, validated (no model loaded, nothing written)."""
    from ponder.commands._common import flag_options
    from ponder.eval.spec import load_recipe, make_spec

    flags = flag_options(args)
    strategies = [s.strip() for s in (args.strategy or "").split(",") if s.strip()]
    if args.recipe:
        if len(strategies) > 1:
            raise ValueError("--strategy with a comma list and --recipe: choose one")
        raws = [{**entry, **flags} for entry in load_recipe(args.recipe)]
        if strategies:
            raws = [{**r, "strategy": strategies[0]} for r in raws]
    else:
        raws = [{**flags, "strategy": s} for s in strategies or ["greedy"]]
    if len(raws) > 1:
        raws = [_keep_greedy_greedy(raw, flags) for raw in raws]
    specs = [make_spec(raw) for raw in raws]
    if len(specs) > 1 and args.label:
        raise ValueError("--label names one run; this command has several")
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.run_id in seen:
            raise ValueError(f"runs {seen[spec.run_id]!r} and {spec.label!r} have the same "
                             "config: remove one")
        seen[spec.run_id] = spec.label
    return specs


def _keep_greedy_greedy(raw: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """In a command with several runs, sampling flags (--n, --temperature, ...) apply to
    the runs that sample; greedy runs stay greedy with one answer."""
    from ponder.commands._common import SAMPLING_FLAGS, greedy

    if not greedy(str(raw.get("strategy", "greedy"))):
        return raw
    return {k: v for k, v in raw.items() if not (k in SAMPLING_FLAGS and k in flags)}


def unfinished_specs(path: str) -> list:
    """`--resume` alone: the stored runs that have fewer problems than planned."""
    from ponder.eval.spec import RunSpec
    from ponder.eval.store import Store

    with Store(path, read_only=True) as store:
        runs = [r for r in store.runs() if r.done < r.planned]
    if not runs:
        raise ValueError(f"nothing to resume: every run in {path} is complete")
    return [RunSpec.from_dict(r.spec) for r in runs]


def run(args: argparse.Namespace) -> int:
    from ponder.commands._common import check_run_args, print_summaries, run_specs

    config = check_run_args(args)
    pool = _ray_workers(args, config)  # validated (and Ray found) before anything is written
    bare_resume = args.resume and not (args.recipe or args.task or args.strategy)
    specs = unfinished_specs(args.out) if bare_resume else build_specs(args)
    # Everything is validated: only now do Ray (with --ray) and then the store start.
    summaries = run_specs(specs, args, config, pool)
    if summaries is None:
        return 130
    print_summaries(summaries, args, f"`ponder report {args.out}` shows every run in it")
    return 0


def _ray_workers(args: argparse.Namespace, config):
    """For --ray, the Ray workers with engines as `config` says (they start on entering
    it, stop on leaving); else None."""
    if not args.ray:
        return None
    from ponder.eval.distributed import RayWorkers

    return RayWorkers(config, workers=2 if args.ray_workers is None else args.ray_workers,
                      address=args.ray_address, cpus_per_worker=args.ray_cpus_per_worker,
                      gpus_per_worker=args.ray_gpus_per_worker)
