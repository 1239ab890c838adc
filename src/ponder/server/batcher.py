"""One worker owns the engine; concurrent requests share its batched calls.

The engine is synchronous and not thread-safe, so every engine call runs on one dedicated
thread, one call at a time. Requests arrive on an asyncio queue. When the worker is free it
takes the first waiting job, waits a short gathering window for more, and then runs:

  * all plain-sampling jobs together as ONE engine.generate call (the engine decodes every
    request's samples in one batch), streaming each token to its request's queue;
  * strategy jobs grouped by identical config, one strategy.run(problems) per group
    (self-consistency and best-of-N make one batched engine call for the whole group).

Jobs that arrive while the engine is busy wait in the queue and form the next batch, so
the batch grows with the load. Each job is checked (tokenized, budgeted) on the worker
before its batch runs, so one bad request fails alone instead of sinking the batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ponder.server.errors import ApiError, LimitError
from ponder.server.logprobs import detailed
from ponder.server.metered import MeteredEngine
from ponder.server.schemas import planned_tokens
from ponder.types import (
    Completion,
    GenerateRequest,
    Generation,
    Prompt,
    SamplingParams,
    Scored,
    ScoreRequest,
    SequenceState,
    Usage,
)

log = logging.getLogger("ponder.server")

# Strategies whose run() makes exactly one generate call with one request per problem, in
# order: safe to batch across requests, and progress maps back to each request by index.
GROUPABLE = {"self_consistency", "best_of_n", "weighted_best_of_n"}


@dataclass(eq=False)
class Job:
    """One unit of engine work for a request; events go to `events` as (tag, kind, data).

    kinds: started (checked, about to run), token (sample index, text delta), progress
    (a dict), done (a Generation or a Result), error (an exception).
    """

    tag: int
    events: asyncio.Queue
    prompt: Prompt
    budget: int
    stream: bool
    params: SamplingParams | None = None  # plain sampling
    strategy: Any = None  # a built strategy
    scorer: str | None = None
    question: str = ""
    output: Any = None  # schemas.Output: logprobs / echo wanted (plain jobs)
    cancelled: bool = False  # the client went away: skip if not started yet


class EngineWorker:
    """Feeds the engine from an asyncio queue on a single worker thread.

    gather_seconds: how long to wait after the first job for others to share its batch.
    max_batch_requests: most jobs taken into one round (1 turns gathering off).
    """

    def __init__(self, engine, gather_seconds: float = 0.01, max_batch_requests: int = 256,
                 progress_seconds: float = 0.25):
        if gather_seconds < 0 or max_batch_requests < 1:
            raise ValueError("gather_seconds must be >= 0 and max_batch_requests >= 1")
        self.engine = engine
        self.gather_seconds = gather_seconds
        self.max_batch_requests = max_batch_requests
        self.progress_seconds = progress_seconds
        self.busy = False
        self.batches = 0  # engine rounds run
        self.recent_sizes: deque[int] = deque(maxlen=16)  # requests in each recent round
        self._queue: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- lifecycle (event-loop side) ----------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ponder-engine")
        self._task = asyncio.create_task(self._serve(), name="ponder-engine-worker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def submit(self, job: Job) -> None:
        if not self.alive:
            raise ApiError(503, "the engine worker is not running", type="server_error",
                           code="unavailable")
        self._queue.put_nowait(job)

    async def _serve(self) -> None:
        while True:
            jobs = [await self._queue.get()]
            if self.gather_seconds and self.max_batch_requests > 1:
                await asyncio.sleep(self.gather_seconds)
            while len(jobs) < self.max_batch_requests and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            jobs = [j for j in jobs if not j.cancelled]
            self.busy = True
            try:
                for batch in _rounds(jobs):
                    run = self._run_plain if batch[0].strategy is None else self._run_strategy
                    try:
                        await self._loop.run_in_executor(self._executor, run, batch)
                    except Exception as exc:  # run() reports its own errors; this is a backstop
                        log.exception("engine batch failed")
                        for job in batch:
                            self._emit(job, "error", exc)
                    self.batches += 1
                    self.recent_sizes.append(len(batch))
            finally:
                self.busy = False

    # ---- worker-thread side -------------------------------------------------------------

    def _emit(self, job: Job, kind: str, data: Any = None) -> None:
        self._loop.call_soon_threadsafe(job.events.put_nowait, (job.tag, kind, data))

    def _check(self, job: Job, generated: int) -> list[int] | None:
        """Tokenize the job's prompt and hold it to the context and the budget; None (and an
        error sent) when it fails."""
        field = "messages" if isinstance(job.prompt, list) else "prompt"
        try:
            ids = self.engine.tokenize(job.prompt)
        except Exception as exc:  # e.g. a chat template that rejects the message order
            self._emit(job, "error", ApiError(400, f"cannot build the prompt: {exc}",
                                              param=field, code="invalid_prompt"))
            return None
        context = getattr(self.engine, "max_positions", None)
        if context is not None and len(ids) >= context:
            self._emit(job, "error", LimitError(
                f"the prompt has {len(ids)} tokens, more than the model's context of "
                f"{context}", param=field, code="context_length_exceeded"))
            return None
        if len(ids) + generated > job.budget:
            self._emit(job, "error", LimitError(
                f"this request may cost {len(ids) + generated} tokens ({len(ids)} prompt + "
                f"{generated} generated), over this server's budget of {job.budget} tokens "
                "per request (max_request_tokens, --max-request-tokens)",
                param="max_tokens"))
            return None
        return ids

    def _run_plain(self, jobs: list[Job]) -> None:
        checked: list[tuple[Job, list[int]]] = []
        for job in jobs:
            score_only = job.output is not None and job.output.score_only
            ids = self._check(job, 0 if score_only else job.params.n * job.params.max_tokens)
            if ids is not None:
                checked.append((job, ids))
                self._emit(job, "started")
        ready = [(job, GenerateRequest(ids, job.params)) for job, ids in checked
                 if job.output is None or not job.output.score_only]

        def on_token(request: int, sample: int, _token: int, delta: str) -> None:
            job = ready[request][0]
            if job.stream and delta and not job.cancelled:
                self._emit(job, "token", (sample, delta))

        streaming = any(job.stream for job, _ in ready)
        try:
            generations = self.engine.generate([r for _, r in ready],
                                               on_token if streaming else None) if ready else []
        except Exception as exc:
            log.exception("engine.generate failed")
            for job, _ in checked:
                self._emit(job, "error", exc)
            return
        by_job = {id(job): gen for (job, _), gen in zip(ready, generations, strict=True)}
        plain = [(job, ids) for job, ids in checked if job.output is None or not job.output.wanted]
        for job, _ in plain:
            self._emit(job, "done", by_job[id(job)])
        if len(plain) < len(checked):
            self._finish_detailed([(job, ids, by_job.get(id(job))) for job, ids in checked
                                   if job.output is not None and job.output.wanted])

    def _finish_detailed(self, items: list[tuple[Job, list[int], Generation | None]]) -> None:
        """Jobs that want logprobs or echo: score echoed prompts (one engine call for all of
        them), then build each response's log-probabilities."""
        scoring = [(job, ids) for job, ids, _ in items
                   if job.output.echo and job.output.logprobs is not None and len(ids) > 1]
        started = time.perf_counter()
        try:
            scored = self.engine.score([ScoreRequest(ids[:1], ids[1:], job.params
                                                     if job.output.sampling else None)
                                        for job, ids in scoring]) if scoring else []
        except Exception as exc:
            log.exception("engine.score failed")
            error = ApiError(400, f"cannot score the prompt for echo: {exc}", param="echo") \
                if isinstance(exc, ValueError) else exc
            for job, _, _ in items:
                self._emit(job, "error", error)
            return
        wall = time.perf_counter() - started
        scores = {id(job): s for (job, _), s in zip(scoring, scored, strict=True)}
        for job, ids, gen in items:
            score = scores.get(id(job))
            try:
                gen = _with_scoring(job, ids, gen, score, wall / max(1, len(scoring)))
                text = job.prompt if isinstance(job.prompt, str) else self.engine.detokenize(ids)
                self._emit(job, "done", detailed(self.engine, job.output, ids, text, gen, score))
            except Exception as exc:
                log.exception("building logprobs failed")
                self._emit(job, "error", exc)

    def _run_strategy(self, jobs: list[Job]) -> None:
        from ponder.scorers.likelihood import make_scorer
        from ponder.tasks.datasets import Problem

        ready = []
        for job in jobs:
            if self._check(job, planned_tokens(job.strategy)) is not None:
                ready.append(job)
                self._emit(job, "started")
        if not ready:
            return
        engine = MeteredEngine(self.engine, ready, sum(j.budget for j in ready),
                               progress=self._progress_sender(), every=self.progress_seconds)
        # Every problem gets the same id: a seeded request then samples the same whatever
        # else shares its batch. The prompt rides along so render() returns it as sent.
        problems = [Problem("request", job.question, "", {"prompt": job.prompt}) for job in ready]
        try:
            scorer = make_scorer(ready[0].scorer, engine) if ready[0].scorer else None
            results = ready[0].strategy.run(problems, engine, scorer=scorer,
                                            render=lambda p: p.metadata["prompt"])
        except ApiError as exc:
            errors = [exc] * len(ready)
        except ValueError as exc:  # the strategy refused this input or engine
            errors = [ApiError(400, f"strategy {ready[0].strategy.name!r}: {exc}",
                               param="ponder")] * len(ready)
        except Exception as exc:
            log.exception("strategy run failed")
            errors = [exc] * len(ready)
        else:
            for job, res in zip(ready, results, strict=True):
                self._emit(job, "done", res)
            return
        for job, exc in zip(ready, errors, strict=True):
            self._emit(job, "error", exc)

    def _progress_sender(self):
        def send(job: Job, info: dict) -> None:
            if job.stream and not job.cancelled:
                self._emit(job, "progress", info)
        return send


