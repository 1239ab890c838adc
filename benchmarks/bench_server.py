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
Then a mixed load, on the gathered app: 4 long requests (512 tokens) and 32 short ones (16
tokens) sent together, and again with the short ones sent 1 s after the long ones (once the
long batch is decoding). A short request joins the running decode loop and is answered as
soon as its own tokens are done, so its latency should stay near its latency on an idle
server (target: p95 <= 3x idle).

Then metrics: the same 32 concurrent requests on an app with metrics on, /metrics scraped
every --scrape-ms (250, 60x as often as Prometheus's default 15 s) while they run, and on
an app with metrics off (create_app(metrics=False): nothing observed, no /metrics), the two
alternated --metrics-repeats times; the overhead is the median over the pairs of
1 - on tokens/s / off tokens/s (target: metrics_overhead <= 0.05). On a machine shared
with other jobs that figure moves with their load, so two more: metrics_cpu_overhead, this
process's CPU seconds per generated token with metrics on over off, minus 1 (median over
the pairs; the scraping client runs in this process too, so it counts against metrics), and
metrics_cpu_share, the time spent inside the metrics code (rendering /metrics, counting
tokens and rounds) over the on runs' wall time.

Then budgets (budget_load.py): 32 concurrent self-consistency requests with budgets from 256
to 4096 tokens; every one must spend at most its budget, and n rise with it.

Prints tables, then one JSON object as the LAST line (throughput_ratio = gathered tokens/s
over one-at-a-time tokens/s; short_p95_over_idle = the mixed load's p95 short latency over
the idle latency; metrics_overhead = 1 - metrics-on tokens/s over metrics-off tokens/s,
median over alternated pairs, as a fraction).

    python benchmarks/bench_server.py [--requests 32] [--tokens 64] [--threads N]
                                      [--long 4] [--long-tokens 512] [--short 32]
                                      [--short-tokens 16] [--mixed-only] [--metrics-only]
                                      [--scrape-ms 250] [--metrics-repeats 5] [--budget-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import threading
import time

from ponder.openmp import wait_briefly

wait_briefly()  # before torch loads OpenMP, as `ponder serve` does

import httpx  # noqa: E402
import torch  # noqa: E402
import uvicorn  # noqa: E402
from budget_load import run_budget  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from ponder.engines.hf import HFEngine  # noqa: E402
from ponder.server.app import create_app  # noqa: E402
from ponder.server.limits import Limits  # noqa: E402

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


async def timed(client: httpx.AsyncClient, payload: dict, delay: float = 0.0) -> float:
    await asyncio.sleep(delay)
    started = time.perf_counter()
    r = await client.post("/v1/chat/completions", json=payload)
    r.raise_for_status()
    return time.perf_counter() - started


async def mixed(url: str, long: int, long_tokens: int, short: int, short_tokens: int,
                delay: float) -> tuple[list[float], list[float]]:
    async with httpx.AsyncClient(base_url=url, timeout=3600,
                                 limits=httpx.Limits(max_connections=long + short)) as client:
        longs = [timed(client, body(1000 + i, long_tokens)) for i in range(long)]
        shorts = [timed(client, body(2000 + i, short_tokens), delay) for i in range(short)]
        times = await asyncio.gather(*longs, *shorts)
    return times[:long], times[long:]


async def idle(url: str, tokens: int, repeats: int = 5) -> list[float]:
    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
        await client.post("/v1/chat/completions", json=body(10_000, 4))  # warm-up
        return [await timed(client, body(3000 + i, tokens)) for i in range(repeats)]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_mixed(engine, args) -> dict:
    limits = Limits(max_concurrent=args.long + args.short + 8,
                    max_tokens=max(args.long_tokens, 16))
    app = create_app(engine, limits=limits, gather_ms=args.gather_ms)
    out = {}
    with Running(app) as url:
        out["idle"] = asyncio.run(idle(url, args.short_tokens))
        # The short ones alone, together: what the engine's batched speed allows them with no
        # long request in the way (the floor any scheduling of the mixed load is held to).
        _, out["alone"] = asyncio.run(mixed(url, 0, 0, args.short, args.short_tokens, 0.0))
        for name, delay in (("together", 0.0), ("after_1s", 1.0)):
            longs, shorts = asyncio.run(mixed(url, args.long, args.long_tokens, args.short,
                                              args.short_tokens, delay))
            out[name] = {"long": longs, "short": shorts}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--gather-ms", type=float, default=20.0,
                        help="the gathering window of the gathered mode (default 20)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the engine's choice)")
    parser.add_argument("--long", type=int, default=4)
    parser.add_argument("--long-tokens", type=int, default=512)
    parser.add_argument("--short", type=int, default=32)
    parser.add_argument("--short-tokens", type=int, default=16)
    parser.add_argument("--mixed-only", action="store_true",
                        help="skip the gathered vs one-at-a-time throughput run")
    parser.add_argument("--metrics-only", action="store_true",
                        help="run only the metrics on vs off run")
    parser.add_argument("--scrape-ms", type=float, default=250.0,
                        help="how often /metrics is scraped during the metrics run")
    parser.add_argument("--metrics-repeats", type=int, default=5)
    parser.add_argument("--budget-only", action="store_true",
                        help="run only the budgeted run (budgets 256..4096 tokens)")
    args = parser.parse_args()
    engine = HFEngine("smollm2-135m", dtype="float32", device="cpu")
    if args.threads:  # after loading: the engine sets its own count
        torch.set_num_threads(args.threads)
    if args.metrics_only:
        print(json.dumps(run_metrics(engine, args) | {"threads": torch.get_num_threads()}))
        return
    if args.budget_only:
        print(json.dumps(run_budget(engine, Running) | {"threads": torch.get_num_threads()}))
        return
    figures = {} if args.mixed_only else throughput(engine, args)
    load = run_mixed(engine, args)
    base = statistics.median(load["idle"])
    print(f"\nmixed load: {args.long} x {args.long_tokens} tokens and {args.short} x "
          f"{args.short_tokens} tokens; a short request alone on the idle server: {base:.2f} s")
    print(f"{'short ones sent':16}{'p50 s':>8}{'p95 s':>8}{'p95/idle':>10}{'long max s':>12}")
    for name in ("together", "after_1s"):
        shorts, longs = load[name]["short"], load[name]["long"]
        p50, p95 = quantile(shorts, 0.5), quantile(shorts, 0.95)
        print(f"{name:16}{p50:>8.2f}{p95:>8.2f}{p95 / base:>10.2f}{max(longs):>12.2f}")
        key = "" if name == "together" else "after_1s_"
        figures |= {f"{key}short_p50_s": round(p50, 3), f"{key}short_p95_s": round(p95, 3),
                    f"{key}short_p95_over_idle": round(p95 / base, 2),
                    f"{key}long_max_s": round(max(longs), 3)}
    alone = quantile(load["alone"], 0.95)
    print(f"the {args.short} short ones alone, together: p95 {alone:.2f} s "
          f"({alone / base:.2f}x idle): the engine's batched speed, with no long request")
    figures |= {"short_idle_s": round(base, 3), "short_alone_p95_s": round(alone, 3),
                "short_alone_p95_over_idle": round(alone / base, 2),
                "short_p95_over_alone": round(figures["short_p95_s"] / alone, 2)}
    figures |= run_metrics(engine, args)
    figures |= run_budget(engine, Running)
    figures["threads"] = torch.get_num_threads()
    print(json.dumps(figures))


