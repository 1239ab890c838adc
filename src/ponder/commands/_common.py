"""Flags and helpers shared by the commands that load a model."""

from __future__ import annotations

import argparse

from ponder.models import DEFAULT_MODEL


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and engine")
    group.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"bundled name, HF folder, .gguf file or hub id (default {DEFAULT_MODEL}; "
                            "see `ponder models`)")
    group.add_argument("--engine", default="hf", help="engine backend (default hf: native torch)")
    group.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                       help="weights dtype (default float32; bfloat16 is ~1.4x faster on CPU)")
    group.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    group.add_argument("--max-batch-size", type=int, default=64,
                       help="samples decoded together (default 64)")
    group.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads (default $PONDER_THREADS, else one per core; on a "
                            "machine shared with other jobs, fewer is often much faster)")


def engine_from_args(args: argparse.Namespace):
    from ponder.engines import load_engine

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    return load_engine(args.engine, model=args.model, dtype=args.dtype, device=args.device,
                       max_batch_size=args.max_batch_size, threads=args.threads)


def add_sampling_args(parser: argparse.ArgumentParser, n_default: int = 1,
                      temperature_default: float = 1.0, max_tokens_default: int = 256) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--n", type=int, default=n_default, help=f"samples (default {n_default})")
    group.add_argument("--temperature", type=float, default=temperature_default,
                       help=f"0 = greedy (default {temperature_default})")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1] (1 = off)")
    group.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens (0 = off)")
    group.add_argument("--min-p", type=float, default=0.0,
                       help="drop tokens below min_p x the top probability (0 = off)")
    group.add_argument("--max-tokens", type=int, default=max_tokens_default,
                       help=f"new tokens per sample (default {max_tokens_default})")
    group.add_argument("--stop", action="append", default=[], metavar="TEXT",
                       help="stop string (repeatable)")
    group.add_argument("--seed", type=int, default=None, help="makes the run reproducible")


def sampling_from_args(args: argparse.Namespace, **overrides):
    from ponder.types import SamplingParams

    values = dict(n=args.n, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                  min_p=args.min_p, max_tokens=args.max_tokens, stop=tuple(args.stop),
                  seed=args.seed)
    values.update(overrides)
    return SamplingParams(**values)
