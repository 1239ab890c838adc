"""`ponder serve` observability, against the real server on loopback: /metrics scraped over
HTTP and parsed as Prometheus text after known requests (counts and token sums must equal
what the responses reported), /health and /ready without the key, and the key on /metrics."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from ponder_server import Server

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
parser = pytest.importorskip("prometheus_client.parser")

pytestmark = pytest.mark.slow

KEY = "metrics-key"
MODEL = "smollm2-135m"
ASK = [{"role": "user", "content": "What is 12 + 35?"}]
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("metrics"), "--max-n", "8", "--max-tokens", "64",
                 "--default-max-tokens", "16", "--max-request-tokens", "2000", key=KEY)
    yield srv
    srv.stop()


def scrape(server, key: str | None = "default") -> dict[tuple, float]:
    """Every sample of /metrics: (sample name, sorted label items) -> value."""
    r = server.http(key).get("/metrics")
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parser.text_string_to_metric_families(r.text)
            for s in family.samples}


def settled(server, key: str | None = "default") -> dict[tuple, float]:
    """A scrape once the engine is idle: every round's batch observed, no request in flight
    (the gate frees a request's slot just after its last byte)."""
    for _ in range(200):
        samples = scrape(server, key)
        if not any(total(samples, g) for g in ("ponder_queue_depth", "ponder_engine_busy",
                                               "ponder_requests_in_flight")):
            return samples
        time.sleep(0.05)
    pytest.fail("the server stayed busy")


def total(samples: dict[tuple, float], name: str, **labels: str) -> float:
    """The sum of `name` over the samples whose labels include `labels`."""
    return sum(v for (n, items), v in samples.items()
               if n == name and set(labels.items()) <= set(items))


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


def assert_openai_error(r, status: int) -> dict:
    assert r.status_code == status, r.text[:300]
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


# ---- probes and who may read what -------------------------------------------------------------


def test_health_and_ready_answer_without_the_key_and_tell_nothing(server):
    for key in (None, "wrong-key"):
        with server.http(key) as http:
            health = http.get("/health")
            assert health.status_code == 200 and health.json() == {"status": "ok"}
            ready = http.get("/ready")
            assert ready.status_code == 200 and ready.json() == {"status": "ready"}
            assert http.head("/health").status_code == 200
    # With the key, /health keeps its details for the operator.
    detailed = server.http().get("/health").json()
    assert detailed["status"] == "ok" and detailed["model"] == MODEL and "queued" in detailed


def test_metrics_need_the_key_and_wrong_routes_are_openai_404s(server):
    for key in (None, "wrong-key"):
        error = assert_openai_error(server.http(key).get("/metrics"), 401)
        assert error["code"] == "invalid_api_key"
    assert "ponder_requests_total" in server.http().get("/metrics").text
    with server.http() as http:
        for method, path in (("GET", "/v1/nowhere"), ("POST", "/v1/nowhere"),
                             ("GET", "/metrics/x"), ("GET", "/readyz"), ("POST", "/metrics")):
            assert assert_openai_error(http.request(method, path, json={}), 404)["code"] == \
                "not_found"


# ---- metrics after known requests ---------------------------------------------------------------


def test_metrics_count_known_requests_and_their_tokens(server):
    client = server.client()
    http = server.http()
    before = settled(server)

    plain = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, seed=1)
    prompts = client.completions.create(model=MODEL, prompt=["Once upon a time", "The sky is"],
                                        max_tokens=6, n=2, seed=3)
    sc = client.chat.completions.create(model=f"sc2:{MODEL}", messages=ASK, max_tokens=12,
                                        seed=0)
    bon = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, seed=4,
                                         extra_body={"ponder": {"strategy": "bon", "n": 2}})
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=10,
                                                 seed=5, stream=True,
                                                 stream_options={"include_usage": True}))
    streamed = chunks[-1].usage
    # Refused: before its strategy is read (n over --max-n), for its strategy (a scorer this
    # server does not offer), and at the gate (no key).
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=ASK, n=9)
    with pytest.raises(openai.BadRequestError, match="scorer"):
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, extra_body={
            "ponder": {"strategy": "bon", "n": 2, "scorer": "nope"}})
    assert http.post(CHAT, json={"model": MODEL, "messages": ASK},
                     headers={"Authorization": "Bearer nope"}).status_code == 401

    after = settled(server)
    requests = "ponder_requests_total"
    expected = {(CHAT, "plain", "200"): 2, (COMPLETIONS, "plain", "200"): 1,
                (CHAT, "self_consistency", "200"): 1, (CHAT, "best_of_n", "200"): 1,
                (CHAT, "unknown", "400"): 1, (CHAT, "best_of_n", "400"): 1,
                (CHAT, "unknown", "401"): 1}
    for (endpoint, strategy, status), count in expected.items():
        assert delta(before, after, requests, endpoint=endpoint, strategy=strategy,
                     status=status) == count, (endpoint, strategy, status)
    assert delta(before, after, requests) == sum(expected.values())

    # Tokens equal what the responses' usage reported: prompt + scorer tokens are OpenAI's
    # prompt_tokens, generated tokens its completion_tokens.
    usages = [plain.usage, prompts.usage, sc.usage, bon.usage, streamed]
    tokens = "ponder_tokens_total"
    assert delta(before, after, tokens, kind="generated") == sum(
        u.completion_tokens for u in usages)
    assert delta(before, after, tokens, kind="prompt") + delta(
        before, after, tokens, kind="scorer") == sum(u.prompt_tokens for u in usages)
    assert delta(before, after, tokens, kind="scorer", strategy="best_of_n") > 0
    assert delta(before, after, tokens, kind="scorer", strategy="plain") == 0
    assert delta(before, after, tokens, kind="generated", strategy="self_consistency") == \
        sc.usage.completion_tokens
    assert delta(before, after, tokens, strategy="best_of_n") == bon.usage.total_tokens

    # Every request is timed; time to first token only for the streaming one.
    latency = "ponder_request_duration_seconds_count"
    for (endpoint, strategy, _status), count in expected.items():
        assert delta(before, after, latency, endpoint=endpoint, strategy=strategy) >= count
    assert delta(before, after, latency) == sum(expected.values())
    ttft = "ponder_time_to_first_token_seconds"
    assert delta(before, after, ttft + "_count") == 1
    assert delta(before, after, ttft + "_count", endpoint=CHAT, strategy="plain") == 1
    assert 0 < delta(before, after, ttft + "_sum") <= delta(
        before, after, "ponder_request_duration_seconds_sum", endpoint=CHAT, strategy="plain")

    # Engine rounds: each of the 6 jobs the worker received (the completion's two prompts are
    # two) was served by exactly one round.
    rounds = "ponder_engine_batch_requests"
    assert delta(before, after, rounds + "_sum") == 6
    assert 1 <= delta(before, after, rounds + "_count") <= 6
    assert ("ponder_requests_cancelled_total", ()) in after
    assert ("ponder_queue_depth", ()) in after and ("ponder_engine_busy", ()) in after


