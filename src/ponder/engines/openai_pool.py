"""HTTP to one or more OpenAI-compatible servers: a private event loop, a concurrency limit
per server, least-loaded routing, retries with backoff, and errors that say what happened.

The engine's callers are synchronous (a strategy calls generate() and waits), possibly from
several threads, possibly from a thread that already runs an event loop. So the pool runs its
own event loop on a daemon thread and `run(coro)` hands coroutines to it: the connection pool
and the per-server limits live across calls, and every caller shares them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class ServerError(ConnectionError):
    """A server kept failing (or could not be reached) after every retry, or answered with
    something that is not an answer. An OSError, as a failed connection is: the CLI reports
    it as a message, not a traceback."""


class ServerTimeout(ServerError, TimeoutError):
    """A server did not answer within the timeout."""


class ServerRejected(ValueError):
    """The server refused the request (a 4xx other than 429): retrying will not help."""

    def __init__(self, status: int, where: str, message: str):
        super().__init__(f"{where} rejected the request ({status}): {message}")
        self.status, self.message = status, message


@dataclass(eq=False)
class Server:
    url: str  # base URL, ending in /v1 (or whatever prefix the server uses)
    limit: asyncio.Semaphore | None = None
    load: int = 0  # requests in flight or waiting for a slot here
    sent: int = 0  # requests answered, for the record and for tie-breaking
    resting_until: float = 0.0  # after a failure, other servers are preferred until then


class ServerPool:
    """Requests to `base_urls`, each server with at most `concurrency` in flight.

    A request goes to the server with the least load (in flight + waiting); a retry after a
    connection error prefers another server. 429 and 5xx answers and connection errors are
    retried `max_retries` times with exponential backoff (honouring Retry-After); a timeout
    is not retried (the request may still be running there) and raises ServerTimeout.
    """

    def __init__(self, base_urls: Sequence[str], api_key: str | None = None,
                 concurrency: int = 16, timeout: float = 120.0, max_retries: int = 4,
                 backoff: float = 0.5, max_backoff: float = 8.0):
        urls = [u.strip().rstrip("/") for u in base_urls if u and u.strip()]
        if not urls:
            raise ValueError("give at least one base URL, e.g. http://127.0.0.1:8000/v1")
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"base URL {url!r} must start with http:// or https://")
        if len(set(urls)) != len(urls):
            raise ValueError(f"a base URL is given twice: {urls}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        self.servers = [Server(u) for u in urls]
        self.concurrency, self.timeout, self.max_retries = concurrency, float(timeout), max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.retries = 0  # retries made, over the pool's life
        self.rest_seconds = 5.0  # how long a server that failed is passed over when possible
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="ponder-openai-http")
        self._thread.start()
        self._client: httpx.AsyncClient = self.run(self._open(headers))
        self._finalizer = weakref.finalize(self, _shutdown, self._loop, self._thread,
                                           self._client)

    async def _open(self, headers: dict[str, str]) -> httpx.AsyncClient:
        for server in self.servers:  # semaphores belong to this loop
            server.limit = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency * len(self.servers) + 4,
                              max_keepalive_connections=self.concurrency * len(self.servers))
        return httpx.AsyncClient(headers=headers, limits=limits)

    def run(self, coro):
        """Run a coroutine on the pool's loop and wait for its result (any thread)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("ServerPool.run() called from its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        self._finalizer()

    # ---- requests (on the pool's loop) ---------------------------------------------------

    async def get(self, server: Server, path: str) -> dict[str, Any]:
        """GET from one given server (probing), with the same retries."""
        return await self._request("GET", path, None, server, RETRY_STATUS)

    async def post(self, path: str, body: dict[str, Any], server: Server | None = None,
                   retry_status: frozenset[int] | set[int] = RETRY_STATUS) -> dict[str, Any]:
        """POST to the least-loaded server (or `server`); the parsed JSON answer. Statuses
        not in `retry_status` raise ServerRejected at once (probes pass fewer: some servers
        answer 500 to a field they cannot parse)."""
        return await self._request("POST", path, body, server, retry_status)

    async def _request(self, method: str, path: str, body, fixed: Server | None,
                       retry_status) -> dict[str, Any]:
        failed: set[int] = set()
        last = ""
        for attempt in range(self.max_retries + 1):
            server = fixed or self._pick(failed)
            wait = None  # what a Retry-After header asks for
            server.load += 1
            try:
                async with server.limit:
                    response = await self._client.request(
                        method, server.url + path, json=body, timeout=httpx.Timeout(
                            self.timeout, connect=min(10.0, self.timeout)))
            except httpx.TimeoutException as exc:
                if isinstance(exc, httpx.ConnectTimeout):
                    last = f"could not connect to {server.url} within the timeout"
                    self._failed(server, failed)
                else:
                    raise ServerTimeout(
                        f"{server.url}{path} gave no answer within {self.timeout:g} s; the "
                        "server may be overloaded: raise the engine's timeout or lower its "
                        "concurrency") from None
            except httpx.TransportError as exc:
                last = f"{server.url}: {type(exc).__name__}: {exc}"
                self._failed(server, failed)
            else:
                if response.status_code < 400:
                    server.sent += 1
                    return _json(response, server.url + path)
                message = _error_message(response)
                if response.status_code not in retry_status:
                    raise ServerRejected(response.status_code, server.url + path, message)
                last = f"{server.url}{path} answered {response.status_code}: {message}"
                if response.status_code >= 500:
                    self._failed(server, failed)
                wait = _retry_after(response)
            finally:
                server.load -= 1
            if attempt == self.max_retries:
                break
            self.retries += 1
            delay = min(self.max_backoff, self.backoff * 2 ** attempt)
            delay = delay * (0.5 + random.random() / 2)  # jitter: retries do not align
            if wait is not None:
                delay = max(delay, min(wait, self.max_backoff))
            await asyncio.sleep(delay)
        raise ServerError(f"giving up after {self.max_retries + 1} attempts: {last}")

    def _pick(self, failed: set[int]) -> Server:
        """Least load first, among servers this request has not seen fail and that are not
        resting after a recent failure (any server when none is left)."""
        now = self._loop.time()
        fresh = [s for s in self.servers if id(s) not in failed]
        healthy = [s for s in fresh if s.resting_until <= now] or fresh or self.servers
        return min(healthy, key=lambda s: (s.load, s.sent))

    def _failed(self, server: Server, failed: set[int]) -> None:
        failed.add(id(server))
        server.resting_until = self._loop.time() + self.rest_seconds


def _json(response: httpx.Response, where: str) -> dict[str, Any]:
    try:
        data = response.json()
    except json.JSONDecodeError:
        raise ServerError(f"{where} answered with something that is not JSON: "
                          f"{response.text[:200]!r}") from None
    if not isinstance(data, dict):
        raise ServerError(f"{where} answered with JSON that is not an object: {data!r:.200}")
    return data


def _error_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except json.JSONDecodeError:
        return response.text[:300] or response.reason_phrase
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data))
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])[:500]
        return json.dumps(error)[:500]
    return str(data)[:300]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: not worth parsing, the backoff applies
        return None


def _shutdown(loop: asyncio.AbstractEventLoop, thread: threading.Thread,
              client: httpx.AsyncClient) -> None:
    if loop.is_closed():
        return
    if loop.is_running():
        with contextlib.suppress(Exception):  # best effort: the process may be exiting
            asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
    if not loop.is_running():
        loop.close()
