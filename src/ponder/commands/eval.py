"""`ponder eval`: run strategies over a task, store every sample in SQLite, print a table.

Runs come from flags, a YAML recipe (`--recipe`), or both (flags override the recipe).
Each run streams into the store one transaction per problem; re-running the same command,
or `--resume`, continues where a killed run stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
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

# Flags that set run options of the same name (--top-p sets top_p); unset ones are None.
FLAG_OPTIONS = ("task", "limit", "levels", "subjects", "shuffle_seed", "prompt", "scorer",
                "label", "n", "temperature", "top_p", "top_k", "min_p", "max_tokens", "seed",
                "iterations", "model", "dtype", "engine")


def register(sub: Any) -> None:
    p = sub.add_parser("eval", help="evaluate strategies on a task; results go to SQLite",
                       description="Run one or more strategies over a task's problems, grade "
                       "every sample, and store everything in a SQLite file as it goes. "
                       "Ends with a table of accuracy (95% CI), tokens and seconds per problem.",
                       epilog=EPILOG.replace("{strategies}", _strategy_names()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", help="YAML recipe: a file, or a shipped name (e.g. sc8, demo)")
    task = p.add_argument_group("task")
    task.add_argument("--task", help="arith, arith:1..3, math500, gsm8k, aime24, amc23 or a .jsonl")
    task.add_argument("--limit", type=int, help="first N problems (after filters and shuffle)")
    task.add_argument("--levels", help="comma list of levels to keep (math500, arith)")
    task.add_argument("--subjects", help="comma list of subjects to keep (math500)")
    task.add_argument("--shuffle-seed", type=int, help="shuffle problems with this seed first")
    add_strategy_args(p, multi=True)
    from ponder.commands._common import add_engine_args

    add_engine_args(p)
    p.set_defaults(model=None, dtype=None)  # None: the recipe's, else the default
    out = p.add_argument_group("store and output")
    out.add_argument("--out", default="runs.db", help="SQLite file (default runs.db)")
    out.add_argument("--resume", action="store_true",
                     help="continue stored runs; alone, every unfinished run in --out")
    out.add_argument("--chunk", type=int, default=None,
                     help="problems per strategy call (default: fill the batch, 1-16)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument("--json", action="store_true", help="end with one JSON line of summaries")
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


def _strategy_names() -> str:
    import textwrap

    from ponder.strategies.registry import ALIASES, STRATEGIES

    short = {v: k for k, v in ALIASES.items() if k != "cot"}
    names = ", ".join(f"{name} ({short[name]})" if name in short else name
                      for name in STRATEGIES)
    return textwrap.fill(f"strategies: {names}, and cot (= greedy decoding with the cot "
                         "prompt style).", 88)


def add_strategy_args(p: argparse.ArgumentParser, multi: bool = False) -> None:
    """Strategy, prompt and sampling flags (shared with `ponder run`); unset flags are None
    so the strategy's (or the recipe's) defaults apply."""
    g = p.add_argument_group("strategy")
    g.add_argument("--strategy", help="a strategy name (see below), e.g. greedy, cot, sc"
                   + ("; a comma list runs each (sampling flags then apply to the "
                      "sampling ones: greedy stays greedy)" if multi else ""))
    g.add_argument("--prompt", help="prompt style: plain, cot, boxed, fewshot (default boxed; "
                   "cot for the cot strategy)")
    g.add_argument("--raw", action="store_true", default=None,
                   help="raw 'Q: ... A:' text instead of the chat template")
    g.add_argument("--scorer", help="mean_logprob, sum_logprob or heuristic (best_of_n needs one)")
    g.add_argument("--iterations", type=int, help="self_refine rounds (default 2)")
    g.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                   help="any other strategy option, e.g. -o alpha=4 (repeatable)")
    g.add_argument("--label", help="a name for the run in tables")
    s = p.add_argument_group("sampling (default: the strategy's own)")
    s.add_argument("--n", type=int, help="samples per problem")
    s.add_argument("--temperature", type=float, help="0 = greedy")
    s.add_argument("--top-p", type=float, help="nucleus mass in (0, 1]")
    s.add_argument("--top-k", type=int, help="keep the k likeliest tokens (0 = off)")
    s.add_argument("--min-p", type=float, help="min-p filter (0 = off)")
    s.add_argument("--max-tokens", type=int, help="new tokens per sample (default 512)")
    s.add_argument("--seed", type=int, help="run seed" + (" (default 0)" if multi else ""))


def flag_options(args: argparse.Namespace) -> dict[str, Any]:
    """The run options given as flags (unset ones left out)."""
    options = {name: getattr(args, name) for name in FLAG_OPTIONS
               if getattr(args, name, None) is not None}
    if getattr(args, "raw", None):
        options["raw"] = True
    for item in getattr(args, "option", None) or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--option takes KEY=VALUE (e.g. alpha=4), got {item!r}")
        options[key.strip().replace("-", "_")] = _scalar(value)
    return options


def _scalar(text: str) -> Any:
    """A flag value as YAML reads it: 4 -> int, 0.5 -> float, true -> bool, else text."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, int | float | bool | str) else text


def build_specs(args: argparse.Namespace) -> list:
    """Every run this command asks for, validated (no model loaded, nothing written)."""
    from ponder.eval.runner import load_recipe, make_spec

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


SAMPLING_FLAGS = ("n", "temperature", "top_p", "top_k", "min_p")


