"""Prometheus metrics of one app, in its own registry (several apps in one process, as the
tests and the server benchmark run them, never share or collide).

    ponder_requests_total{endpoint, strategy, status}   answered generation requests
    ponder_tokens_total{kind, strategy}                 prompt, generated and scorer tokens
                                                        of answered work (what `usage` reports)
    ponder_request_duration_seconds{endpoint, strategy} arrival to the last byte sent
    ponder_time_to_first_token_seconds{endpoint, strategy}
                                                        streaming requests: arrival to the
                                                        first chunk carrying generated output
    ponder_engine_batch_requests                        requests served by each engine round
                                                        (those it began with and those that
                                                        joined its running decode loop)
    ponder_queue_depth, ponder_requests_in_flight, ponder_engine_busy,
    ponder_requests_cancelled_total, ponder_requests_deadline_exceeded_total
                                                        read from the worker at scrape time

Requests are observed by the front middleware (server.health), tokens and rounds by the
engine worker; label values come from fixed sets (routes, strategy names, HTTP statuses), so
no request can grow the registry.
"""

from __future__ import annotations

import json
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _generate
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = CONTENT_TYPE_LATEST
UNKNOWN = "unknown"  # a request refused before its strategy was read
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
STATE_KEY = "ponder_strategy"  # where a route leaves the request's strategy (scope state)


def strategy_label(strategy: Any) -> str:
    """The label of a built strategy (None: plain sampling, greedy: and sample: included)."""
    return "plain" if strategy is None else str(getattr(strategy, "name", UNKNOWN))


def tag_request(request, plan) -> None:
    """Label this request's metrics with the strategy it runs (called once it is read)."""
    request.state.ponder_strategy = strategy_label(plan.strategy)


class Metrics:
    """The registry and the metrics of one app; `worker` and `counters` are read at scrape
    time. Thread-safe: tokens and rounds are counted on the engine thread."""

    def __init__(self, worker, counters) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter("ponder_requests", "Generation requests answered, by endpoint, "
                                "strategy and HTTP status", ["endpoint", "strategy", "status"],
                                registry=reg)
        self.tokens = Counter("ponder_tokens", "Tokens of answered work by kind: prompt (each "
                              "engine call's prompt), generated, scorer (read by a scorer)",
                              ["kind", "strategy"], registry=reg)
        self.latency = Histogram("ponder_request_duration_seconds", "Request latency, arrival "
                                 "to the last byte sent", ["endpoint", "strategy"],
                                 buckets=LATENCY_BUCKETS, registry=reg)
        self.ttft = Histogram("ponder_time_to_first_token_seconds", "Streaming requests: "
                              "arrival to the first chunk carrying generated output",
                              ["endpoint", "strategy"], buckets=TTFT_BUCKETS, registry=reg)
        self.batch_size = Histogram("ponder_engine_batch_requests", "Requests served by each "
                                    "engine round", buckets=BATCH_BUCKETS, registry=reg)
        reg.register(WorkerState(worker, counters))

    # ---- engine thread ------------------------------------------------------------------

    def done(self, job, data) -> None:
        """A job's answer is ready: count the tokens its usage reports."""
        usage = getattr(getattr(data, "generation", data), "usage", None)
        if usage is None:
            return
        name = strategy_label(job.strategy)
        for kind, value in (("prompt", usage.prompt_tokens),
                            ("generated", usage.generated_tokens),
                            ("scorer", usage.scorer_tokens)):
            self.tokens.labels(kind, name).inc(value)

    def batch(self, requests: int) -> None:
        self.batch_size.observe(requests)

    # ---- event loop ----------------------------------------------------------------------

    def exposition(self) -> bytes:
        return _generate(self.registry)

    async def observe(self, app, scope, receive, send, endpoint: str) -> None:
        """Run one request through `app`, timing it and counting its status. It is counted
        just before its last byte goes out, so a client that has its answer sees it counted."""
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        seen: dict[str, Any] = {"status": None, "stream": False, "first": None, "done": False}

        def finish() -> None:
            if seen["done"]:
                return
            seen["done"] = True
            name = state.get(STATE_KEY, UNKNOWN)
            # No response at all: the client left before one (499, as nginx logs it).
            self.requests.labels(endpoint, name, str(seen["status"] or 499)).inc()
            self.latency.labels(endpoint, name).observe(time.perf_counter() - started)
            if seen["first"] is not None:
                self.ttft.labels(endpoint, name).observe(seen["first"] - started)

        async def watch(message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                seen["stream"] = any(k.lower() == b"content-type" and
                                     v.startswith(b"text/event-stream")
                                     for k, v in message.get("headers", ()))
            elif message["type"] == "http.response.body":
                if (seen["stream"] and seen["first"] is None and message.get("body")
                        and carries_output(message["body"])):
                    seen["first"] = time.perf_counter()
                if not message.get("more_body", False):
                    finish()
            await send(message)

        try:
            await app(scope, receive, watch)
        except Exception:  # not a cancellation: that is the client leaving (499)
            seen["status"] = seen["status"] or 500  # the app failed before answering
            raise
        finally:
            finish()  # no last message went out (the client left, or the app failed)


def carries_output(body: bytes) -> bool:
    """Whether a server-sent chunk carries generated output: text of a choice, or a
    strategy's progress reporting generated tokens."""
    for line in body.split(b"\n"):
        if not line.startswith(b"data: {"):
            continue
        try:
            chunk = json.loads(line[6:])
        except ValueError:
            continue
        for choice in chunk.get("choices") or ():
            if (choice.get("delta") or {}).get("content") or choice.get("text"):
                return True
        progress = (chunk.get("ponder") or {}).get("progress") or {}
        if progress.get("tokens"):
            return True
    return False


class WorkerState:
    """Gauges and counters the worker and the gate already keep, read at scrape time."""

    def __init__(self, worker, counters) -> None:
        self.worker, self.counters = worker, counters

    def describe(self):
        return list(self._families(0, 0, 0, 0, 0))

    def collect(self):
        w = self.worker
        return self._families(w.queued, self.counters.in_flight, int(w.busy), w.cancelled,
                              w.expired)

    @staticmethod
    def _families(queued, in_flight, busy, cancelled, expired):
        yield GaugeMetricFamily("ponder_queue_depth", "Jobs waiting for the engine",
                                value=queued)
        yield GaugeMetricFamily("ponder_requests_in_flight", "Generation requests in flight "
                                "(queued or running)", value=in_flight)
        yield GaugeMetricFamily("ponder_engine_busy", "1 while the engine runs a round",
                                value=busy)
        yield CounterMetricFamily("ponder_requests_cancelled", "Requests whose client left "
                                  "before their answer; their work was stopped", value=cancelled)
        yield CounterMetricFamily("ponder_requests_deadline_exceeded", "Requests stopped or "
                                  "refused at their deadline (--max-request-seconds)",
                                  value=expired)
