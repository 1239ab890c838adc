"""Engine throughput: ponder's batched decode vs a per-sample loop vs `model.generate`.

Bundled model, one chat prompt, 16 samples x 128 new tokens (no early stop), temperature 0.8,
top_p 0.95, all three in one process so machine noise hits them alike. Prints tokens/s and
ratios; the LAST line is one JSON object with the figures.

    python benchmarks/bench_engine.py [--samples 16] [--tokens 128] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from transformers import DynamicCache

from ponder.engines.hf import HFEngine
from ponder.sampling import process_logits
from ponder.types import GenerateRequest, SamplingParams

PROMPT = [{"role": "user", "content": "Explain step by step: what is 17 + 26?"}]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ponder(engine: HFEngine, samples: int, tokens: int) -> int:
    params = SamplingParams(n=samples, temperature=0.8, top_p=0.95, max_tokens=tokens,
                            ignore_eos=True, seed=0)
    [gen] = engine.generate([GenerateRequest(PROMPT, params)])
    return gen.usage.generated_tokens


def run_per_sample_loop(engine: HFEngine, samples: int, tokens: int) -> int:
    """The baseline: one sample after another, one token at a time over a KV cache."""
    model = engine.model
    prompt = torch.tensor([engine.tokenize(PROMPT)])
    gen = torch.Generator().manual_seed(0)
    produced = 0
    with torch.inference_mode():
        for _ in range(samples):
            cache = DynamicCache()
            out = model(input_ids=prompt, past_key_values=cache, use_cache=True)
            for _ in range(tokens):
                logits = process_logits(out.logits[:, -1].float(), 0.8, 0, 0.95, 0.0)
                token = torch.multinomial(logits.softmax(-1), 1, generator=gen)
                out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
                produced += 1
    return produced


def run_hf_generate(engine: HFEngine, samples: int, tokens: int) -> int:
    prompt = torch.tensor([engine.tokenize(PROMPT)])
    torch.manual_seed(0)
    with torch.inference_mode():
        out = engine.model.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=0.8,
            top_p=0.95, top_k=0, num_return_sequences=samples, max_new_tokens=tokens,
            min_new_tokens=tokens, pad_token_id=engine.tokenizer.eos_token_id,
        )
    return (out.shape[1] - prompt.shape[1]) * samples


def timed(fn, *args) -> tuple[int, float]:
    start = time.perf_counter()
    produced = fn(*args)
    return produced, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    engine = HFEngine("smollm2-135m", dtype=args.dtype, device="cpu")
    run_ponder(engine, 2, 4)  # warm-up: first-call allocations
    results = {}
    for name, fn in [("ponder_batched", run_ponder), ("hf_generate", run_hf_generate),
                     ("per_sample_loop", run_per_sample_loop)]:
        produced, seconds = timed(fn, engine, args.samples, args.tokens)
        results[name] = {"tokens": produced, "seconds": round(seconds, 2),
                         "tokens_per_s": round(produced / seconds, 1)}
        print(f"{name:16} {produced:6d} tokens {seconds:7.1f} s {produced / seconds:8.1f} tok/s "
              f"(peak RSS so far {peak_rss_mb():.0f} MB)", flush=True)
    ours = results["ponder_batched"]["tokens_per_s"]
    summary = {
        "samples": args.samples, "new_tokens": args.tokens, "dtype": args.dtype,
        "ponder_tokens_per_s": ours,
        "hf_generate_tokens_per_s": results["hf_generate"]["tokens_per_s"],
        "per_sample_loop_tokens_per_s": results["per_sample_loop"]["tokens_per_s"],
        "speedup_vs_per_sample_loop": round(ours / results["per_sample_loop"]["tokens_per_s"], 2),
        "speedup_vs_hf_generate": round(ours / results["hf_generate"]["tokens_per_s"], 2),
        "peak_rss_mb": round(peak_rss_mb()),
    }
    print(f"speedup vs per-sample loop: {summary['speedup_vs_per_sample_loop']}x (target >= 6); "
          f"vs model.generate: {summary['speedup_vs_hf_generate']}x (target >= 1.0)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
