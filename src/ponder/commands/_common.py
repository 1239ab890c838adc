"""Flags and helpers shared by the commands: the engine, strategy, task and store flags,
the checks `eval` and `sweep` make up front, and running their runs into a store."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from dataclasses import fields, replace
from typing import Any

from ponder.engines.config import EngineConfig
from ponder.models import DTYPE_NAMES

# Flags that set run options of the same name (--top-p sets top_p); unset ones are None.
FLAG_OPTIONS = ("task", "limit", "levels", "subjects", "shuffle_seed", "prompt", "scorer",
                "label", "n", "temperature", "top_p", "top_k", "min_p", "max_tokens", "seed",
                "iterations", "budget", "model", "dtype", "engine")
# The sampling flags that do not apply to a greedy strategy's runs.
SAMPLING_FLAGS = ("n", "temperature", "top_p", "top_k", "min_p")
# EngineConfig fields whose flag stores under another name.
_ENGINE_DESTS = {"api_key": "engine_api_key"}


def command_parser(sub: Any, name: str, *, help: str, description: str,
                   epilog: str) -> argparse.ArgumentParser:
    """A subcommand's parser; `{strategies}` in the epilog becomes the strategy list."""
    if "{strategies}" in epilog:
        epilog = epilog.replace("{strategies}", strategy_names())
    return sub.add_parser(name, help=help, description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """The engine flags; their defaults are EngineConfig's."""
    d = EngineConfig()
    group = parser.add_argument_group("model and engine")
    group.add_argument("--model", default=d.model,
                       help=f"bundled name, HF folder, .gguf file or hub id (default {d.model}; "
                            "see `ponder models`)")
    group.add_argument("--engine", default=d.engine,
                       help="engine backend: hf (default, native torch), vllm, llamacpp, or openai "
                            "(an OpenAI-compatible server; needs --base-url)")
    group.add_argument("--base-url", default=d.base_url, metavar="URL[,URL...]",
                       help="--engine openai: server base URL(s), e.g. http://127.0.0.1:8000/v1; "
                            "several, comma-separated, share the requests (data parallel)")
    # `ponder serve` has its own --api-key (the key its clients need), so there the key for
    # the upstream server of --engine openai is --upstream-api-key.
    key_flag = "--upstream-api-key" if "--api-key" in parser._option_string_actions \
        else "--api-key"
    group.add_argument(key_flag, dest=_ENGINE_DESTS["api_key"], default=d.api_key,
                       metavar="KEY", help="--engine openai: bearer token for the server(s) "
                                           "(default $OPENAI_API_KEY)")
    group.add_argument("--concurrency", type=int, default=d.concurrency,
                       help=f"--engine openai: requests in flight per server "
                            f"(default {d.concurrency})")
    group.add_argument("--tokenizer", default=d.tokenizer,
                       help="--engine openai: the served model's tokenizer (bundled name, HF "
                            "folder, .gguf file or hub id), to render chat prompts and count "
                            "tokens on this side (default: the model name the server gives)")
    group.add_argument("--tensor-parallel-size", type=int, default=d.tensor_parallel_size,
                       help=f"--engine vllm: GPUs per model (default {d.tensor_parallel_size})")
    group.add_argument("--dtype", default=d.dtype, choices=DTYPE_NAMES,
                       help=f"weights dtype (default {d.dtype}; bfloat16 is ~1.4x faster on CPU)")
    group.add_argument("--device", default=d.device,
                       help="cpu or cuda (default: cuda when available)")
    group.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                       help=f"samples decoded together (default {d.max_batch_size})")
    group.add_argument("--threads", type=int, default=d.threads,
                       help="torch CPU threads (default $PONDER_THREADS, else one per core; on a "
                            "machine shared with other jobs, fewer is often much faster)")


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    """The engine flags as an EngineConfig (validated); a flag left None (or absent) takes
    its default."""
    return EngineConfig.from_mapping({
        f.name: getattr(args, _ENGINE_DESTS.get(f.name, f.name), None)
        for f in fields(EngineConfig)})


# --------------------------------------------------------------------------- strategies


def strategy_names() -> str:
    """The strategies and their short names, as a paragraph for a command's epilog."""
    import textwrap

    from ponder.strategies.registry import ALIASES, STRATEGIES

    short = {v: k for k, v in ALIASES.items() if k != "cot"}
    names = ", ".join(f"{name} ({short[name]})" if name in short else name
                      for name in STRATEGIES)
    return textwrap.fill(f"strategies: {names}, and cot (= greedy decoding with the cot "
                         "prompt style).", 88)