def _keep_greedy_greedy(raw: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """In a command with several runs, sampling flags (--n, --temperature, ...) apply to
    the runs that sample; greedy runs stay greedy with one answer."""
    from ponder.strategies.registry import STRATEGIES, canonical_name

    entry = STRATEGIES[canonical_name(str(raw.get("strategy", "greedy")))]
    if entry.defaults.get("temperature", 1.0) > 0:
        return raw
    return {k: v for k, v in raw.items() if not (k in SAMPLING_FLAGS and k in flags)}


def unfinished_specs(path: str) -> list:
    """`--resume` alone: the stored runs that have fewer problems than planned."""
    from ponder.eval.runner import RunSpec
    from ponder.eval.store import Store

    with Store(path, read_only=True) as store:
        runs = [r for r in store.runs() if r.done < r.planned]
    if not runs:
        raise ValueError(f"nothing to resume: every run in {path} is complete")
    return [RunSpec.from_dict(r.spec) for r in runs]


def run(args: argparse.Namespace) -> int:
    from ponder.engines import ENGINES
    from ponder.eval.report import format_table
    from ponder.eval.store import Store

    if args.chunk is not None and args.chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {args.chunk}")
    if args.engine not in ENGINES:
        raise ValueError(f"unknown engine {args.engine!r}; known: {', '.join(ENGINES)}")
    if args.max_batch_size < 1:
        raise ValueError(f"--max-batch-size must be >= 1, got {args.max_batch_size}")
    if getattr(args, "threads", None) is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if not args.ray and (args.ray_address or args.ray_workers is not None):
        raise ValueError("--ray-workers and --ray-address need --ray")
    pool = _ray_workers(args)  # validated (and Ray found) before anything is written
    bare_resume = args.resume and not (args.recipe or args.task or args.strategy)
    specs = unfinished_specs(args.out) if bare_resume else build_specs(args)
    # Everything is validated: only now do Ray (with --ray) and then the store start (so a
    # cluster that cannot be joined leaves no file). Our SIGTERM handler goes in after
    # ray.init, which installs its own.
    with pool as workers, Store(args.out) as store, _sigterm_as_interrupt():
        summaries = []
        engines: dict[tuple[str, str], Any] = {}
        for spec in specs:
            summary = _run_one(spec, store, engines, args, workers)
            if summary is None:
                return 130
            summaries.append(summary)
    print(format_table(summaries))
    print(f"\nstored in {args.out}; `ponder report {args.out}` shows every run in it",
          file=sys.stderr)
    if args.json:
        print(json.dumps({"runs": [s.to_dict() for s in summaries]}))
    return 0


def _run_one(spec, store, engines: dict, args: argparse.Namespace, pool=None):
    """Run or resume one spec (on the Ray pool when there is one); its summary over the
    selected problems, or None when interrupted (after saying how to resume)."""
    from ponder.eval.report import summarize_run
    from ponder.eval.runner import run_eval

    problems = spec.load_problems()
    ids = [p.id for p in problems]
    done = store.done_ids(spec.run_id) & set(ids)
    if done:
        print(f"{spec.label}: resuming, {len(done)}/{len(problems)} problems already in "
              f"{args.out}", file=sys.stderr)
    try:
        if pool is not None:
            outcome = pool.run(spec, store, problems, chunk=args.chunk,
                               progress=not args.no_progress)
            if outcome.workers:
                print(f"{spec.label}: " + ", ".join(f"{n} problems on {w}" for w, n in
                                                    sorted(outcome.workers.items())),
                      file=sys.stderr)
        else:
            # Even with nothing left to do, run_eval records this invocation (limit, label).
            engine = _engine(engines, spec, args) if len(done) < len(problems) else None
            run_eval(spec, engine, store, problems, chunk=args.chunk,
                     progress=not args.no_progress)
    except KeyboardInterrupt:
        stored = len(store.done_ids(spec.run_id) & set(ids))
        print(f"\ninterrupted: {spec.label} has {stored}/{len(problems)} problems stored in "
              f"{args.out}; run the same command again, or `ponder eval --resume --out "
              f"{args.out}`, to continue", file=sys.stderr)
        return None
    run_row = next(r for r in store.runs() if r.run_id == spec.run_id)
    return summarize_run(store, run_row, ids)


def _ray_workers(args: argparse.Namespace):
    """For --ray, the Ray workers (they start on entering it, stop on leaving); else a
    context that gives None."""
    if not args.ray:
        return contextlib.nullcontext()
    from ponder.eval.distributed import RayWorkers

    return RayWorkers(args, workers=2 if args.ray_workers is None else args.ray_workers,
                      address=args.ray_address, cpus_per_worker=args.ray_cpus_per_worker,
                      gpus_per_worker=args.ray_gpus_per_worker)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """`kill PID` stops an eval as cleanly as Ctrl-C (main thread only)."""
    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    try:
        previous, installed = signal.signal(signal.SIGTERM, interrupt), True
    except ValueError:  # not the main thread: leave signals alone
        previous, installed = None, False
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)


def _engine(cache: dict, spec, args: argparse.Namespace):
    """One engine per (model, dtype), shared by the runs that use it; the other engine
    flags (--device, --threads, ...) as given."""
    from ponder.commands._common import engine_from_args

    key = (spec.engine, spec.model, spec.dtype)
    if key not in cache:
        cache.clear()  # free the previous model first: only one is in use at a time
        cache[key] = engine_from_args(argparse.Namespace(**{
            **vars(args), "engine": spec.engine, "model": spec.model, "dtype": spec.dtype}))
    return cache[key]
