"""`POST /pooling` for `ponder serve --reward-model STYLE:PATH`: any scorer of the registry
behind vLLM's pooling API, so one ponder serves a reward model to many (`http-prm:URL`,
`http-orm:URL` on the client side; see scorers/http.py).

A request is one chat: optional system and user messages, then the assistant's response.
    task "token_classify": the response is steps each ended by the step tag (`<extra_0>`);
        the answer has one row `[score]` per step (the scorer's step_scores).
    task "classify": the answer is `[score]` (Rating.score).
Scores are the scorer's own (one value per row, no activation). Requests that arrive
together are scored in one scorer call (at most MAX_BATCH_ITEMS), on the engine's worker
thread, so a scorer that reads the served model never runs beside a decode step. The usual
gate applies (API key, --max-concurrent, --max-body-bytes), a chat is at most
--max-request-tokens characters (so at most about that many tokens), and a request waits at
most --max-request-seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ponder.scorers.base import Rating, ScoreItem
from ponder.server.errors import ApiError, LimitError, bad_request, deadline_error
from ponder.server.limits import Limits, read_body
from ponder.server.schemas import parse_json

log = logging.getLogger("ponder.server")
MAX_BATCH_ITEMS = 64
MAX_MESSAGES = 64
GATHER_WINDOWS = 10
SEPARATOR = "\n\n"  # steps are handed to the scorer joined by this (its default separator)
TASKS = ("token_classify", "classify")
IGNORED = {"model", "user", "request_id", "priority", "add_special_tokens", "encoding_format",
           "embed_dtype", "endianness", "add_generation_prompt", "continue_final_message"}


def add_reward_routes(app: FastAPI, scorer, name: str, worker, limits: Limits,
                      step_tag: str = "<extra_0>", gather_seconds: float | None = None) -> None:
    """Serve `scorer` at POST /pooling (and /v1/pooling) under the model name `name`;
    requests gather for `gather_seconds` (default: the worker's, --gather-ms)."""
    if gather_seconds is None:
        gather_seconds = getattr(worker, "gather_seconds", 0.01)
    batcher = RewardBatcher(scorer, worker, gather_seconds)
    app.state.reward_batcher = batcher
    outcome = getattr(scorer, "kind", None) == "outcome" or getattr(scorer, "style", "") == "orm"

    async def pooling(request: Request):
        body = parse_json(await read_body(request.stream(), limits.max_body_bytes))
        task, item, steps = parse_pooling(body, name, limits, step_tag)
        if task == "token_classify" and outcome:
            raise bad_request(f"{name} is an outcome scorer: it has no step scores; ask with "
                              "task 'classify'", "task", "unsupported_task")
        try:
            rating = await asyncio.wait_for(batcher.score(item), limits.max_request_seconds)
        except TimeoutError:
            raise deadline_error(limits.max_request_seconds) from None
        return JSONResponse(answer(name, task, rating, steps))

    for path in ("/pooling", "/v1/pooling"):
        app.add_api_route(path, pooling, methods=["POST"])


def parse_pooling(body: dict[str, Any], name: str, limits: Limits,
                  step_tag: str) -> tuple[str, ScoreItem, int]:
    """(task, the item to score, its number of steps) or a 400 saying what is wrong."""
    unknown = sorted(set(body) - IGNORED - {"messages", "task", "use_activation", "input"})
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}; a pooling request here has messages, "
                          "task and use_activation", unknown[0], "unknown_field")
    model = body.get("model")
    if model is not None and model != name:
        raise ApiError(404, f"the reward model {model!r} is not served here; this server scores "
                       f"with {name!r} (or leave model out)", param="model",
                       code="model_not_found")
    if "input" in body:
        raise bad_request("this server scores chats: send `messages` (system and user "
                          "messages, then the assistant's response), not `input`", "input")
    if body.get("use_activation") not in (None, False):
        raise bad_request("scores here are the scorer's own values, without an activation: "
                          "leave use_activation out or false", "use_activation")
    task = body.get("task")
    messages = _messages(body.get("messages"), limits)
    *context, last = messages
    response = last["content"]
    if task is None:
        task = "token_classify" if step_tag in response else "classify"
    if task not in TASKS:
        raise bad_request(f"task must be one of {', '.join(TASKS)}, got {task!r}", "task",
                          "unsupported_task")
    users = [m["content"] for m in context if m["role"] == "user"]
    if not users:
        raise bad_request("the chat needs a user message (the question) before the "
                          "assistant's response", "messages")
    steps = 0
    if task == "token_classify":
        parts = response.split(step_tag)
        if parts[-1].strip():
            raise bad_request(f"with task token_classify every step ends with the step tag "
                              f"{step_tag!r}, the last one too", "messages")
        parts = [p.strip() for p in parts[:-1]]
        if not all(parts) or any(SEPARATOR in p for p in parts):
            raise bad_request(f"a step is empty or holds a blank line ({SEPARATOR!r}, which "
                              "the scorer splits steps on)", "messages")
        response, steps = SEPARATOR.join(parts), len(parts)
    return task, ScoreItem(users[-1], context, response), steps


