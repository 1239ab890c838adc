"""Engine throughput against what the hardware allows, in one process.

Bundled model, one chat prompt, B samples x T new tokens (no early stop), temperature 0.8,
top_p 0.95. Measured here, in the same run:

- the roofline: the least time a decode step at batch B can take here. It must do the
  model's weight matmuls (every Linear, lm_head included: bare torch matmuls on random
  inputs at batch B, the mean pass over two seconds of passes, with the fastest of aten's
  matmul and oneDNN's, each on plain or packed weights, and with q/k/v and gate/up stacked
  where the engine stacks them) and read the keys and values it attends
  to: the prompt's once (the B samples share it, and the engine reads it once per step
  where that pays, engines/shared_prefix.py) and each sample's own tokens at the run's
  mean count, at the weight-read bandwidth measured at B=1. Reported as tokens/s = B /
  that time, beside the weights-only figure, the bandwidth, the matmul throughput implied
  from B=1 to B=64, and the fraction against a roofline that reads the prompt once per
  sample (`_prompt_per_row`, the definition before the engine shared it).
- ponder's native engine at B = 1, 16, 64, at B=16 with transformers' forward in place
  of its lean one (engines/lean.py), as the engine ran before that existed, and at B = 16
  and 64 with torch's ops in place of the compiled loops (engines/decode_kernels.py:
  attention, the norms and gate between the matmuls, the sampling statistics and draw, and
  the matmuls on panels, which give way to oneDNN's or MKL's packed weights) where those
  are built;
- `model.generate` at B=16, and the per-sample loop (one sample at a time, a KV cache, one
  token per forward). The loop's tokens/s does not depend on B (each sample runs alone), so
  it is timed on --loop-samples samples;
- llama.cpp (llama-cpp-python) at B=16 where it is installed;
- the ceiling the roofline puts on the speedup targets: the B=16 roofline's tokens/s over
  the per-sample loop's and over `model.generate`'s.

Every figure is the best of --rounds interleaved rounds. Prints a table; the LAST line is
one JSON object with the figures.

On a GPU (--device cuda, the default where torch sees one) the same runs go to the GPU and
the roofline's matmul pass is one CUDA graph (see roofline_seconds); llama.cpp is skipped.
--model takes any HF folder (the engine's native path for its family; figures are then that
model's).

    python benchmarks/bench_engine.py [--tokens 128] [--dtype float32] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from unittest.mock import patch

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from ponder.engines import decode_kernels
from ponder.engines import kv as kvlib
from ponder.engines.cpu import cpu_info
from ponder.engines.hf import HFEngine
from ponder.engines.kv import cache_argument
from ponder.engines.lean import lean_twin, linear_kernels, pick_linear, weight_groups, why_not_lean
from ponder.sampling import process_logits
from ponder.types import GenerateRequest, SamplingParams

PROMPT = [{"role": "user", "content": "Explain step by step: what is 17 + 26?"}]
BATCHES = (1, 16, 64)


def cpu_name() -> str:
    """The CPU's model name: which CPU a figure was measured on changes which matmul kernel
    wins and how high the roofline is (lean.pick_linear)."""
    return cpu_info("model name") or platform.processor() or platform.machine()


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so a timer stops when the work is done."""
    if isinstance(device, torch.device) and device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def roofline_seconds(model, batch: int, linear=F.linear, sustain: float = 2.0) -> float:
    """Mean time of one pass of bare matmuls (`linear`) over every weight matrix of the
    model, over passes repeated for `sustain` seconds: a sustained rate, as a decode run must
    sustain it (the best of a few short passes caught this machine's brief fast moments).

    On a GPU the pass is one CUDA graph, replayed: the floor is then what the GPU's memory
    and matmul units allow, not the ~200 kernel launches a pass takes from Python (which
    would be most of it for a model this small, and which a graph-launched step avoids)."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    device = weights[0].device
    inputs = {w.shape[1]: torch.randn(batch, w.shape[1], dtype=w.dtype, device=device)
              for w in weights}
    # A kernel that multiplies by stacked weights does here what it does in the engine.
    many = getattr(linear, "many", None)
    groups = ([(w,) for w in weights] if many is None or why_not_lean(model) is not None
              else weight_groups(model))

    def one_pass() -> None:
        for group in groups:
            x = inputs[group[0].shape[1]]
            if len(group) == 1:
                linear(x, group[0], None)
            else:
                many(x, group, [None] * len(group))

    run, per_check = one_pass, 1
    with torch.inference_mode():
        # Untimed: cuBLAS picks its kernels and workspace (before a capture); packed
        # weights are packed.
        one_pass()
        synchronize(device)
        if device.type == "cuda":
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                one_pass()
            run, per_check = graph.replay, 20  # a sync per pass would add its own time
        passes = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < sustain or passes < 3:
            for _ in range(per_check):
                run()
            synchronize(device)
            passes += per_check
    return elapsed / passes


def kv_bytes_per_token(model) -> int:
    """Bytes of keys and values one cached token holds, over all layers."""
    config = model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * model.lm_head.weight.element_size()


def run_engine(engine: HFEngine, samples: int, tokens: int) -> int:
    params = SamplingParams(n=samples, temperature=0.8, top_p=0.95, max_tokens=tokens,
                            ignore_eos=True, seed=0)
    [gen] = engine.generate([GenerateRequest(PROMPT, params)])
    return gen.usage.generated_tokens


def run_without_lean(engine: HFEngine, samples: int, tokens: int) -> int:
    """The engine with transformers' forward instead of the lean one (as before it was)."""
    with patch.object(kvlib, "lean_twin", lambda model: None):
        return run_engine(engine, samples, tokens)