def throughput(engine, args) -> dict:
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
    return {
        "requests": args.requests, "tokens_per_request": args.tokens,
        "gathered_seconds": round(gathered["seconds"], 3),
        "one_at_a_time_seconds": round(single["seconds"], 3),
        "gathered_tok_s": round(gathered["tok_s"], 2),
        "one_at_a_time_tok_s": round(single["tok_s"], 2),
        "gathered_rounds": gathered["rounds"], "gathered_round_sizes": gathered["sizes"],
        "one_at_a_time_rounds": single["rounds"],
        "same_texts": same, "throughput_ratio": round(ratio, 2),
    }


# ---- metrics: on (and scraped) vs off -------------------------------------------------------


async def scraped_load(url: str, requests: int, tokens: int,
                       every: float | None) -> tuple[float, float, list[dict], int, str]:
    """`fire`'s load, with /metrics scraped every `every` seconds while it runs (None: not
    scraped). Returns seconds, CPU seconds of this process, replies, scrapes made and the
    last scrape's text."""
    done = asyncio.Event()
    scrapes, text = 0, ""

    async def scrape(client: httpx.AsyncClient) -> None:
        nonlocal scrapes, text
        while not done.is_set():
            r = await client.get("/metrics")
            r.raise_for_status()
            scrapes, text = scrapes + 1, r.text
            await asyncio.sleep(every)

    async with httpx.AsyncClient(base_url=url, timeout=3600,
                                 limits=httpx.Limits(max_connections=requests + 1)) as client:
        await client.post("/v1/chat/completions", json=body(10_000, 4))  # warm-up
        scraper = asyncio.create_task(scrape(client)) if every is not None else None
        started, cpu = time.perf_counter(), time.process_time()
        replies = await asyncio.gather(*(client.post("/v1/chat/completions", json=body(i, tokens))
                                         for i in range(requests)))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        done.set()
        if scraper is not None:
            await scraper
            text = (await client.get("/metrics")).text  # after the load: everything counted
    for r in replies:
        r.raise_for_status()
    return seconds, cpu, [r.json() for r in replies], scrapes, text


