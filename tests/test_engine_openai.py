"""The OpenAI-compatible HTTP engine against real servers on loopback.

Two `ponder serve` processes run the bundled model for the whole module. Between the engine
and a server the tests put a small real HTTP proxy that can answer the next requests with an
error status, hold requests a while, refuse fields a less capable server would not know, and
counts what it sees (requests, most in flight at once). What the engine contract promises is
tested in tests/engine_contract; this file covers what is particular to talking HTTP.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from openai_servers import free_port, ponder_serve  # noqa: E402

from ponder.engines.openai_http import OpenAIHTTPEngine  # noqa: E402
from ponder.engines.openai_pool import ServerError, ServerRejected, ServerTimeout  # noqa: E402
from ponder.types import GenerateRequest, SamplingParams, ScoreRequest  # noqa: E402

pytestmark = pytest.mark.slow

ASK = [{"role": "user", "content": "What is 2 + 3?"}]


class Proxy:
    """A loopback HTTP server that forwards to `upstream` (a base URL ending in /v1)."""

    def __init__(self, upstream: str):
        self.upstream = upstream.removesuffix("/v1")
        self.fail: deque[int] = deque()  # statuses to answer the next requests with
        self.delay = 0.0  # seconds to hold each request before forwarding it
        self.refuse_fields: set[str] = set()  # 400 for bodies with these (a stricter server)
        self.refuse_token_prompts = False
        self.requests = self.failed = self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.client = httpx.Client(timeout=120)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                proxy.handle(self, None)

            def do_POST(self):  # noqa: N802
                proxy.handle(self, self.rfile.read(int(self.headers.get("Content-Length", 0))))

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, request: BaseHTTPRequestHandler, body: bytes | None) -> None:
        with self.lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            status = self.fail.popleft() if self.fail else None
            self.failed += status is not None
        try:
            if status is not None:
                return self.reply(request, status, {"error": {"message": f"test says {status}"}})
            data = json.loads(body) if body else None
            if data and (self.refuse_fields & set(data) or self.refuse_token_prompts
                         and isinstance(data.get("prompt"), list)):
                return self.reply(request, 400, {"error": {"message": "not supported here"}})
            time.sleep(self.delay)
            answer = self.client.request(request.command, self.upstream + request.path,
                                         content=body, headers={"Content-Type": "application/json"})
            self.reply(request, answer.status_code, answer.json())
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass
        finally:
            with self.lock:
                self.in_flight -= 1

    @staticmethod
    def reply(request: BaseHTTPRequestHandler, status: int, payload: dict) -> None:
        raw = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(raw)))
        if status == 429:
            request.send_header("Retry-After", "0")
        request.end_headers()
        request.wfile.write(raw)

    def reset(self) -> None:
        with self.lock:
            self.fail.clear()
            self.requests = self.failed = self.max_in_flight = 0
            self.delay, self.refuse_fields, self.refuse_token_prompts = 0.0, set(), False

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()


@pytest.fixture(scope="module")
def servers():
    started = []
    try:
        for _ in range(2):
            started.append(ponder_serve("--max-concurrent", "256", "--gather-ms", "5"))
        yield started
    finally:
        for s in started:
            s.stop()


@pytest.fixture
def proxies(servers):
    made = [Proxy(s.url) for s in servers]
    yield made
    for p in made:
        p.close()


def engine_on(*urls: str, **options) -> OpenAIHTTPEngine:
    options = {"backoff": 0.05, **options}
    return OpenAIHTTPEngine(list(urls), **options)


def requests(k: int, max_tokens: int = 4) -> list[GenerateRequest]:
    return [GenerateRequest(ASK, SamplingParams(temperature=1.0, max_tokens=max_tokens, seed=i))
            for i in range(k)]


# ---- retries, errors and timeouts -----------------------------------------------------------


def test_429_and_503_are_retried_with_backoff_until_the_answer_comes(proxies):
    proxy = proxies[0]
    engine = engine_on(proxy.url)
    try:
        proxy.reset()
        proxy.fail.extend([429, 503, 503])
        (gen,) = engine.generate(requests(1))
        assert gen.completions[0].token_ids and proxy.failed == 3
        assert proxy.requests == 4 and engine.pool.retries == 3
        # Once the retries are spent, the error says what the server kept answering.
        proxy.fail.extend([503] * 10)
        engine.pool.max_retries = 2
        with pytest.raises(ServerError, match=r"after 3 attempts.*503"):
            engine.generate(requests(1))
    finally:
        engine.close()


def test_a_rejected_request_is_not_retried_and_says_why(proxies):
    proxy = proxies[0]
    engine = engine_on(proxy.url)
    try:
        proxy.reset()
        # ponder serve lists at most 20 alternatives per token: a 400, raised at once.
        with pytest.raises(ServerRejected, match=r"\(400\).*logprobs"):
            engine.generate([GenerateRequest(ASK, SamplingParams(max_tokens=2, logprobs=21))])
        assert proxy.requests == 1
    finally:
        engine.close()


def test_a_slow_server_gives_a_clear_timeout(proxies):
    proxy = proxies[0]
    engine = engine_on(proxy.url)  # probes at the default timeout: this machine is shared
    try:
        engine.pool.timeout = 1.0
        proxy.reset()
        proxy.delay = 3.0
        started = time.monotonic()
        with pytest.raises(ServerTimeout, match="no answer within 1 s"):
            engine.generate(requests(1))
        assert time.monotonic() - started < 3.0  # not retried: it may still run there
    finally:
        proxy.delay = 0.0
        engine.close()


def test_an_unreachable_server_is_named_at_start():
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ServerError, match=dead.removesuffix("/v1")):
        engine_on(dead, max_retries=1)


# ---- concurrency and load balancing ---------------------------------------------------------


def test_the_concurrency_limit_holds_at_the_server(proxies):
    proxy = proxies[0]
    engine = engine_on(proxy.url, concurrency=2)
    try:
        proxy.reset()
        proxy.delay = 0.3  # requests overlap for sure
        gens = engine.generate(requests(8))
        assert len(gens) == 8 and proxy.requests == 8
        assert proxy.max_in_flight == 2
    finally:
        engine.close()


def test_two_base_urls_share_the_requests_and_a_failing_one_is_routed_around(proxies):
    a, b = proxies
    engine = engine_on(a.url, b.url, concurrency=2)
    try:
        a.reset()
        b.reset()
        a.delay = b.delay = 0.2
        gens = engine.generate(requests(8))
        assert [len(g.completions) for g in gens] == [1] * 8
        assert a.requests == b.requests == 4  # least in flight first
        # A server that answers 503 loses the retry to the other one.
        a.reset()
        b.reset()
        a.fail.extend([503] * 5)
        engine.generate(requests(1))
        assert a.requests == 1 and b.requests == 1
    finally:
        engine.close()


def test_generate_works_from_threads_at_once(proxies):
    engine = engine_on(proxies[0].url, concurrency=4)
    try:
        results: list = [None] * 3

        def run(i: int) -> None:
            results[i] = engine.generate(requests(2))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert all(r is not None and len(r) == 2 for r in results)
        # Seeds make the samples independent of what ran alongside.
        assert results[0][0].completions[0].token_ids == results[1][0].completions[0].token_ids
    finally:
        engine.close()


# ---- capabilities -----------------------------------------------------------------------------


def test_a_server_without_token_prompts_or_sampling_logprobs_fails_strategies_clearly(proxies):
    from ponder.strategies.registry import make_strategy
    from ponder.tasks.datasets import load_task

    proxy = proxies[0]
    proxy.reset()
    proxy.refuse_fields = {"return_sampling_logprobs"}
    proxy.refuse_token_prompts = True
    engine = engine_on(proxy.url)
    try:
        caps = engine.capabilities
        assert caps.logprobs and caps.score and not caps.sampling_logprobs and not caps.states
        problems = load_task("arith:1", limit=1)
        power = make_strategy("power", max_tokens=8, block_size=4, mcmc_steps=1, seed=0)
        with pytest.raises(ValueError, match=r"capabilities \['sampling_logprobs', 'states'\]"):
            power.run(problems, engine, None)
        params = SamplingParams(temperature=0.5)
        with pytest.raises(ValueError, match="sampling_logprobs"):
            engine.score([ScoreRequest(ASK, " 5", params=params)])
        # What it can do still works: text prompts, T=1 scoring where q = p.
        (scored,) = engine.score([ScoreRequest(ASK, " 5", params=SamplingParams())])
        assert scored.sampling_logprobs == scored.logprobs
        sc = make_strategy("self_consistency", n=2, max_tokens=8, seed=0)
        assert sc.run(problems, engine, None)[0].usage.generated_tokens > 0
    finally:
        proxy.reset()
        engine.close()


def test_a_server_without_logprobs_still_samples_and_refuses_scoring(proxies):
    from ponder.strategies.registry import make_strategy
    from ponder.tasks.datasets import load_task

    proxy = proxies[0]
    proxy.reset()
    proxy.refuse_fields = {"logprobs"}
    engine = engine_on(proxy.url)
    try:
        caps = engine.capabilities
        assert not caps.logprobs and not caps.score and not caps.top_logprobs
        (gen,) = engine.generate(requests(1, max_tokens=6))
        c = gen.completions[0]
        # Token ids come from the text; log p is unknown, not made up.
        assert c.text and engine.detokenize(c.token_ids) == c.text
        assert all(v != v for v in c.logprobs)  # NaN
        with pytest.raises(ValueError, match="score capability"):
            engine.score([ScoreRequest(ASK, " 5")])
        sc = make_strategy("self_consistency", n=2, max_tokens=8, seed=0)
        assert sc.run(load_task("arith:1", limit=1), engine, None)[0].candidates
    finally:
        proxy.reset()
        engine.close()


def test_usage_counts_every_request_and_the_samples_match_the_native_seeding(servers):
    engine = engine_on(servers[0].url)
    try:
        params = SamplingParams(n=3, temperature=1.0, max_tokens=6, seed=11, ignore_eos=True)
        (gen,) = engine.generate([GenerateRequest(ASK, params)])
        u = gen.usage
        assert u.prompt_tokens == len(gen.prompt_token_ids) and u.calls == 1
        assert u.generated_tokens == 18 and u.forward_tokens == u.prompt_tokens + 18
        # Sample j with seed s is sample 0 of seed sample_seed(s, j), as in the native engine.
        (alone,) = engine.generate([GenerateRequest(ASK, SamplingParams(
            temperature=1.0, max_tokens=6, seed=gen.completions[2].seed, ignore_eos=True))])
        assert alone.completions[0].token_ids == gen.completions[2].token_ids
    finally:
        engine.close()


# ---- ponder eval across two servers -----------------------------------------------------------


def served(server) -> int:
    """Generation requests the server has answered (probes included)."""
    return httpx.get(server.url.removesuffix("/v1") + "/health").json()["served"]


def test_ponder_eval_spreads_one_run_over_two_servers_into_one_store(servers, tmp_path):
    before = served(servers[0])
    engine_on(servers[0].url).close()
    probes = served(servers[0]) - before  # what starting an engine asks of each server
    before = [served(s) for s in servers]
    db = tmp_path / "runs.db"
    cmd = [sys.executable, "-m", "ponder.cli", "eval", "--task", "arith:1", "--strategy", "sc",
           "--n", "2", "--limit", "6", "--max-tokens", "16", "--prompt", "fewshot", "--seed", "0",
           "--no-progress", "--json", "--engine", "openai", "--base-url",
           ",".join(s.url for s in servers), "--out", str(db)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (summary,) = json.loads(done.stdout.strip().splitlines()[-1])["runs"]
    assert summary["problems"] == 6 and summary["generated_tokens_per_problem"] > 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(DISTINCT problem_id) FROM problems").fetchone()[0] == 6
    # Six requests (n=2 each) beyond the probes, shared by the two servers.
    extra = [served(s) - b - probes for s, b in zip(servers, before, strict=True)]
    assert sum(extra) == 6 and min(extra) >= 1, extra