def run_per_sample_loop(engine: HFEngine, samples: int, tokens: int) -> int:
    """The baseline: one sample after another, one token at a time over a KV cache."""
    model, arg = engine.model, cache_argument(engine.model)
    prompt = torch.tensor([engine.tokenize(PROMPT)], device=engine.device)
    gen = torch.Generator(device=engine.device).manual_seed(0)
    produced = 0
    with torch.inference_mode():
        for _ in range(samples):
            cache = DynamicCache()
            out = model(input_ids=prompt, use_cache=True, **{arg: cache})
            for _ in range(tokens):
                logits = process_logits(out.logits[:, -1].float(), 0.8, 0, 0.95, 0.0)
                token = torch.multinomial(logits.softmax(-1), 1, generator=gen)
                out = model(input_ids=token, use_cache=True, **{arg: cache})
                produced += 1
    return produced


_TORCH_MATMUL: dict = {}  # the matmul kernel the engine takes without the compiled loops


def run_with_torch_ops(engine: HFEngine, samples: int, tokens: int) -> int:
    """The engine with torch's ops instead of the compiled loops (as before them): the decode
    loops off, and the matmuls through what lean.pick_linear takes without ponder's panels
    (oneDNN's or MKL's packed weights; packed once, kept between rounds)."""
    twin = lean_twin(engine.model)
    with patch.object(decode_kernels, "load", lambda: None):
        if twin is None:
            return run_engine(engine, samples, tokens)
        if not _TORCH_MATMUL:
            _TORCH_MATMUL["linear"] = pick_linear(twin.weight_bytes)
        with patch.object(twin, "linear", _TORCH_MATMUL["linear"]):
            return run_engine(engine, samples, tokens)


def run_hf_generate(engine: HFEngine, samples: int, tokens: int) -> int:
    prompt = torch.tensor([engine.tokenize(PROMPT)], device=engine.device)
    torch.manual_seed(0)
    with torch.inference_mode():
        out = engine.model.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=0.8,
            top_p=0.95, top_k=0, num_return_sequences=samples, max_new_tokens=tokens,
            min_new_tokens=tokens, pad_token_id=engine.tokenizer.eos_token_id,
        )
    return (out.shape[1] - prompt.shape[1]) * samples


def llamacpp_engine():
    from ponder.engines.llamacpp import LlamaCppEngine

    try:
        return LlamaCppEngine("smollm2-135m")
    except ImportError:  # llama-cpp-python is not installed
        return None