def metrics_mode(engine, on: bool, args) -> dict:
    limits = Limits(max_concurrent=args.requests + 8, max_tokens=max(args.tokens, 16))
    app = create_app(engine, limits=limits, gather_ms=args.gather_ms, metrics=on)
    inside = [0.0]
    if on:  # time the metrics code: rendering /metrics, counting tokens and rounds
        metrics = app.state.metrics
        for name in ("exposition", "done", "batch"):
            setattr(metrics, name, _timed(getattr(metrics, name), inside))
    with Running(app) as url:
        seconds, cpu, replies, scrapes, text = asyncio.run(scraped_load(
            url, args.requests, args.tokens, args.scrape_ms / 1000 if on else None))
    generated = sum(r["usage"]["completion_tokens"] for r in replies)
    out = {"seconds": seconds, "tokens": generated, "tok_s": generated / seconds,
           "scrapes": scrapes, "inside": inside[0], "cpu_per_token": cpu / generated}
    if on:  # the last scrape saw what was served: the load plus the warm-up (4 tokens)
        samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
        counted = sum(s.value for s in samples if s.name == "ponder_requests_total")
        tokens = sum(s.value for s in samples if s.name == "ponder_tokens_total"
                     and s.labels["kind"] == "generated")
        assert (counted, tokens) == (args.requests + 1, generated + 4), (counted, tokens)
    return out


def run_metrics(engine, args) -> dict:
    """Metrics off and on, alternated so drift in a shared machine's speed hits both."""
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(args.metrics_repeats):
        for on in (False, True):
            runs[on].append(metrics_mode(engine, on, args))
    off = statistics.median(m["tok_s"] for m in runs[False])
    on = statistics.median(m["tok_s"] for m in runs[True])
    scrapes = sum(m["scrapes"] for m in runs[True])
    pairs = [1 - b["tok_s"] / a["tok_s"] for a, b in zip(runs[False], runs[True], strict=True)]
    share = sum(m["inside"] for m in runs[True]) / sum(m["seconds"] for m in runs[True])
    cpu = statistics.median(b["cpu_per_token"] / a["cpu_per_token"] - 1
                            for a, b in zip(runs[False], runs[True], strict=True))
    print(f"\nmetrics: {args.requests} concurrent requests x {args.tokens} tokens, "
          f"{args.metrics_repeats} runs each, /metrics scraped every {args.scrape_ms:g} ms "
          f"when on ({scrapes} scrapes)")
    print(f"{'metrics':10}" + "".join(f"{'tok/s run ' + str(i + 1):>14}"
                                      for i in range(args.metrics_repeats)) + f"{'median':>10}")
    for name, key, median in (("off", False, off), ("on", True, on)):
        print(f"{name:10}" + "".join(f"{m['tok_s']:>14.1f}" for m in runs[key])
              + f"{median:>10.1f}")
    overhead = statistics.median(pairs)
    print(f"metrics overhead {overhead:.1%} of throughput (median of the pairs "
          f"{', '.join(f'{p:.1%}' for p in pairs)}; target <= 5%); CPU per token "
          f"{cpu:+.1%}; time inside the metrics code {share:.2%} of the on runs' wall time")
    return {"metrics_requests": args.requests, "metrics_tokens_per_request": args.tokens,
            "metrics_on_tok_s": round(on, 2), "metrics_off_tok_s": round(off, 2),
            "metrics_scrapes": scrapes, "metrics_scrape_ms": args.scrape_ms,
            "metrics_pair_overheads": [round(p, 4) for p in pairs],
            "metrics_cpu_overhead": round(cpu, 4), "metrics_cpu_share": round(share, 5),
            "metrics_overhead": round(overhead, 4)}


def _timed(fn, total: list[float]):
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - started
    return timed


if __name__ == "__main__":
    main()