def add_strategy_args(p: argparse.ArgumentParser, multi: bool = False,
                      stored: bool = True) -> None:
    """Strategy, prompt and sampling flags (`run`, `eval`, `sweep`); unset flags are None
    so the strategy's (or the recipe's) defaults apply. stored: the command stores runs
    (so --label names them)."""
    g = p.add_argument_group("strategy")
    g.add_argument("--strategy", help="a strategy name (see below), e.g. greedy, cot, sc"
                   + ("; a comma list runs each (sampling flags then apply to the "
                      "sampling ones: greedy stays greedy)" if multi else ""))
    g.add_argument("--prompt", help="prompt style: plain, cot, boxed, fewshot (default boxed; "
                   "cot for the cot strategy)")
    g.add_argument("--raw", action="store_true", default=None,
                   help="raw 'Q: ... A:' text instead of the chat template")
    g.add_argument("--scorer", help="what rates samples or steps (best_of_n and search need "
                   "one): mean_logprob, sum_logprob, self_certainty, heuristic, judge, "
                   "judge_answer, verifier:NAME_OR_FOLDER, STYLE:PATH (qwen-prm, "
                   "math-shepherd, orm), http-prm:URL, http-orm:URL")
    g.add_argument("--iterations", type=int, help="self_refine rounds (default 2)")
    g.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                   help="any other strategy option, e.g. -o alpha=4 (repeatable)")
    if stored:
        g.add_argument("--label", help="a name for the run in tables")
    s = p.add_argument_group("sampling (default: the strategy's own)")
    s.add_argument("--n", type=int, help="samples per problem")
    s.add_argument("--temperature", type=float, help="0 = greedy")
    s.add_argument("--top-p", type=float, help="nucleus mass in (0, 1]")
    s.add_argument("--top-k", type=int, help="keep the k likeliest tokens (0 = off)")
    s.add_argument("--min-p", type=float, help="min-p filter (0 = off)")
    s.add_argument("--max-tokens", type=int, help="new tokens per sample (default 512)")
    s.add_argument("--seed", type=int, help="run seed" + (" (default 0)" if multi else ""))
    s.add_argument("--budget", type=int, metavar="TOKENS",
                   help="compute budget per problem, in tokens (prompts + generated + scorer): "
                        "the strategy's knobs (n, particles, steps...) are set to fit it, "
                        "flags given here being their caps")


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
        options[key.strip().replace("-", "_")] = yaml_scalar(value)
    return options


def yaml_scalar(text: str) -> Any:
    """A flag value as YAML reads it: 4 -> int, 0.5 -> float, true -> bool, else text."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, int | float | bool | str) else text


def greedy(strategy: str) -> bool:
    """Whether `strategy` decodes greedily (temperature 0), so SAMPLING_FLAGS do not apply."""
    from ponder.strategies.registry import STRATEGIES, canonical_name

    return STRATEGIES[canonical_name(strategy)].defaults.get("temperature", 1.0) == 0


# --------------------------------------------------------------------------- eval and sweep


def add_task_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    task = p.add_argument_group("task")
    task.add_argument("--task", required=required,
                      help="arith, arith:1..3, arith-train:1..3 (arith's training split), "
                           "math500, gsm8k, aime24, amc23, humaneval or a .jsonl")
    task.add_argument("--limit", type=int, help="first N problems (after filters and shuffle)")
    task.add_argument("--levels", help="comma list of levels to keep (math500, arith)")
    task.add_argument("--subjects", help="comma list of subjects to keep (math500)")
    task.add_argument("--shuffle-seed", type=int, help="shuffle problems with this seed first")


def add_store_args(p: argparse.ArgumentParser, out: str, *, resume: bool = False,
                   dry_run: bool = False) -> None:
    g = p.add_argument_group("store and output")
    g.add_argument("--out", default=out, help=f"SQLite file (default {out})")
    if resume:
        g.add_argument("--resume", action="store_true",
                       help="continue stored runs; alone, every unfinished run in --out")
    g.add_argument("--chunk", type=int, default=None,
                   help="problems per strategy call (default: fill the batch, 1-16)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    if dry_run:
        g.add_argument("--dry-run", action="store_true", help="list the runs and stop")
    g.add_argument("--json", action="store_true", help="end with one JSON line of summaries")


def check_run_args(args: argparse.Namespace) -> EngineConfig:
    """What `eval` and `sweep` check before anything loads or is written; the engine
    options, validated."""
    if args.chunk is not None and args.chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {args.chunk}")
    config = engine_config_from_args(args)
    if not getattr(args, "ray", False) and (getattr(args, "ray_address", None)
                                            or getattr(args, "ray_workers", None) is not None):
        raise ValueError("--ray-workers and --ray-address need --ray")
    return config


def run_specs(specs: list, args: argparse.Namespace, config: EngineConfig, pool=None,
              announce=None) -> list | None:
    """Run or resume each spec into the store `args.out`, on the Ray workers `pool` (a
    context that gives them) or locally; `announce(i, spec)` is called as run i starts.
    The summaries, or None when interrupted (after saying how to resume). SIGTERM stops a
    run as Ctrl-C does."""
    from ponder.eval.store import Store

    # Ray (with --ray) starts before the store, so a cluster that cannot be joined leaves
    # no file; our SIGTERM handler goes in after ray.init, which installs its own.
    with (pool or contextlib.nullcontext()) as workers, Store(args.out) as store, \
            sigterm_as_interrupt():
        summaries: list = []
        engines: dict[tuple[str, str, str], Any] = {}
        for i, spec in enumerate(specs):
            if announce is not None:
                announce(i, spec)
            summary = _run_one(spec, store, engines, args, config, workers)
            if summary is None:
                return None
            summaries.append(summary)
    return summaries


def print_summaries(summaries: list, args: argparse.Namespace, hint: str) -> None:
    """The table of runs, where they are stored (and `hint`), and with --json a JSON line."""
    from ponder.eval.report import format_table

    print(format_table(summaries))
    print(f"\nstored in {args.out}; {hint}", file=sys.stderr)
    if args.json:
        print(json.dumps({"runs": [s.to_dict() for s in summaries]}))


def _run_one(spec, store, engines: dict, args: argparse.Namespace, config: EngineConfig,
             pool=None):
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
            engine = _engine(engines, spec, config) if len(done) < len(problems) else None
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


def _engine(cache: dict, spec, config: EngineConfig):
    """One engine per (engine, model, dtype), shared by the runs that use it; the other
    engine options (device, threads, ...) as `config` has them."""
    from ponder.engines.config import build_engine

    key = (spec.engine, spec.model, spec.dtype)
    if key not in cache:
        cache.clear()  # free the previous model first: only one is in use at a time
        cache[key] = build_engine(replace(config, engine=spec.engine, model=spec.model,
                                          dtype=spec.dtype))
    return cache[key]


@contextlib.contextmanager
def sigterm_as_interrupt():
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