def _messages(value: Any, limits: Limits) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise bad_request("messages must be a non-empty list of {role, content}", "messages")
    if len(value) > MAX_MESSAGES:
        raise LimitError(f"at most {MAX_MESSAGES} messages per request", param="messages")
    out, chars = [], 0
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)):
            raise bad_request(f"messages[{i}] must be an object with string role and content",
                              f"messages[{i}]")
        if m["role"] not in ("system", "user", "assistant"):
            raise bad_request(f"messages[{i}].role must be system, user or assistant",
                              f"messages[{i}].role")
        chars += len(m["content"])
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "assistant":
        raise bad_request("the last message must be the assistant's response to score",
                          "messages")
    if chars > limits.max_request_tokens:
        raise LimitError(f"the chat has {chars} characters, over this server's limit of "
                         f"{limits.max_request_tokens} per request (max_request_tokens, "
                         "--max-request-tokens)", param="messages")
    return out


def answer(name: str, task: str, rating: Rating, steps: int) -> dict[str, Any]:
    if task == "classify":
        rows: Any = [float(rating.score)]
    else:
        if rating.step_scores is None or len(rating.step_scores) != steps:
            found = "none" if rating.step_scores is None else len(rating.step_scores)
            raise ApiError(500, f"{name} gave {found} step scores for {steps} steps",
                           type="server_error", code="scorer_error")
        rows = [[float(s)] for s in rating.step_scores]
    tokens = rating.usage.scorer_tokens
    return {"id": f"pool-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
            "model": name, "data": [{"index": 0, "object": "pooling", "data": rows}],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}}


class RewardBatcher:
    """Items from concurrent requests, scored together: the first waits `gather_seconds`
    for company, then up to MAX_BATCH_ITEMS go in one scorer call on the engine's thread.
    A batch that fails is retried item by item, so a bad item fails only its request."""

    def __init__(self, scorer, worker, gather_seconds: float):
        self.scorer, self.worker, self.gather_seconds = scorer, worker, gather_seconds
        self.pending: list[tuple[ScoreItem, asyncio.Future]] = []
        self.running: asyncio.Task | None = None
        self.batches = 0

    async def score(self, item: ScoreItem) -> Rating:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        if self.running is None or self.running.done():
            self.running = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        await self._gather()
        while self.pending:
            batch = self.pending[:MAX_BATCH_ITEMS]
            del self.pending[:MAX_BATCH_ITEMS]
            batch = [(i, f) for i, f in batch if not f.done()]  # waiters gone (deadline)
            if batch:
                await self._run(batch)

    async def _gather(self) -> None:
        """Wait one window; while chats keep arriving, wait more (at most GATHER_WINDOWS
        windows), so a burst of requests parsed one by one still shares one call."""
        for _ in range(GATHER_WINDOWS):
            before = len(self.pending)
            await asyncio.sleep(self.gather_seconds)
            if len(self.pending) == before or len(self.pending) >= MAX_BATCH_ITEMS:
                return

    async def _run(self, batch: list[tuple[ScoreItem, asyncio.Future]]) -> None:
        loop = asyncio.get_running_loop()
        executor = getattr(self.worker, "_executor", None)  # the engine's one thread
        self.batches += 1
        try:
            ratings = await loop.run_in_executor(executor, self.scorer.score,
                                                 [i for i, _ in batch])
        except Exception as exc:
            if len(batch) > 1:
                for one in batch:
                    await self._run([one])
                return
            log.error("reward model failed on an item: %r", exc)
            error = exc if isinstance(exc, ApiError) else ApiError(
                500 if not isinstance(exc, ValueError) else 400,
                f"the reward model could not score this chat: {type(exc).__name__}: "
                f"{str(exc)[:300]}", type="server_error" if not isinstance(exc, ValueError)
                else "invalid_request_error", code="scorer_error")
            _settle(batch[0][1], error=error)
            return
        for (_, future), rating in zip(batch, ratings, strict=True):
            _settle(future, rating)


def _settle(future: asyncio.Future, rating: Rating | None = None,
            error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(rating)
