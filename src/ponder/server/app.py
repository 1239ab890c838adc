"""The OpenAI-compatible app: `create_app(engine, ...)` returns a FastAPI app to run with
uvicorn. All state lives on the app (app.state) and in closures; nothing is global, so one
process can serve several apps (the server benchmark does).

    POST /v1/chat/completions   POST /v1/completions   GET /v1/models   GET /health
    GET /ready   GET /metrics (server.health: probes and Prometheus metrics)
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ponder.server.batcher import EngineWorker
from ponder.server.errors import ApiError, bad_request, deadline_error, error_body
from ponder.server.health import observe
from ponder.server.jobs import Job
from ponder.server.limits import Counters, Gate, Limits, read_body
from ponder.server.logprobs import Detailed
from ponder.server.metrics import tag_request
from ponder.server.responses import (
    FINISH,
    Envelope,
    chosen,
    jsonable,
    plain_choices,
    plain_ponder,
    response_ponder,
    sse,
    usage_json,
)
from ponder.server.routing import model_forms, prefix_patterns, resolve_strategy, split_model
from ponder.server.schemas import (
    Plan,
    parse_chat,
    parse_completion,
    parse_json,
    with_budget_header,
)
from ponder.streaming import StopHoldback
from ponder.types import Usage

log = logging.getLogger("ponder.server")
DISCONNECT_POLL_SECONDS = 0.25
DEADLINE_GRACE_SECONDS = 5.0
# Scorers that read only the served model (or nothing): a request may always name these.
MODEL_FREE_SCORERS = ("mean_logprob", "sum_logprob", "heuristic", "judge", "judge_answer")


def allowed_scorers(operator: dict[str, Any]) -> frozenset[str]:
    from ponder.scorers.registry import ALIASES

    free = set(MODEL_FREE_SCORERS) | {a for a, key in ALIASES.items() if key in MODEL_FREE_SCORERS}
    return frozenset(free | set(operator))


def create_app(engine, *, served_name: str | None = None, api_key: str | None = None,
               limits: Limits | None = None, gather_ms: float = 20.0,
               max_batch_requests: int = 256, progress_seconds: float = 0.25,
               metrics: bool = True, metrics_public: bool = False,
               scorers: dict[str, Any] | None = None,
               reward_model: tuple[str, Any] | None = None) -> FastAPI:
    """An app serving `engine` (used from one worker thread only).

    served_name: the model name clients use (default: the engine's model name, without
        folders). Strategy prefixes go in front of it: `sc8:<served_name>`.
    api_key: when set, every request needs `Authorization: Bearer <api_key>`.
    gather_ms: how long the worker waits after a request for others to batch with it.
    max_batch_requests: most requests per engine round (1 serves them one at a time).
    metrics: serve Prometheus metrics on GET /metrics (False: nothing is observed).
    metrics_public: /metrics answers without the API key.
    scorers: reward models the operator allows, by the name requests use (`ponder.scorer`),
        e.g. {"prm": make_scorer("qwen-prm:/models/prm")}. Requests may also pick the
        scorers that load nothing (mean_logprob, sum_logprob, heuristic, judge,
        judge_answer), never a path or a hub id of their own.
    reward_model: (name, scorer) to serve at POST /pooling (server/rewards.py).
    """
    limits = limits or Limits()
    model_name = str(engine.model_name)
    served_name = served_name or os.path.basename(model_name.rstrip("/")) or model_name
    served = tuple(dict.fromkeys([served_name, model_name]))
    counters = Counters()
    worker = EngineWorker(engine, gather_ms / 1000, max_batch_requests, progress_seconds,
                          scorers=scorers)
    allowed = allowed_scorers(scorers or {})

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await worker.start()
        try:
            yield
        finally:
            await worker.stop()

    app = FastAPI(title="ponder", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.worker, app.state.limits, app.state.counters = worker, limits, counters
    app.state.served = served
    app.add_middleware(Gate, api_key=api_key, limits=limits, counters=counters)
    observe(app, worker, counters, api_key=api_key, metrics=metrics, public=metrics_public)
    _add_error_handlers(app)

    async def body_of(request: Request) -> dict[str, Any]:
        body = parse_json(await read_body(request.stream(), limits.max_body_bytes))
        return with_budget_header(body, request.headers.get("x-ponder-budget"))

    def checked(plan: Plan, request: Request) -> Plan:
        tag_request(request, plan)
        if plan.scorer is not None and plan.scorer not in allowed:
            raise bad_request(f"scorer {plan.scorer!r} is not available on this server; "
                              f"available: {', '.join(sorted(allowed))} (an operator adds "
                              "reward models with `ponder serve --scorer NAME=STYLE:PATH`)",
                              "ponder.scorer", "scorer_not_available")
        return plan

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        plan = checked(parse_chat(await body_of(request), served, limits), request)
        return await execute(plan, worker, request, limits.max_request_seconds)

    @app.post("/v1/completions")
    async def completions(request: Request):
        plan = checked(parse_completion(await body_of(request), served, limits), request)
        return await execute(plan, worker, request, limits.max_request_seconds)

    @app.get("/v1/models")
    async def models():
        data = [_model(f["id"], f) for f in model_forms(served_name)]
        unavailable = []
        for pattern in prefix_patterns(served_name):
            try:
                resolve_strategy(pattern.split("[")[0])
            except ApiError:
                unavailable.append(pattern)
        return {"object": "list", "data": data,
                "ponder": {"accepted": prefix_patterns(served_name),
                           "not_available_in_this_build": unavailable,
                           "extra_body": "ponder: {strategy, n, scorer, return_candidates, "
                                         "<strategy options>}"}}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        prefix, _ = split_model(model_id, served)
        return _model(model_id, {"strategy": resolve_strategy(prefix) if prefix else None})

    @app.get("/health")
    async def health():
        ok = worker.alive
        return JSONResponse(
            {"status": "ok" if ok else "error", "model": served_name,
             "in_flight": counters.in_flight, "queued": worker.queued, "busy": worker.busy,
             "batches": worker.batches, "recent_batch_sizes": list(worker.recent_sizes),
             "served": counters.served, "cancelled": worker.cancelled,
             "deadline_exceeded": worker.expired, "decode_steps": worker.decode_steps},
            status_code=200 if ok else 503)

    if reward_model is not None:
        from ponder.server.rewards import add_reward_routes

        add_reward_routes(app, reward_model[1], reward_model[0], worker, limits)
    return app


def _model(model_id: str, form: dict) -> dict:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "ponder",
            "ponder": {k: v for k, v in form.items() if k != "id"}}


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc: RequestValidationError):
        return JSONResponse(error_body(f"invalid request: {exc.errors()[:1]}"), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(error_body(str(exc.detail), param=None, code=code),
                            status_code=exc.status_code)

    @app.exception_handler(ClientGone)
    async def client_gone(_request, _exc: ClientGone):
        # Nobody reads this answer; its work was cancelled. 499 as nginx logs it.
        log.info("client disconnected before its answer; the request's work was cancelled")
        return JSONResponse(error_body("client closed the request", code="client_closed"),
                            status_code=499)

    @app.exception_handler(Exception)
    async def unexpected(_request, exc: Exception):
        log.error("unexpected error: %r", exc)
        return JSONResponse(error_body("internal server error; the request was not served",
                                       "server_error", code="internal_error"), status_code=500)


# ---- running a request ------------------------------------------------------------------


class Pending:
    """The events of one request's jobs, in arrival order, with a way to wait for all of
    them to be accepted first (so limit errors found on the worker still get a 400)."""

    def __init__(self, jobs: list[Job], events: asyncio.Queue):
        self.jobs, self.events, self.backlog = jobs, events, deque()

    async def started(self) -> None:
        waiting = {job.tag for job in self.jobs}
        while waiting:
            tag, kind, data = await self.events.get()
            if kind == "error":
                raise as_api_error(data)
            if kind == "started":
                waiting.discard(tag)
            else:
                self.backlog.append((tag, kind, data))

    async def next(self):
        return self.backlog.popleft() if self.backlog else await self.events.get()

    async def results(self) -> list[Any]:
        out: dict[int, Any] = {}
        while len(out) < len(self.jobs):
            tag, kind, data = await self.next()
            if kind == "error":
                raise as_api_error(data)
            if kind == "done":
                out[tag] = data
        return [out[job.tag] for job in self.jobs]

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancelled = True


def as_api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    log.error("engine error: %r", exc)
    return ApiError(500, f"the engine failed on this request: {type(exc).__name__}",
                    type="server_error", code="engine_error")


async def execute(plan: Plan, worker: EngineWorker, request: Request, seconds: float):
    events: asyncio.Queue = asyncio.Queue()
    deadline = time.monotonic() + seconds
    request_token = object()
    jobs = [Job(i, events, prompt, plan.budget, plan.stream, params=plan.params,
                strategy=plan.strategy, scorer=plan.scorer, question=plan.question,
                output=plan.output if plan.output.wanted else None, options=plan.options,
                deadline=deadline, seconds=seconds, request=request_token,
                own_budget=plan.own_budget)
            for i, prompt in enumerate(plan.prompts)]
    pending = Pending(jobs, events)
    worker.submit(jobs)
    env = Envelope(plan.endpoint, plan.model)
    try:
        await _until_done(pending.started(), request, deadline, seconds)
        if not plan.stream:
            done = await _until_done(pending.results(), request, deadline, seconds)
            return JSONResponse(jsonable(_complete(plan, env, done)))
    except BaseException:
        pending.cancel()
        raise
    stream = _stream_plain(plan, env, pending) if plan.plain else _stream_strategy(plan, env,
                                                                                    pending)
    return StreamingResponse(_closing(stream, pending), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _until_done(waiting, request: Request, deadline: float, seconds: float):
    """Await `waiting`, giving up when the client disconnects (the caller then cancels the
    request's work) or a little after the deadline (the worker normally answers at the
    deadline itself; this covers an engine that cannot stop mid-call)."""
    task = asyncio.ensure_future(waiting)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        grace = max(0.0, deadline - time.monotonic()) + DEADLINE_GRACE_SECONDS
        done, _ = await asyncio.wait({task, watch}, timeout=grace,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        if watch in done:
            raise ClientGone
        raise deadline_error(seconds)
    finally:
        for t in (task, watch):
            t.cancel()


async def _disconnected(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


def _complete(plan: Plan, env: Envelope, done: list[Any]) -> dict:
    if plan.plain:
        # Jobs that asked for logprobs or echo come back Detailed: the generation plus, per
        # choice, the echoed prompt and the log-probabilities.
        gens, extras = [], []
        for d in done:
            if isinstance(d, Detailed):
                gens.append(d.generation)
                extras += [(d.echo_text, logprobs) for logprobs in d.logprobs]
            else:
                gens.append(d)
                extras += [("", None)] * len(d.completions)
        choices = [env.choice(i, echo + text, finish, logprobs)
                   for i, ((text, finish), (echo, logprobs))
                   in enumerate(zip(plain_choices(gens), extras, strict=True))]
        usage = Usage.sum(g.usage for g in gens)
        ponder = plain_ponder(plan.strategy_name, gens) if plan.return_candidates else None
        return env.body(choices, usage=usage_json(usage), ponder=ponder)
    [result] = done
    text, finish = chosen(result, plan.params.max_tokens)
    return env.body([env.choice(0, text, finish)], usage=usage_json(result.usage),
                    ponder=response_ponder(plan.strategy_name, result, plan.return_candidates))


async def _closing(stream, pending: Pending):
    """Mark the jobs cancelled when the stream ends early (client gone), then end it."""
    try:
        async for part in stream:
            yield part
    finally:
        pending.cancel()


async def _stream_plain(plan: Plan, env: Envelope, pending: Pending):
    n = plan.params.n
    total = n * len(plan.prompts)
    holds = [StopHoldback(plan.params.stop) for _ in range(total)]
    for i in range(total):
        yield sse(env.body([env.delta(i, "", role=True)], chunk=True))
    done: dict[int, Any] = {}
    while len(done) < len(plan.prompts):
        tag, kind, data = await pending.next()
        if kind == "token":
            sample, delta = data
            text = holds[tag * n + sample].push(delta)
            if text:
                yield sse(env.body([env.delta(tag * n + sample, text)], chunk=True))
        elif kind == "done":
            done[tag] = data
            for sample, c in enumerate(data.completions):
                index = tag * n + sample
                rest = holds[index].finish(c.text)
                if rest:
                    yield sse(env.body([env.delta(index, rest)], chunk=True))
                finish = FINISH.get(c.finish_reason, "stop")
                yield sse(env.body([env.delta(index, finish=finish)], chunk=True))
        elif kind == "error":
            yield sse(as_api_error(data).body())
            return
    gens = [done[t] for t in sorted(done)]
    usage = usage_json(Usage.sum(g.usage for g in gens)) if plan.include_usage else None
    ponder = plain_ponder(plan.strategy_name, gens) if plan.return_candidates else None
    if usage or ponder:
        yield sse(env.body([], chunk=True, usage=usage, ponder=ponder))
    yield sse("[DONE]")


async def _stream_strategy(plan: Plan, env: Envelope, pending: Pending):
    """Progress chunks while the strategy works (empty delta, a `ponder.progress` field),
    then the chosen answer as content, then usage."""
    yield sse(env.body([env.delta(0, "", role=True)], chunk=True,
                       ponder={"progress": {"stage": "started", "strategy": plan.strategy_name}}))
    while True:
        _tag, kind, data = await pending.next()
        if kind == "progress":
            yield sse(env.body([env.delta(0)], chunk=True, ponder={"progress": data}))
        elif kind == "error":
            yield sse(as_api_error(data).body())
            return
        elif kind == "done":
            break
    result = data
    text, finish = chosen(result, plan.params.max_tokens)
    if text:
        yield sse(env.body([env.delta(0, text)], chunk=True))
    yield sse(env.body([env.delta(0, finish=finish)], chunk=True,
                       ponder={"progress": {"stage": "done", "answer": result.answer}}))
    usage = usage_json(result.usage) if plan.include_usage else None
    ponder = response_ponder(plan.strategy_name, result, plan.return_candidates)
    if usage or ponder:
        yield sse(env.body([], chunk=True, usage=usage, ponder=ponder))
    yield sse("[DONE]")

