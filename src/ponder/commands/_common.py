"""Flags and helpers shared by the commands that load a model."""

from __future__ import annotations

import argparse

from ponder.models import DEFAULT_MODEL


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and engine")
    group.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"bundled name, HF folder, .gguf file or hub id (default {DEFAULT_MODEL}; "
                            "see `ponder models`)")
    group.add_argument("--engine", default="hf",
                       help="engine backend: hf (default, native torch), vllm, llamacpp, or openai "
                            "(an OpenAI-compatible server; needs --base-url)")
    group.add_argument("--base-url", default=None, metavar="URL[,URL...]",
                       help="--engine openai: server base URL(s), e.g. http://127.0.0.1:8000/v1; "
                            "several, comma-separated, share the requests (data parallel)")
    # `ponder serve` has its own --api-key (the key its clients need), so there the key for
    # the upstream server of --engine openai is --upstream-api-key.
    key_flag = "--upstream-api-key" if "--api-key" in parser._option_string_actions \
        else "--api-key"
    group.add_argument(key_flag, dest="engine_api_key", default=None, metavar="KEY",
                       help="--engine openai: bearer token for the server(s) (default "
                            "$OPENAI_API_KEY)")
    group.add_argument("--concurrency", type=int, default=16,
                       help="--engine openai: requests in flight per server (default 16)")
    group.add_argument("--tokenizer", default=None,
                       help="--engine openai: the served model's tokenizer (bundled name, HF "
                            "folder, .gguf file or hub id), to render chat prompts and count "
                            "tokens on this side (default: the model name the server gives)")
    group.add_argument("--tensor-parallel-size", type=int, default=1,
                       help="--engine vllm: GPUs per model (default 1)")
    group.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                       help="weights dtype (default float32; bfloat16 is ~1.4x faster on CPU)")
    group.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    group.add_argument("--max-batch-size", type=int, default=64,
                       help="samples decoded together (default 64)")
    group.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads (default $PONDER_THREADS, else one per core; on a "
                            "machine shared with other jobs, fewer is often much faster)")


def engine_from_args(args: argparse.Namespace):
    """Build the engine the flags name, passing each backend only the options it takes."""
    from ponder.engines import ENGINES, load_engine

    kind = args.engine
    if kind not in ENGINES:
        raise ValueError(f"unknown engine {kind!r}; known: {', '.join(ENGINES)}")
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    if kind == "hf":
        return load_engine(kind, model=args.model, dtype=args.dtype, device=args.device,
                           max_batch_size=args.max_batch_size, threads=threads)
    if kind == "vllm":
        return load_engine(kind, model=args.model, dtype=args.dtype,
                           tensor_parallel_size=getattr(args, "tensor_parallel_size", 1))
    if kind == "llamacpp":
        return load_engine(kind, model=args.model, threads=threads)
    base_url = getattr(args, "base_url", None)
    if not base_url:
        raise ValueError("--engine openai needs --base-url URL[,URL...], e.g. "
                         "--base-url http://127.0.0.1:8000/v1 (start one with `ponder serve`)")
    model = None if args.model == DEFAULT_MODEL else args.model
    return load_engine(kind, base_urls=[u.strip() for u in base_url.split(",") if u.strip()],
                       model=model, api_key=getattr(args, "engine_api_key", None),
                       concurrency=getattr(args, "concurrency", 16),
                       tokenizer=getattr(args, "tokenizer", None))


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
