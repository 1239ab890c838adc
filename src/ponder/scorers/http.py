"""Reward models served over HTTP: `http-prm:URL` (step scores) and `http-orm:URL` (one score
per response), sent the way the openai engine sends generations.

    make_scorer("http-prm:http://127.0.0.1:8000")        # vLLM serving a Qwen2.5-Math-PRM
    make_scorer("http-orm:http://10.0.0.5:9000", api_key="secret")   # ponder serve --reward-model

The protocol is vLLM's pooling API: one `POST {URL}/pooling` per response, with the chat
`messages` (system prompt, user question, assistant response) and `task` "token_classify"
(a PRM: the assistant text is the steps each ended by the step tag `<extra_0>`, and the
server answers one row per tag) or "classify" (an outcome model: one row). Rows come back
unactivated (`use_activation: false`): a row of two logits is read as P(class 1) after a
softmax, as the in-process qwen-prm and orm styles read them; a row of one value is the score
itself (what `ponder serve --reward-model` answers). So the same weights give the same scores
here and in process (HFRewardModel), up to the servers' float arithmetic.

messages: "question" (default) lays the request out as the reward-model styles do (system
    prompt, the bare question, the response); "prompt" sends the policy's own prompt instead
    (chat messages; a string goes as one user message), which a verifier trained on the
    policy's prompts (`ponder train-verifier`) wants.
Requests go out concurrently, at most `concurrency` at once; 429, 5xx and connection errors
are retried `max_retries` times with exponential backoff, other 4xx fail at once with the
server's message. Usage counts the tokens the server says it read (`scorer_tokens`) and one
call per request.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Sequence
from typing import Any

from ponder.scorers.base import Rating, ScoreItem, aggregate
from ponder.scorers.hf_prm import QWEN_SYSTEM, split_steps
from ponder.types import Usage

KINDS = ("prm", "orm")
TASKS = {"prm": "token_classify", "orm": "classify"}
DEFAULT_STEP_TAG = "<extra_0>"
_DEFAULT = object()


def base_url(url: str) -> str:
    """The server's root: vLLM serves /pooling there, not under /v1."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"a reward model URL must start with http:// or https://, got {url!r}")
    return url[:-3] if url.endswith("/v1") else url


