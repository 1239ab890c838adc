"""Decode speed with and without reading a prompt shared by a request's samples once
(engines/shared_prefix.py), side by side in one process, on the bundled model.

Workloads (temperature 0.8, top_p 0.95, every sample runs to --tokens new tokens):
- `fewshot`: 8 arith:1 problems with the task's few-shot prompt (~160 tokens), 8 samples each:
  self-consistency@8 over a batch of problems, as `ponder eval` runs it;
- `manyshot`: 4 arith:2 problems with 40 worked examples from the training split in the
  prompt (~1,600 tokens), 16 samples each;
- `short_b64`: bench_engine.py's short chat prompt, 64 samples.

"shared" is the engine as it is; "per_row" the same engine with sharing turned off
(shared_prefix.MIN_SAVED_ROWS out of reach), so every sample reads its own copy of the
prompt. Reported: tokens/s of the whole generate call, and of its decode steps alone (the
call's time less that of the same call with one new token: the prefill is the same code
both ways). Each figure is the best of --rounds interleaved rounds. Both must sample the
same tokens (checked). The LAST line is one JSON object.

    python benchmarks/bench_shared_prefix.py [--tokens 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import time
from unittest.mock import patch

from ponder.engines import shared_prefix
from ponder.engines.cpu import cpu_info
from ponder.engines.hf import HFEngine
from ponder.tasks.arith import make_item
from ponder.tasks.datasets import load_task
from ponder.tasks.prompts import build_prompt
from ponder.types import GenerateRequest, SamplingParams


def workloads() -> dict[str, tuple[list, int]]:
    """name -> (prompts, samples per prompt)."""
    fewshot = [build_prompt(p, "fewshot") for p in load_task("arith:1", limit=8)]
    shots = [(item.question, item.solution)
             for item in (make_item(2, i, split="train") for i in range(40))]
    manyshot = [build_prompt(p, "fewshot", exemplars=shots) for p in load_task("arith:2", limit=4)]
    short = [[{"role": "user", "content": "Explain step by step: what is 17 + 26?"}]]
    return {"fewshot": (fewshot, 8), "manyshot": (manyshot, 16), "short_b64": (short, 64)}


def run(engine: HFEngine, prompts: list, samples: int, tokens: int):
    params = SamplingParams(n=samples, temperature=0.8, top_p=0.95, max_tokens=tokens,
                            ignore_eos=True, seed=0)
    start = time.perf_counter()
    generations = engine.generate([GenerateRequest(p, params) for p in prompts])
    seconds = time.perf_counter() - start
    tokens_out = [c.token_ids for g in generations for c in g.completions]
    return sum(map(len, tokens_out)) / seconds, tokens_out, generations[0].usage.prompt_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per sample")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    engine = HFEngine("smollm2-135m")
    loads = workloads()
    run(engine, loads["fewshot"][0][:2], 2, 4)  # warm-up
    best: dict[str, float] = {}
    prompt_tokens, same = {}, {}
    for round_ in range(1, args.rounds + 1):
        for name, (prompts, samples) in loads.items():
            out = {}
            for mode in ("shared", "per_row"):
                limit = shared_prefix.MIN_SAVED_ROWS if mode == "shared" else 1 << 60
                with patch.object(shared_prefix, "MIN_SAVED_ROWS", limit):
                    rate, out[mode], prompt_tokens[name] = run(engine, prompts, samples,
                                                               args.tokens)
                    first_rate, *_ = run(engine, prompts, samples, 1)
                made = len(prompts) * samples
                seconds, first = made * args.tokens / rate, made / first_rate
                decode = made * (args.tokens - 1) / (seconds - first)
                for key, value in ((f"{name}_{mode}_tokens_per_s", rate),
                                   (f"{name}_{mode}_decode_tokens_per_s", decode)):
                    best[key] = max(best.get(key, 0.0), value)
                print(f"round {round_} {name:10} {mode:8} {len(prompts)} x {samples} samples, "
                      f"prompt {prompt_tokens[name]} tokens: {rate:7.1f} tok/s, first token "
                      f"{first:5.1f} s, decode {decode:7.1f} tok/s", flush=True)
            same[name] = same.get(name, True) and out["shared"] == out["per_row"]
    summary = {"cpu": cpu_info("model name"), "new_tokens": args.tokens, "rounds": args.rounds}
    for name in loads:
        summary[f"{name}_prompt_tokens"] = prompt_tokens[name]
        for part in ("", "decode_"):
            shared = best[f"{name}_shared_{part}tokens_per_s"]
            per_row = best[f"{name}_per_row_{part}tokens_per_s"]
            summary.update({f"{name}_shared_{part}tokens_per_s": round(shared, 1),
                            f"{name}_per_row_{part}tokens_per_s": round(per_row, 1),
                            f"{name}_{part}speedup": round(shared / per_row, 2)})
            print(f"{name} {part or 'whole '}: {shared:.1f} against {per_row:.1f} tok/s "
                  f"({shared / per_row:.2f}x)")
        summary[f"{name}_same_tokens"] = same[name]
        print(f"{name}: same tokens both ways: {same[name]}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
