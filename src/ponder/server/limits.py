"""What one request may ask for, and the gate every request passes first.

The gate is plain ASGI middleware so it runs before any route: it checks the API key
(constant-time) and the declared body size, then reads a POST's body whole, refusing it as
soon as it grows past the limit (Content-Length can be missing, for chunked uploads, or
wrong) or when it has not all arrived within BODY_SECONDS (408), and only then takes one
of the concurrency slots (429 when none is free). Why in that order: a client that sends
its body slowly, or never finishes it, then holds a connection for at most BODY_SECONDS and
never a slot, so a few such clients cannot lock everyone else out.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import dataclass, fields

from ponder.server.errors import ApiError, LimitError


@dataclass(frozen=True)
class Limits:
    """Per-request limits; each is a `ponder serve` flag of the same name.

    max_n: samples one request may ask for (choices, or a strategy's n).
    max_tokens: new tokens per sample.
    default_max_tokens: new tokens per sample when a request does not say (default 256, or
        max_tokens when lower).
    max_request_tokens: every token one request may cost: each engine call's prompt, every
        generated token and every token a scorer reads (what `usage.total_tokens` reports).
    max_concurrent: requests in flight at once (queued or running); more get 429.
    max_body_bytes: the largest request body accepted.
    max_request_seconds: a request's deadline from its arrival; work still running then stops
        at the next decode step and the request gets a 408, and one still queued is refused.
    """

    max_n: int = 16
    max_tokens: int = 1024
    default_max_tokens: int | None = None
    max_request_tokens: int = 65536
    max_concurrent: int = 64
    max_body_bytes: int = 1 << 20
    max_request_seconds: int = 600

    def __post_init__(self) -> None:
        if self.default_max_tokens is None and isinstance(self.max_tokens, int):
            object.__setattr__(self, "default_max_tokens", min(256, self.max_tokens))
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{f.name} must be an integer >= 1, got {value!r}")
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(f"default_max_tokens ({self.default_max_tokens}) must not exceed "
                             f"max_tokens ({self.max_tokens})")


class Counters:
    """Requests in flight; lives on app.state so /health can report it."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.served = 0
        self.rejected = 0


# How long a request's body may take to arrive (1 MB at ~35 kB/s); the request's own
# deadline (max_request_seconds) when that is shorter.
BODY_SECONDS = 30.0
# How much of a body over the limit is read and dropped before the refusal goes out.
DRAIN_BYTES = 16 << 20


async def read_body(receive_stream, limit: int) -> bytes:
    """The whole body, refusing as soon as it grows past `limit` bytes."""
    parts, size = [], 0
    async for chunk in receive_stream:
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


def body_too_large(limit: int) -> LimitError:
    return LimitError(f"the request body is larger than this server's limit of {limit} bytes "
                      "(max_body_bytes, --max-body-bytes)", code="request_too_large")


class Gate:
    """ASGI middleware: API key, concurrency and declared body size, before any route runs."""

    def __init__(self, app, *, api_key: str | None, limits: Limits, counters: Counters):
        self.app, self.limits, self.counters = app, limits, counters
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        error = self._check_key(headers) or self._check_length(headers)
        if error is not None:
            self.counters.rejected += 1
            return await _send_error(send, error)
        # Only generation requests take a slot; /health and /v1/models stay answerable.
        counted = scope["method"] == "POST"
        if counted:
            body = await self._body(receive, send)
            if body is None:  # refused, or the client left while sending it
                return
            receive = _replay(body, receive)
            if self.counters.in_flight >= self.limits.max_concurrent:
                self.counters.rejected += 1
                return await _send_error(send, LimitError(
                    f"too many requests in flight: this server's limit is "
                    f"{self.limits.max_concurrent} at once (max_concurrent, --max-concurrent); "
                    "retry shortly", status=429, code="rate_limit_exceeded"))
            self.counters.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            if counted:
                self.counters.in_flight -= 1
                self.counters.served += 1

    async def _body(self, receive, send) -> bytes | None:
        """The whole body, or None once a refusal is sent (too large, or too slow: 408) or the
        client has gone. A body found too large is read on, and dropped, up to DRAIN_BYTES
        within its time, so the client that is still sending it reads the refusal instead of
        a reset connection."""
        seconds = min(BODY_SECONDS, self.limits.max_request_seconds)
        parts, size, error = [], 0, None
        try:
            async with asyncio.timeout(seconds):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.limits.max_body_bytes and error is None:
                        error, parts = body_too_large(self.limits.max_body_bytes), []
                    if error is None:
                        parts.append(chunk)
                    if not message.get("more_body", False) or size > DRAIN_BYTES:
                        break
        except TimeoutError:
            error = error or ApiError(408, f"the request body did not arrive within "
                                      f"{seconds:g} s (it had {size} bytes); send the whole "
                                      "body at once", type="invalid_request_error",
                                      code="body_timeout")
        if error is None:
            return b"".join(parts)
        self.counters.rejected += 1
        await _send_error(send, error)
        return None

    def _check_key(self, headers: dict[str, str]) -> ApiError | None:
        if self.api_key is None:
            return None
        scheme, _, token = headers.get("authorization", "").partition(" ")
        # compare_digest takes time independent of where the strings differ.
        ok = hmac.compare_digest(token.strip().encode(), self.api_key)
        if scheme.lower() == "bearer" and ok:
            return None
        return ApiError(401, "missing or wrong API key: send the header "
                        "'Authorization: Bearer <key>' with the key this server was started "
                        "with", type="invalid_request_error", code="invalid_api_key")

    def _check_length(self, headers: dict[str, str]) -> ApiError | None:
        length = headers.get("content-length")
        if length is None:
            return None
        if not length.strip().isdigit():
            return ApiError(400, f"invalid Content-Length header {length!r}",
                            code="invalid_header")
        if int(length) > self.limits.max_body_bytes:
            return body_too_large(self.limits.max_body_bytes)
        return None


def _replay(body: bytes, receive):
    """An ASGI receive that gives the body already read, then what the client sends next
    (its disconnect, which the routes watch for)."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _send_error(send, error: ApiError) -> None:
    payload = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(payload)).encode())]
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    # The body may be unread: tell the client this connection will not be reused.
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def over_budget(what: str, tokens: int, prompt_tokens: int | None, budget: int,
                options: dict[str, object], own: bool = False) -> LimitError:
    """The 400 for a request whose worst case is over its budget, naming the options the
    cost grows with (and their values) so the user knows what to lower. prompt_tokens None:
    checked before the prompt is tokenized (the cost without it). own: the budget is the
    request's own (ponder.budget or X-Ponder-Budget), not the server's limit."""
    named = ", ".join(f"{k}={v}" for k, v in options.items())
    names = list(options) or ["max_tokens"]
    lower = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
    first = next(iter(options), "max_tokens")
    counted = ("before its prompt is counted" if prompt_tokens is None
               else f"{prompt_tokens} prompt tokens")
    whose = (f"this request's own budget of {budget} tokens (ponder.budget or the "
             f"X-Ponder-Budget header): raise the budget, or lower {lower}" if own else
             f"this server's budget of {budget} tokens per request (max_request_tokens, "
             f"--max-request-tokens): lower {lower}")
    param = first if first in ("n", "max_tokens") else f"ponder.{first}"
    return LimitError(f"{what} may cost up to {tokens} tokens ({counted}; {named}), over {whose}",
                      param="ponder.budget" if own else param)


def over_context(prompt_tokens: int, longest: int, context: int, field: str) -> LimitError:
    return LimitError(
        f"the prompt has {prompt_tokens} tokens and this request may generate up to "
        f"{longest - prompt_tokens} more ({longest} in all), over the model's context of "
        f"{context} tokens: shorten the prompt or lower max_tokens",
        param=field, code="context_length_exceeded")
