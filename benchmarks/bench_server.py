"""Server throughput: request gathering vs serving requests one at a time.

32 concurrent chat requests (64 new tokens each, end-of-sequence ignored so every request
costs the same) go to the real app over HTTP, twice in one process with one loaded model:

  gathered       create_app(engine) as `ponder serve` runs it: requests arriving together
                 share batched engine calls
  one at a time  the same app with max_batch_requests=1: each request gets its own engine
                 call, as a server without gathering would do

Each request carries its own seed, so both modes sample the same texts (counted: a rare
difference comes from floating-point noise between batched and single forward passes, which
can flip one sampled token).
Prints a table, then one JSON object as the LAST line (throughput_ratio = gathered tokens/s
over one-at-a-time tokens/s).

    python benchmarks/bench_server.py [--requests 32] [--tokens 64] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time

import httpx
import torch
import uvicorn

from ponder.engines.hf import HFEngine
from ponder.server.app import create_app
from ponder.server.limits import Limits

TOPICS = ["the sea", "a library", "winter", "a robot", "the moon", "bread", "a river", "chess"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A uvicorn server for `app` on a background thread, for the duration of a with-block."""

    def __init__(self, app):
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def body(i: int, tokens: int) -> dict:
    topic = TOPICS[i % len(TOPICS)]
    return {"model": "smollm2-135m", "max_tokens": tokens, "temperature": 0.8, "seed": i,
            "ignore_eos": True,
            "messages": [{"role": "user", "content": f"Write a short story about {topic} (#{i})."}]}


async def fire(url: str, requests: int, tokens: int) -> tuple[float, list[dict]]:
    async with httpx.AsyncClient(base_url=url, timeout=3600,
                                 limits=httpx.Limits(max_connections=requests)) as client:
        await client.post("/v1/chat/completions", json=body(10_000, 4))  # warm-up
        started = time.perf_counter()
        replies = await asyncio.gather(*(client.post("/v1/chat/completions", json=body(i, tokens))
                                         for i in range(requests)))
        seconds = time.perf_counter() - started
    for r in replies:
        r.raise_for_status()
    return seconds, [r.json() for r in replies]


def run_mode(engine, batch: int, requests: int, tokens: int, gather_ms: float) -> dict:
    limits = Limits(max_concurrent=requests + 8, max_tokens=max(tokens, 16))
    app = create_app(engine, limits=limits, max_batch_requests=batch, gather_ms=gather_ms)
    with Running(app) as url:
        seconds, replies = asyncio.run(fire(url, requests, tokens))
        health = httpx.get(f"{url}/health").json()
        rounds = health["batches"] - 1  # minus the warm-up
        sizes = health["recent_batch_sizes"][-rounds:]
    generated = sum(r["usage"]["completion_tokens"] for r in replies)
    return {"seconds": seconds, "tokens": generated, "tok_s": generated / seconds,
            "rounds": rounds, "sizes": sizes, "texts": [r["choices"][0]["message"]["content"] for r in replies]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--gather-ms", type=float, default=20.0,
                        help="the gathering window of the gathered mode (default 20)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the engine's choice)")
    args = parser.parse_args()
    engine = HFEngine("smollm2-135m", dtype="float32", device="cpu")
    if args.threads:  # after loading: the engine sets its own count
        torch.set_num_threads(args.threads)
    gathered = run_mode(engine, 256, args.requests, args.tokens, args.gather_ms)
    single = run_mode(engine, 1, args.requests, args.tokens, args.gather_ms)
    ratio = gathered["tok_s"] / single["tok_s"]
    same = sum(a == b for a, b in zip(gathered["texts"], single["texts"], strict=True))
    print(f"{args.requests} concurrent requests x {args.tokens} tokens, bundled model, fp32 CPU, "
          f"{torch.get_num_threads()} torch threads")
    print(f"{'mode':16}{'seconds':>10}{'tokens':>9}{'tok/s':>9}{'engine rounds':>15}")
    for name, m in (("gathered", gathered), ("one at a time", single)):
        print(f"{name:16}{m['seconds']:>10.2f}{m['tokens']:>9}{m['tok_s']:>9.1f}{m['rounds']:>15}")
    print(f"gathered round sizes: {gathered['sizes']}")
    print(f"throughput ratio {ratio:.2f}x; same text in both modes for {same} of "
          f"{args.requests} requests")
    print(json.dumps({
        "requests": args.requests, "tokens_per_request": args.tokens,
        "threads": torch.get_num_threads(),
        "gathered_seconds": round(gathered["seconds"], 3),
        "one_at_a_time_seconds": round(single["seconds"], 3),
        "gathered_tok_s": round(gathered["tok_s"], 2),
        "one_at_a_time_tok_s": round(single["tok_s"], 2),
        "gathered_rounds": gathered["rounds"], "gathered_round_sizes": gathered["sizes"],
        "one_at_a_time_rounds": single["rounds"],
        "same_texts": same, "throughput_ratio": round(ratio, 2),
    }))


if __name__ == "__main__":
    main()