def test_a_strategy_stream_times_its_first_output(server):
    before = settled(server)
    chunks = list(server.client().chat.completions.create(
        model=f"sc2:{MODEL}", messages=ASK, max_tokens=8, seed=2, stream=True))
    assert chunks
    after = settled(server)
    ttft = "ponder_time_to_first_token_seconds_count"
    assert delta(before, after, ttft, strategy="self_consistency") == 1
    assert delta(before, after, "ponder_requests_total", strategy="self_consistency",
                 status="200") == 1


def test_metrics_public_serves_metrics_without_the_key_only(tmp_path):
    srv = Server(tmp_path, "--metrics-public", "--max-tokens", "8", key=KEY)
    try:
        with srv.http(None) as http:
            assert http.get("/ready").json() == {"status": "ready"}
            samples = scrape(srv, None)
            assert total(samples, "ponder_requests_total") == 0
            for path in ("/v1/models", "/health/x"):
                assert_openai_error(http.get(path), 401)
            assert http.get("/health").json() == {"status": "ok"}
    finally:
        srv.stop()


# ---- one registry per app ------------------------------------------------------------------------


class Running:
    """An app on uvicorn in a background thread, on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> httpx.Client:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        self.http = httpx.Client(base_url=self.url, timeout=60)
        return self.http

    def __exit__(self, *exc) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(30)


def test_apps_in_one_process_keep_their_own_metrics():
    from ponder.engines.table import TableEngine
    from ponder.server.app import create_app

    apps = [create_app(TableEngine()) for _ in range(2)]
    off = create_app(TableEngine(), metrics=False)
    assert apps[0].state.metrics.registry is not apps[1].state.metrics.registry
    with Running(apps[0]) as first, Running(apps[1]) as second, Running(off) as bare:
        assert first.post(COMPLETIONS, json={}).status_code == 400
        one = [s for f in parser.text_string_to_metric_families(first.get("/metrics").text)
               for s in f.samples if s.name == "ponder_requests_total"]
        assert [(s.labels, s.value) for s in one] == [
            ({"endpoint": COMPLETIONS, "strategy": "unknown", "status": "400"}, 1.0)]
        assert "ponder_requests_total{" not in second.get("/metrics").text
        assert_openai_error(bare.get("/metrics"), 404)
        assert bare.get("/ready").json() == {"status": "ready"}
        assert bare.post(COMPLETIONS, json={}).status_code == 400