class HTTPRewardModel:
    """A Scorer whose model runs on a server speaking vLLM's pooling API (see the module
    docstring). kind: "prm" or "orm". model: the model name to send (default: none, the
    server's only model). api_key: bearer token (default $PONDER_REWARD_API_KEY).
    aggregation: how step scores become Rating.score (min, prod, last, mean)."""

    def __init__(self, url: str, kind: str = "prm", model: str | None = None,
                 api_key: str | None = None, concurrency: int = 16, timeout: float = 120.0,
                 max_retries: int = 4, backoff: float = 0.5, aggregation: str = "min",
                 separator: str = "\n\n", step_tag: str = DEFAULT_STEP_TAG,
                 system_prompt: Any = _DEFAULT, messages: str = "question"):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if messages not in ("question", "prompt"):
            raise ValueError(f"messages must be 'question' or 'prompt', got {messages!r}")
        if not separator or not step_tag:
            raise ValueError("separator and step_tag must be non-empty strings")
        aggregate([], aggregation)
        self.url, self.kind, self.model = base_url(url), kind, model
        self.api_key = api_key if api_key is not None else (
            os.environ.get("PONDER_REWARD_API_KEY") or None)
        self.pool_options = dict(concurrency=concurrency, timeout=timeout,
                                 max_retries=max_retries, backoff=backoff)
        self.aggregation, self.separator, self.step_tag = aggregation, separator, step_tag
        if system_prompt is _DEFAULT:
            system_prompt = QWEN_SYSTEM if kind == "prm" else None
        self.system_prompt, self.messages = system_prompt, messages
        self.name = f"http-{kind}:{self.url}"
        self._pool = None

    @property
    def pool(self):
        """The connection pool, opened on first use (naming a scorer costs nothing)."""
        if self._pool is None:
            from ponder.engines.openai_pool import ServerPool

            self._pool = ServerPool([self.url], self.api_key, **self.pool_options)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __repr__(self) -> str:
        return f"HTTPRewardModel({self.url!r}, kind={self.kind!r})"

    # ---- scoring ------------------------------------------------------------------------

    def score(self, items: Sequence[ScoreItem]) -> list[Rating]:
        """One Rating per item; a PRM fills step_scores (one per step)."""
        started = time.perf_counter()
        bodies = [self.request_body(it) for it in items]
        sent = [(i, b) for i, (b, _) in enumerate(bodies) if b is not None]
        answers = self.pool.run(self._send([b for _, b in sent])) if sent else []
        wall = time.perf_counter() - started
        values: list[Any] = [None] * len(items)
        tokens = [0] * len(items)
        for (i, _), answer in zip(sent, answers, strict=True):
            values[i], tokens[i] = self._read(answer, bodies[i][1])
        total = sum(tokens) or 1
        ratings = []
        for (body, _), value, n in zip(bodies, values, tokens, strict=True):
            usage = Usage(scorer_tokens=n, calls=1 if body is not None else 0,
                          wall_seconds=wall * n / total)
            if self.kind == "orm":
                ratings.append(Rating(float(value), usage=usage))
            else:
                steps = tuple(value or ())
                ratings.append(Rating(aggregate(steps, self.aggregation), steps, usage))
        return ratings

    def request_body(self, item: ScoreItem) -> tuple[dict[str, Any] | None, int]:
        """The pooling request for one item and how many step rows it asks for (None: a
        PRM response without steps, rated without a request)."""
        if self.kind == "prm":
            steps = split_steps(item.response, self.separator)
            if not steps:
                return None, 0
            for step in steps:
                if self.step_tag in step:
                    raise ValueError(f"a step of the response contains the step tag "
                                     f"{self.step_tag!r}; it cannot be sent to {self.url}")
            answer = "".join(f"{s}{self.step_tag}" for s in steps)
        else:
            steps, answer = [], item.response.strip()
        body: dict[str, Any] = {"messages": [*self._context(item),
                                             {"role": "assistant", "content": answer}],
                                "task": TASKS[self.kind], "use_activation": False}
        if self.model:
            body["model"] = self.model
        return body, len(steps)

    def _context(self, item: ScoreItem) -> list[dict[str, str]]:
        if self.messages == "question":
            system = [{"role": "system", "content": self.system_prompt}] \
                if self.system_prompt else []
            return [*system, {"role": "user", "content": item.question}]
        if isinstance(item.prompt, str):
            return [{"role": "user", "content": item.prompt}]
        if not item.prompt or not all(isinstance(m, dict) for m in item.prompt):
            raise ValueError("messages='prompt' needs prompts as text or chat messages, not "
                             "token ids")
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in item.prompt]

    async def _send(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # The pool holds each request until one of its `concurrency` slots is free.
        return list(await asyncio.gather(*(self.pool.post("/pooling", b) for b in bodies)))

    def _read(self, answer: dict[str, Any], steps: int) -> tuple[Any, int]:
        """(step scores or the score, tokens read) from one pooling answer."""
        try:
            [entry] = answer["data"]
            rows = entry["data"]
            tokens = int((answer.get("usage") or {}).get("prompt_tokens") or 0)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{self.url}/pooling answered something that is not a pooling "
                             f"response with one entry: {str(answer)[:300]}") from None
        if self.kind == "orm":
            if isinstance(rows, list) and rows and isinstance(rows[0], list) and len(rows) == 1:
                rows = rows[0]
            return _value(rows, self.url), tokens
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise ValueError(f"{self.url} did not answer one row per step (is it serving a "
                             f"process reward model?): {str(rows)[:200]}")
        if len(rows) != steps:
            raise ValueError(
                f"{self.url} returned {len(rows)} step scores for {steps} steps: the server's "
                f"step tag (vLLM: --pooler-config step_tag_id) must be the token of "
                f"{self.step_tag!r}, one token in its tokenizer")
        return [_value(r, self.url) for r in rows], tokens


def _value(row: Any, url: str) -> float:
    """A row of two logits -> P(class 1); a row of one value -> that value."""
    if not isinstance(row, list) or not all(isinstance(v, (int, float)) for v in row):
        raise ValueError(f"{url}: a score row must be a list of numbers, got {str(row)[:100]}")
    if len(row) == 1:
        return float(row[0])
    if len(row) == 2:
        high = max(row)
        exp = [math.exp(v - high) for v in row]
        return exp[1] / sum(exp)
    raise ValueError(f"{url}: a score row has {len(row)} values; a reward model here has one "
                     "(a score) or two (logits of bad/good)")
