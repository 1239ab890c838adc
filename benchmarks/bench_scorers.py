"""A reward model over HTTP against the same weights in process: does serving a PRM
(`ponder serve --reward-model qwen-prm:FOLDER`, read by the `http-prm:URL` scorer) keep the
throughput of scoring in process?

The PRM is a randomly initialised Qwen2 in the released Qwen2.5-Math-PRM's layout (the
tests' builder, tests/test_scorer_http.py), by default 4 layers of width 256 on the bundled
model's tokenizer. Each round scores the same `--requests` responses of 4 steps each:
in process, one HFRewardModel.score call (padded batches, shortest first); over HTTP, one
request per response, all in flight at once (the client's concurrency = --requests), which
the server gathers into shared scorer calls. One torch thread on both sides (the server
runs with --threads 1; this process sets the same). Best of --rounds after a warm-up round,
the two taking turns round by round.
The scores must agree (largest difference reported). The LAST line is one JSON object:
`http_vs_inprocess_throughput` is HTTP responses/s over in-process responses/s.

    python benchmarks/bench_scorers.py [--requests 64] [--rounds 5] [--hidden 256] [--layers 4]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"


def responses(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(question, 4-step response) pairs of slightly different lengths."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b, c = rng.randint(10, 999), rng.randint(10, 999), rng.randint(2, 9)
        steps = [f"We first add {a} and {b}, which gives {a + b}.",
                 f"Then we multiply {a + b} by {c}" + " carefully" * rng.randint(0, 6)
                 + f", which gives {(a + b) * c}.",
                 f"Checking: {(a + b) * c} / {c} = {a + b}, as expected.",
                 f"The answer is \\boxed{{{(a + b) * c}}}."]
        out.append((f"What is ({a} + {b}) * {c}?", "\n\n".join(steps)))
    return out


def best_rates(scorers, items, rounds: int) -> tuple[list[float], list[list]]:
    """Responses/s of each scorer, best of `rounds` after a warm-up; the scorers take turns
    round by round, so a neighbour's load on the shared cores falls on both alike."""
    best, ratings = [0.0] * len(scorers), [None] * len(scorers)
    for s in scorers:
        s.score(items)  # warm-up: loading, connections
    for _ in range(rounds):
        for i, s in enumerate(scorers):
            started = time.perf_counter()
            ratings[i] = s.score(items)
            best[i] = max(best[i], len(items) / (time.perf_counter() - started))
    return best, ratings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    from openai_servers import ponder_serve
    from test_scorer_http import build_qwen_prm

    from ponder.models import converted_dir
    from ponder.scorers.base import ScoreItem
    from ponder.scorers.registry import make_scorer

    torch.set_num_threads(1)
    source = converted_dir("smollm2-135m")
    if not (source / "tokenizer_config.json").is_file():
        from ponder.engines.hf import HFEngine  # converts the bundled model on first use

        tokenizer = HFEngine("smollm2-135m", dtype="float32", device="cpu").tokenizer
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source)
    work = Path(tempfile.mkdtemp(prefix="bench-scorers-"))
    (work / "prm").mkdir()
    folder, _ = build_qwen_prm(work / "prm", tokenizer, hidden=args.hidden, layers=args.layers)
    items = [ScoreItem(q, [{"role": "user", "content": q}], r)
             for q, r in responses(args.requests)]

    local = make_scorer(f"qwen-prm:{folder}", device="cpu")
    server = ponder_serve("--reward-model", f"qwen-prm:{folder}",
                          "--max-concurrent", str(max(64, args.requests)))
    remote = make_scorer(f"http-prm:{server.url}", concurrency=args.requests)
    try:
        (local_rate, http_rate), (local_ratings, http_ratings) = best_rates(
            [local, remote], items, args.rounds)
        retries = remote.pool.retries
    finally:
        remote.close()
        server.stop()
    tokens = sum(r.usage.scorer_tokens for r in local_ratings)
    gap = max(abs(x - y) for a, b in zip(http_ratings, local_ratings, strict=True)
              for x, y in zip(a.step_scores, b.step_scores, strict=True))
    figures = {
        "requests": args.requests, "steps_per_request": 4, "rounds": args.rounds,
        "prm": {"hidden": args.hidden, "layers": args.layers},
        "scorer_tokens_per_round": tokens,
        "inprocess_responses_per_s": round(local_rate, 2),
        "http_responses_per_s": round(http_rate, 2),
        "http_vs_inprocess_throughput": round(http_rate / local_rate, 3),
        "largest_score_difference": gap, "http_retries": retries, "threads": 1,
    }
    print(f"in process {local_rate:.1f} responses/s, over HTTP {http_rate:.1f} responses/s "
          f"({figures['http_vs_inprocess_throughput']:.2f}x), scores within {gap:.1e}",
          file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
