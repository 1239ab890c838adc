"""The GPU check: the engines, a served reward model and step searches on one GPU.

Randomly initialised models of the released shapes, in minutes (run it with
scripts/gpu_check.sh):

- a policy of Qwen2.5-1.5B's shape (hidden 1536, 28 layers, 12 heads, 2 KV heads,
  intermediate 8960, vocab 151936) and a PRM of Qwen2.5-Math-PRM-7B's (hidden 3584, 28 heads,
  4 KV heads, intermediate 18944, vocab 152064) with its layers cut (--prm-layers) to fit
  the time, both random, saved with the bundled model's tokenizer (offline) to a temporary
  folder (removed at the end);
- the native engine's tokens/s at 64 samples (after a warm-up);
- in-process vLLM's tokens/s at 64 samples, in its own process on --vllm-python (default
  this interpreter), so its memory reservation meets a free GPU; reported as skipped, with
  the reason, where that interpreter cannot `import vllm`;
- `ponder serve --reward-model qwen-prm:FOLDER` on loopback, read through `http-prm:URL` by
  best-of-16, beam search and particle filtering on arith problems: wall seconds per problem;
- peak GPU memory (torch.cuda.max_memory_allocated) of the policy (native engine runs and
  searches) and of the PRM (the same weights scoring in this process); null on CPU.

--tiny swaps in CPU-sized models (hidden 64, 2 layers, a vocabulary a little over the
tokenizer's) and short runs; the test suite runs it (tests/test_gpu_check.py) so the check cannot rot.
Progress goes to stderr; the last line of stdout is one JSON object. Any failure exits
non-zero.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ponder.testing.random_models import QWEN25_1_5B, QWEN25_MATH_PRM_7B, QwenShape
from ponder.testing.served import ServeProcess

# The tiny policy's vocabulary exceeds the bundled tokenizer's 49152 as Qwen2.5's does its
# tokenizer's, so both configs sample ids no tokenizer has (they decode to nothing).
TINY = {"policy": QwenShape(64, 2, 2, 1, 128, vocab=49152 + 64), "prm": QwenShape(64, 2, 2, 1, 128),
        "tokens": 8, "problems": 1, "best_of": 16, "step_tokens": 8, "steps": 2,
        "beams": 4, "particles": 4}
FULL = {"policy": QWEN25_1_5B, "prm": QWEN25_MATH_PRM_7B, "tokens": 256, "problems": 2,
        "best_of": 16, "step_tokens": 64, "steps": 4, "beams": 8, "particles": 8}
SAMPLES = 64
PROMPT = [{"role": "user", "content": "Explain step by step: what is 17 + 26?"}]


START = time.perf_counter()


def log(message: str) -> None:
    print(f"gpu_check [{time.perf_counter() - START:5.1f} s]: {message}", file=sys.stderr,
          flush=True)


def rate_params(tokens: int, n: int = SAMPLES):
    from ponder.types import SamplingParams

    return SamplingParams(n=n, temperature=0.8, top_p=0.95, max_tokens=tokens,
                          ignore_eos=True, seed=0)


def tokens_per_s(engine, tokens: int) -> tuple[float, object]:
    """Warm up, then time SAMPLES x `tokens` new tokens; (tokens/s, the Generation)."""
    from ponder.types import GenerateRequest

    engine.generate([GenerateRequest(PROMPT, rate_params(4, n=4))])
    started = time.perf_counter()
    [gen] = engine.generate([GenerateRequest(PROMPT, rate_params(tokens))])
    wall = time.perf_counter() - started
    made = gen.usage.generated_tokens
    if made != SAMPLES * tokens:
        raise RuntimeError(f"asked for {SAMPLES} x {tokens} tokens, got {made}")
    return made / wall, gen


# ---- vLLM, in its own process ----------------------------------------------------------

def vllm_phase(args) -> None:
    """Run in the vLLM interpreter: load VLLMEngine on the policy, print one JSON line."""
    if importlib.util.find_spec("vllm") is None:
        print(json.dumps({"skipped": f"vllm is not installed in {sys.executable}"}))
        return
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # an install that cannot import is reported, not hidden
        print(json.dumps({"skipped": f"`import vllm` fails in {sys.executable}: "
                                     f"{type(exc).__name__}: {str(exc)[:200]}"}))
        return
    from ponder.engines.vllm import VLLMEngine

    options = {"max_model_len": 2048}
    if args.device == "cuda":  # share the GPU with the PRM server and the native engine
        options["gpu_memory_utilization"] = args.vllm_memory
    started = time.perf_counter()
    engine = VLLMEngine(model=args.vllm_phase, dtype=args.dtype, seed=0, **options)
    load = time.perf_counter() - started
    rate, _ = tokens_per_s(engine, args.tokens)
    print(json.dumps({"tokens_per_s": round(rate, 1), "load_s": round(load, 1)}))


def run_vllm(python: str, policy: str, args, config) -> dict:
    if python == sys.executable and importlib.util.find_spec("vllm") is None:
        return {"skipped": f"vllm is not installed in {sys.executable}"}  # as the run would say
    cmd = [python, str(Path(__file__).resolve()), "--vllm-phase", policy, "--device",
           args.device, "--dtype", args.dtype, "--tokens", str(config["tokens"]),
           "--vllm-memory", str(args.vllm_memory)]
    log(f"vLLM: {python}")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.vllm_timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the vLLM run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    for line in reversed(done.stdout.splitlines()):  # vLLM may log to stdout after it
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"the vLLM run printed no figures:\n{done.stdout[-2000:]}")


# ---- the reward model server --------------------------------------------------------------

class RewardServer(ServeProcess):
    """`ponder serve --reward-model qwen-prm:FOLDER` on a free loopback port. Its own engine
    (which the check does not use) is the bundled model on the CPU."""

    def __init__(self, prm: str, workdir: Path, threads: int | None, timeout: float = 300):
        flags = ["--host", "127.0.0.1", "--device", "cpu", "--max-concurrent", "256",
                 "--reward-model", f"qwen-prm:{prm}"]
        super().__init__(workdir, flags + (["--threads", str(threads)] if threads else []),
                         timeout=timeout)


# ---- the check ----------------------------------------------------------------------------

def vocab(folder: str) -> int:
    """The vocabulary size the saved model has (at least its tokenizer's)."""
    return json.loads((Path(folder) / "config.json").read_text())["vocab_size"]


def peak_mb(device: str) -> float | None:
    import torch

    if device != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def reset_peak(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def time_searches(engine, scorer, config) -> dict:
    from ponder.strategies.registry import make_strategy
    from ponder.tasks import load_task

    problems = load_task("arith:1", limit=config["problems"])
    searches = {
        "best_of_n": make_strategy("best_of_n", n=config["best_of"], temperature=0.8,
                                   max_tokens=config["step_tokens"] * config["steps"], seed=0),
        "beam_search": make_strategy("beam_search", n=config["beams"], m=2,
                                     max_steps=config["steps"],
                                     max_tokens=config["step_tokens"], seed=0),
        "particle_filter": make_strategy("particle_filter", n=config["particles"],
                                         max_steps=config["steps"],
                                         max_tokens=config["step_tokens"], seed=0),
    }
    out = {}
    for name, strategy in searches.items():
        started = time.perf_counter()
        results = strategy.run(problems, engine, scorer)
        wall = time.perf_counter() - started
        read = sum(r.usage.scorer_tokens for r in results)
        if len(results) != len(problems) or read <= 0:
            raise RuntimeError(f"{name}: {len(results)} results, {read} tokens scored")
        out[name] = {"seconds_per_problem": round(wall / len(problems), 3),
                     "policy_tokens": sum(r.usage.generated_tokens for r in results),
                     "scorer_tokens": read}
        log(f"{name}: {out[name]}")
    return out


def check(args, work: Path) -> dict:
    import torch
    from transformers import AutoTokenizer

    from ponder.engines.hf import HFEngine
    from ponder.engines.vllm import model_folder
    from ponder.scorers.base import ScoreItem
    from ponder.scorers.registry import make_scorer
    from ponder.testing.random_models import build_qwen_policy, build_qwen_prm

    started = time.perf_counter()
    config = dict(TINY if args.tiny else FULL)
    if args.prm_layers:
        config["prm"] = QwenShape(**{**config["prm"].as_dict(), "layers": args.prm_layers})
    if args.policy_layers:
        config["policy"] = QwenShape(**{**config["policy"].as_dict(),
                                        "layers": args.policy_layers})
    if args.tokens:
        config["tokens"] = args.tokens
    device = args.device
    tokenizer = AutoTokenizer.from_pretrained(model_folder("smollm2-135m"))  # offline
    log(f"building random models on {device} ({args.dtype}) in {work}")
    policy = build_qwen_policy(work / "policy", tokenizer, config["policy"], dtype=args.dtype,
                               device=device)
    prm, _ = build_qwen_prm(work / "prm", tokenizer, shape=config["prm"], dtype=args.dtype,
                            device=device)
    reset_peak(device)
    built = time.perf_counter() - started

    # vLLM first, in its own process, while the GPU is still free.
    vllm = run_vllm(args.vllm_python, policy, args, config)
    log(f"vLLM: {vllm}")

    server = RewardServer(prm, work, args.threads)
    scorer = make_scorer(f"http-prm:{server.url}", concurrency=64, max_retries=10,
                         backoff=0.05)
    try:
        log(f"PRM served at {server.url}; loading the policy in the native engine")
        reset_peak(device)
        engine = HFEngine(policy, dtype=args.dtype, device=device, max_batch_size=SAMPLES,
                          threads=args.threads)
        native_rate, gen = tokens_per_s(engine, config["tokens"])
        log(f"native: {native_rate:.1f} tokens/s at {SAMPLES} samples")
        searches = time_searches(engine, scorer, config)
        policy_peak = peak_mb(device)
        items = [ScoreItem("What is 17 + 26?", PROMPT, f"{c.text.strip()}\n\nSo 17 + 26 = 43.")
                 for c in gen.completions[:16]]
        served = scorer.score(items)
        engine = gen = None
        reset_peak(device)
        local = make_scorer(f"qwen-prm:{prm}", device=device).score(items)
        prm_peak = peak_mb(device)
    finally:
        scorer.close()
        server.stop()
    if any(len(a.step_scores) != len(b.step_scores) for a, b in zip(served, local, strict=True)):
        raise RuntimeError("the served PRM and the in-process one split the steps differently")
    gap = max(abs(x - y) for a, b in zip(served, local, strict=True)
              for x, y in zip(a.step_scores, b.step_scores, strict=True))
    return {
        "config": "tiny" if args.tiny else "full",
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "dtype": args.dtype,
        "policy": config["policy"].as_dict() | {"vocab": vocab(policy)},
        "prm": config["prm"].as_dict() | {"vocab": vocab(prm)},
        "samples": SAMPLES,
        "new_tokens": config["tokens"],
        "native_tokens_per_s": round(native_rate, 1),
        "vllm_tokens_per_s": vllm.get("tokens_per_s"),
        "vllm_load_s": vllm.get("load_s"),
        "vllm_skipped": vllm.get("skipped"),
        "problems": config["problems"],
        "searches": searches,
        "policy_peak_gpu_mb": policy_peak,
        "prm_peak_gpu_mb": prm_peak,
        "prm_http_vs_in_process": round(gap, 6),
        "build_s": round(built, 1),
        "total_s": round(time.perf_counter() - started, 1),
    }


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU-sized models and runs")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="default: cuda when available")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, else float32")
    parser.add_argument("--policy-layers", type=int, default=None)
    parser.add_argument("--prm-layers", type=int, default=None,
                        help="PRM layers (default: 28 cut to 8; tiny: 2)")
    parser.add_argument("--tokens", type=int, default=None,
                        help="new tokens per sample in the tokens/s runs")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch)")
    parser.add_argument("--vllm-python", default=sys.executable,
                        help="the interpreter that runs in-process vLLM (default: this one)")
    parser.add_argument("--vllm-memory", type=float, default=0.3,
                        help="vLLM's gpu_memory_utilization on cuda (default 0.3)")
    parser.add_argument("--vllm-timeout", type=float, default=420)
    parser.add_argument("--vllm-phase", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if not args.tiny and args.prm_layers is None:
        args.prm_layers = 8
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.vllm_phase:
        vllm_phase(args)
        return 0
    with tempfile.TemporaryDirectory(prefix="ponder-gpu-check-") as work:
        figures = check(args, Path(work))
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
