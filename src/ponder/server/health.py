"""Probes and metrics in front of the gate (the outermost middleware).

    GET /health   liveness: {"status": "ok"} (503 "error" once the engine worker has died).
                  Answered without the API key and with no details; a request that carries
                  the key (or any request when the server has none) reaches the detailed
                  /health route behind the gate (queue, batches, cancellations...).
    GET /ready    readiness: 200 {"status": "ready"} once the model is loaded and the engine
                  worker runs, else 503 {"status": "not_ready"}. No key, no details.
    GET /metrics  Prometheus text (server.metrics). With an API key set it needs the key,
                  unless the app was made with metrics_public (`--metrics-public`); without
                  the key it goes on to the gate, which answers 401.

Generation requests (POST to the app's routes) pass through Metrics.observe.
"""

from __future__ import annotations

import hmac
import json

from ponder.server.metrics import CONTENT_TYPE, Metrics

PROBES = ("GET", "HEAD")


def observe(app, worker, counters, *, api_key: str | None, metrics: bool = True,
            public: bool = False) -> Metrics | None:
    """Put the probes (and, with `metrics`, the metrics) in front of `app`, whose gate must
    already be added; returns the app's Metrics, also on app.state.metrics."""
    found = Metrics(worker, counters) if metrics else None
    worker.metrics = found
    app.state.metrics = found
    app.add_middleware(Front, owner=app, worker=worker, api_key=api_key, metrics=found,
                       public=public)
    return found


class Front:
    """ASGI middleware: /health, /ready and /metrics, and the timing of every request."""

    def __init__(self, app, *, owner, worker, api_key: str | None, metrics: Metrics | None,
                 public: bool):
        self.app, self.owner, self.worker, self.metrics = app, owner, worker, metrics
        self.api_key = api_key.encode() if api_key else None
        self.public = public
        self._posts: frozenset[str] | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        if method == "POST" and self.metrics is not None:
            endpoint = path if path in self.posts() else "other"
            return await self.metrics.observe(self.app, scope, receive, send, endpoint)
        if method in PROBES:
            if path == "/ready":
                ok = self.worker.alive
                return await _reply(send, method, 200 if ok else 503,
                                    {"status": "ready" if ok else "not_ready"})
            if path == "/health" and not self.authorized(scope):
                ok = self.worker.alive
                return await _reply(send, method, 200 if ok else 503,
                                    {"status": "ok" if ok else "error"})
            if path == "/metrics" and self.metrics is not None and (
                    self.public or self.authorized(scope)):
                return await _send(send, method, 200, self.metrics.exposition(),
                                   CONTENT_TYPE)
        return await self.app(scope, receive, send)

    def posts(self) -> frozenset[str]:
        """The app's POST routes (read once, after every route is registered)."""
        if self._posts is None:
            self._posts = frozenset(r.path for r in self.owner.routes
                                    if "POST" in (getattr(r, "methods", None) or ()))
        return self._posts

    def authorized(self, scope) -> bool:
        """The request carries the API key (or the server has none)."""
        if self.api_key is None:
            return True
        for name, value in scope["headers"]:
            if name.lower() == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                # compare_digest takes time independent of where the strings differ.
                return scheme.lower() == "bearer" and hmac.compare_digest(
                    token.strip().encode(), self.api_key)
        return False


async def _reply(send, method: str, status: int, payload: dict) -> None:
    await _send(send, method, status, json.dumps(payload).encode(), "application/json")


async def _send(send, method: str, status: int, body: bytes, content_type: str) -> None:
    headers = [(b"content-type", content_type.encode()),
               (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