def timed(fn, engine, *args) -> tuple[int, float]:
    start = time.perf_counter()
    produced = fn(engine, *args)
    synchronize(getattr(engine, "device", None))
    return produced, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per sample")
    parser.add_argument("--loop-samples", type=int, default=2,
                        help="samples the per-sample loop is timed on")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds; each figure keeps its best round")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--model", default="smollm2-135m",
                        help="bundled name, HF folder or .gguf file (default: the bundled model)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda where torch sees a GPU, else cpu")
    args = parser.parse_args()

    engine = HFEngine(args.model, dtype=args.dtype, device=args.device)
    gpu = torch.cuda.get_device_name(engine.device) if engine.device.type == "cuda" else None
    print(f"device {engine.device} ({gpu or cpu_name()}), {torch.get_num_threads()} CPU threads",
          flush=True)
    run_engine(engine, 2, 4)  # warm-up: first-call allocations

    weight_bytes = sum(m.weight.numel() * m.weight.element_size()
                       for m in engine.model.modules() if isinstance(m, torch.nn.Linear))
    weight_params = weight_bytes // engine.model.lm_head.weight.element_size()
    prompt_tokens = len(engine.tokenize(PROMPT))
    own_tokens = (args.tokens + 1) / 2  # a sample's own cached tokens, mean over its steps

    runs = [(f"ponder_b{b}", run_engine, engine, b) for b in BATCHES]
    runs.append(("ponder_b16_transformers_forward", run_without_lean, engine, 16))
    loop = decode_kernels.load() is not None and engine.device.type == "cpu"
    print("decode loops: " + ("compiled (engines/decode_kernels.py)" if loop
                              else f"torch's ops ({decode_kernels.why_not()})"))
    if loop:
        runs += [(f"ponder_b{b}_torch_ops", run_with_torch_ops, engine, b)
                 for b in (16, 64)]
    runs += [("hf_generate_b16", run_hf_generate, engine, 16),
             ("per_sample_loop", run_per_sample_loop, engine, args.loop_samples)]
    if engine.device.type == "cpu" and args.model == "smollm2-135m":
        llama, why = llamacpp_engine(), "not installed here (pip install llama-cpp-python)"
    else:  # llama.cpp runs the bundled model's GGUF, on the CPU
        llama, why = None, "compared only on the bundled model on a CPU"
    if llama is not None:
        runs.append(("llamacpp_b16", run_engine, llama, 16))
    else:
        print(f"llama.cpp: {why}, skipped")
    # The roofline takes the fastest matmul this torch has at each batch, aten's or oneDNN's,
    # each on plain or on packed weights: which one wins depends on the CPU and the batch (see
    # lean.pick_linear). A GPU has cuBLAS's.
    kernels = linear_kernels() if engine.device.type == "cpu" else [F.linear]
    # This machine's speed drifts by 10-30% over minutes, so every measurement (the
    # roofline's too) is repeated in interleaved rounds and each keeps its best round.
    linears = {b: float("inf") for b in BATCHES}
    rate = {name: 0.0 for name, *_ in runs}
    for round_ in range(1, args.rounds + 1):
        for b in BATCHES:
            for kernel in kernels:
                linears[b] = min(linears[b], roofline_seconds(engine.model, b, kernel))
        for name, fn, target, batch in runs:
            produced, seconds = timed(fn, target, batch, args.tokens)
            rate[name] = max(rate[name], produced / seconds)
            print(f"round {round_} {name:30} {produced:6d} tokens {seconds:7.1f} s "
                  f"{produced / seconds:8.1f} tok/s (peak RSS {peak_rss_mb():.0f} MB)", flush=True)

    bandwidth = weight_bytes / linears[1]
    # The throughput the 63 extra rows imply. On a GPU a pass of a model this small is
    # kernel latency, not matmul work, at either batch (the H200 measured 10 PFLOP/s this
    # way, ten times its peak): no throughput is implied there (reported as null).
    extra_rows = linears[64] - linears[1] if engine.device.type == "cpu" else 0.0
    matmul_flops = 2 * weight_params * 63 / extra_rows if extra_rows > 0 else None
    kv_seconds = kv_bytes_per_token(engine.model) / bandwidth  # per cached token read
    roof = {b: b / (linears[b] + kv_seconds * (prompt_tokens + b * own_tokens))
            for b in BATCHES}
    roof_prompt_per_row = {b: b / (linears[b] + kv_seconds * b * (prompt_tokens + own_tokens))
                           for b in BATCHES}
    print(f"roofline: {bandwidth / 1e9:.1f} GB/s weight reads at B=1, "
          + (f"{matmul_flops / 1e9:.0f} GFLOP/s per extra row" if matmul_flops
             else "no matmul rate implied (a pass is kernel latency at every batch)"))
    for name, *_ in runs:
        batch = next((b for b in BATCHES if name.endswith(f"_b{b}")), None)
        share = f"{rate[name] / roof[batch]:.2f} of roofline" if batch else ""
        print(f"best {name:30} {rate[name]:8.1f} tok/s {share:>18}")
    for b in BATCHES:
        print(f"roofline B={b:<3} {roof[b]:8.1f} tok/s ({b / linears[b]:.0f} weights only)")

    summary = {
        "cpu": cpu_name(), "device": engine.device.type, "gpu": gpu, "model": args.model,
        "new_tokens": args.tokens, "rounds": args.rounds, "dtype": args.dtype, "threads": torch.get_num_threads(),
        "weight_read_gb_per_s": round(bandwidth / 1e9, 1),
        "matmul_gflop_per_s": round(matmul_flops / 1e9) if matmul_flops else None,
        **{f"roofline_tokens_per_s_b{b}": round(roof[b], 1) for b in BATCHES},
        **{f"weights_only_roofline_fraction_b{b}": round(rate[f"ponder_b{b}"] * linears[b] / b, 3)
           for b in BATCHES},
        **{f"ponder_tokens_per_s_b{b}": round(rate[f"ponder_b{b}"], 1) for b in BATCHES},
        **{f"roofline_fraction_b{b}": round(rate[f"ponder_b{b}"] / roof[b], 3) for b in BATCHES},
        **{f"roofline_fraction_b{b}_prompt_per_row":
           round(rate[f"ponder_b{b}"] / roof_prompt_per_row[b], 3) for b in BATCHES},
        "hf_generate_tokens_per_s_b16": round(rate["hf_generate_b16"], 1),
        "hf_generate_roofline_fraction_b16": round(rate["hf_generate_b16"] / roof[16], 3),
        "per_sample_loop_tokens_per_s": round(rate["per_sample_loop"], 1),
        "llamacpp_tokens_per_s_b16": round(rate["llamacpp_b16"], 1) if llama else None,
        "speedup_vs_per_sample_loop": round(rate["ponder_b16"] / rate["per_sample_loop"], 2),
        "speedup_vs_hf_generate": round(rate["ponder_b16"] / rate["hf_generate_b16"], 2),
        "decode_loops": "compiled" if loop else decode_kernels.why_not(),
        **{f"torch_ops_tokens_per_s_b{b}": round(rate[f"ponder_b{b}_torch_ops"], 1)
           if loop else None for b in (16, 64)},
        "transformers_forward_tokens_per_s_b16": round(rate["ponder_b16_transformers_forward"], 1),
        "lean_over_transformers_forward_b16": round(
            rate["ponder_b16"] / rate["ponder_b16_transformers_forward"], 2),
        # The most an engine exactly at the B=16 roofline would be over each baseline: where
        # a target is above it, no B=16 engine built on these matmuls can reach the target.
        "roofline_over_per_sample_loop": round(roof[16] / rate["per_sample_loop"], 2),
        "roofline_over_hf_generate": round(roof[16] / rate["hf_generate_b16"], 2),
        "peak_rss_mb": round(peak_rss_mb()),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated(engine.device) / 2**20)
        if gpu else None,
    }
    print(f"at B=16: {summary['speedup_vs_per_sample_loop']}x the per-sample loop (target >= 10), "
          f"{summary['speedup_vs_hf_generate']}x model.generate (target >= 2); roofline fraction "
          f"{summary['roofline_fraction_b16']} at 16, {summary['roofline_fraction_b64']} at 64 "
          "(target >= 0.7); an engine at the B=16 roofline would be "
          f"{summary['roofline_over_per_sample_loop']}x the loop and "
          f"{summary['roofline_over_hf_generate']}x model.generate")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