def _with_scoring(job: Job, ids: list[int], gen: Generation | None, score: Scored | None,
                  wall: float) -> Generation:
    """The job's Generation with the echo scoring pass in its usage; for max_tokens=0,
    n empty completions (the choices carry the echoed prompt only)."""
    forward = score.usage.forward_tokens if score is not None else 0
    if gen is None:
        empty = Completion("", (), (), (), "length", Usage(), SequenceState(tuple(ids)))
        usage = Usage(prompt_tokens=len(ids), forward_tokens=forward,
                      calls=1 if score is not None else 0, wall_seconds=wall)
        return Generation((empty,) * job.params.n, usage, tuple(ids))
    if score is None:
        return gen
    extra = Usage(forward_tokens=forward, calls=1, wall_seconds=wall)
    return Generation(gen.completions, gen.usage + extra, gen.prompt_token_ids)


def _rounds(jobs: list[Job]) -> list[list[Job]]:
    """The engine calls for one round: every plain job together, then the strategy jobs,
    those with equal configs (and scorer) sharing one run when their strategy allows."""
    plain = [j for j in jobs if j.strategy is None]
    groups: dict[Any, list[Job]] = {}
    alone = []
    for job in jobs:
        if job.strategy is None:
            continue
        try:
            key = (job.strategy, job.scorer) if getattr(job.strategy, "name", None) in GROUPABLE \
                else None
            hash(key)
        except TypeError:  # an unhashable config: run it alone
            key = None
        if key is None:
            alone.append([job])
        else:
            groups.setdefault(key, []).append(job)
    return ([plain] if plain else []) + list(groups.values()) + alone

