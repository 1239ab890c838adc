"""One worker owns the engine; concurrent requests share its batched calls.

The engine is synchronous and not thread-safe, so every engine call runs on one dedicated
thread, one call at a time. Requests wait in a queue. When the worker is free it takes the
first waiting job, waits a short gathering window for more, and then runs:

  * all plain-sampling jobs together as ONE engine.generate call (the engine decodes every
    request's samples in one batch), streaming each token to its request's queue;
  * strategy jobs grouped by identical config, one strategy.run(problems) per group
    (self-consistency and best-of-N make one batched engine call for the whole group).

Fairness: on an engine with follow-ups, plain jobs that arrive while the engine decodes
(plain or a strategy's call) join the running loop at its next step and are answered as
soon as their own samples are done, so a short request never waits for a long one to end.
Jobs behind a strategy job keep their place in the queue.

Each job is checked (tokenized, its worst case held to the context and the budget) on the
worker before it runs, so one bad request fails alone instead of sinking the batch. A job
whose client went away or whose deadline passed stops at the next decode step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ponder.server.errors import ApiError, LimitError, Stopped, deadline_error
from ponder.server.jobs import Job, whole_requests
from ponder.server.limits import over_budget, over_context
from ponder.server.logprobs import detailed
from ponder.server.metered import MeteredEngine
from ponder.server.plain import PlainRun
from ponder.strategies.cost import Cost, cost_options
from ponder.types import (
    Completion,
    Generation,
    Scored,
    ScoreRequest,
    SequenceState,
    Usage,
)

log = logging.getLogger("ponder.server")

# Strategies whose run() makes exactly one generate call with one request per problem, in
# order: safe to batch across requests, and progress maps back to each request by index.
GROUPABLE = {"self_consistency", "best_of_n", "weighted_best_of_n"}


class EngineWorker:
    """Feeds the engine from a queue on a single worker thread.

    gather_seconds: how long to wait after the first job for others to share its batch.
    max_batch_requests: most jobs taken into one round (1 turns gathering off).
    scorers: the scorers the operator named at start, by name, built once and shared
        (reward models load on first use); the model-free ones of the registry are built
        per run on the request's metered engine.
    """

    def __init__(self, engine, gather_seconds: float = 0.01, max_batch_requests: int = 256,
                 progress_seconds: float = 0.25, scorers: dict[str, Any] | None = None):
        if gather_seconds < 0 or max_batch_requests < 1:
            raise ValueError("gather_seconds must be >= 0 and max_batch_requests >= 1")
        self.engine = engine
        self.gather_seconds = gather_seconds
        self.max_batch_requests = max_batch_requests
        self.progress_seconds = progress_seconds
        self.scorers = dict(scorers or {})
        caps = engine.capabilities
        self.can_stop = caps.early_stop  # stop hooks end a request's samples mid-decode
        self.can_admit = caps.follow_ups  # new requests join a running decode loop
        self.busy = False
        self.batches = 0  # engine rounds run
        self.cancelled = 0  # requests whose client left before they were done
        self.expired = 0  # requests stopped or refused at their deadline
        self.recent_sizes: deque[int] = deque(maxlen=16)  # requests in each recent round
        self.joined = 0  # plain requests that joined a running decode loop
        self.metrics = None  # server.metrics.Metrics: counts tokens and rounds when set
        # Jobs wait here; the engine thread takes plain ones from the front while it decodes
        # (deque appends and pops are atomic, so no lock is needed).
        self._waiting: deque[Job] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- lifecycle (event-loop side) ----------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()
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
        return len(self._waiting)

    @property
    def decode_steps(self) -> int | None:
        return getattr(self.engine, "decode_steps", None)

    def submit(self, jobs: list[Job]) -> None:
        """A request's jobs (one per prompt), queued in one step: the engine thread, taking
        jobs to join its running loop, then never takes part of a request."""
        if not self.alive:
            raise ApiError(503, "the engine worker is not running", type="server_error",
                           code="unavailable")
        self._waiting.extend(jobs)  # one C call under the GIL: no thread sees it half done
        self._arrived.set()

    async def _serve(self) -> None:
        while True:
            if not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
                if self.gather_seconds and self.max_batch_requests > 1:
                    await asyncio.sleep(self.gather_seconds)
            jobs = []
            while self._waiting and (len(jobs) < self.max_batch_requests
                                     or jobs[-1].sibling_of(self._waiting[0])):
                job = self._waiting.popleft()
                if self._wanted(job):
                    jobs.append(job)
            self.busy = True
            try:
                for batch in _rounds(jobs):
                    run = self._run_plain if batch[0].plain else self._run_strategy
                    joined = self.joined
                    try:
                        await self._loop.run_in_executor(self._executor, run, batch)
                    except Exception as exc:  # run() reports its own errors; this is a backstop
                        log.exception("engine batch failed")
                        for job in batch:
                            self.emit(job, "error", exc)
                    self.batches += 1
                    self.recent_sizes.append(len(batch))
                    if self.metrics is not None:
                        self.metrics.batch(len(batch) + self.joined - joined)
            finally:
                self.busy = False

    def _wanted(self, job: Job) -> bool:
        """False for a job whose deadline passed while it waited (that one is refused), or
        whose client left. The deadline is looked at first: a request the app gave up on at
        its deadline is marked cancelled too, and counts as expired."""
        if job.expired():
            self.expired += 1
            self.emit(job, "error", deadline_error(job.seconds))
            return False
        if job.cancelled:
            self.cancelled += 1
            log.info("request dropped from the queue: its client went away")
            return False
        return True

    def take_plain(self) -> list[Job]:
        """Plain jobs at the front of the queue, taken to join a running decode loop (engine
        thread). It stops at the first strategy job, which keeps its place: first come,
        first served."""
        out = []
        while self._waiting and self._waiting[0].plain:
            job = self._waiting.popleft()
            if self._wanted(job):
                out.append(job)
        self.joined += len(out)
        return out

    # ---- worker-thread side -------------------------------------------------------------

    def emit(self, job: Job, kind: str, data: Any = None) -> None:
        if kind == "done" and self.metrics is not None:
            self.metrics.done(job, data)
        self._loop.call_soon_threadsafe(job.events.put_nowait, (job.tag, kind, data))

    def check(self, job: Job, cost_of: Callable[[int], Cost], what: str,
              options: dict[str, Any]) -> list[int] | None:
        """Tokenize the job's prompt and hold its worst case to the context and the budget;
        None (and an error sent) when it fails."""
        field = "messages" if isinstance(job.prompt, list) else "prompt"
        try:
            ids = self.engine.tokenize(job.prompt)
        except Exception as exc:  # e.g. a chat template that rejects the message order
            self.emit(job, "error", ApiError(400, f"cannot build the prompt: {exc}",
                                             param=field, code="invalid_prompt"))
            return None
        try:
            cost = cost_of(len(ids))
        except ValueError as exc:  # a budget below the cheapest run with this prompt
            self.emit(job, "error", LimitError(str(exc), param="ponder.budget"))
            return None
        context = self.engine.max_positions
        if cost.longest > context or len(ids) >= context:
            self.emit(job, "error", over_context(len(ids), cost.longest, context, field))
            return None
        if cost.tokens > job.budget:
            self.emit(job, "error", over_budget(what, cost.tokens, len(ids), job.budget,
                                                options, job.own_budget))
            return None
        return ids

    def _run_plain(self, jobs: list[Job], alone: bool = False) -> None:
        run = PlainRun(self)
        requests = run.first_round(jobs) if self.can_admit else run.requests(jobs)
        try:
            if self.can_admit:
                generations = self.engine.generate(requests, run.on_token,
                                                   follow_up=run.follow_up, admit=run.admit)
            else:
                streaming = any(job.stream for job, _ in run.generating)
                generations = self.engine.generate(
                    requests, run.on_token if streaming else None) if requests else []
        except Exception as exc:
            log.exception("engine.generate failed")
            self._after_failure(run, exc, alone)
            return
        run.finish_all(generations)

    def _after_failure(self, run: PlainRun, exc: Exception, alone: bool) -> None:
        """An engine call of several requests failed. Whatever one request did to it must not
        fail the others: each request not yet answered, and that has streamed nothing (its
        client would see tokens twice), runs again on its own; a failure alone is its own."""
        answered = {id(run.generating[p][0]) for p in run.finished}
        jobs = {id(job): job for job, _ in run.generating + run.waiting + run.detailed}
        left = [job for key, job in jobs.items() if key not in answered and not job.stopped()]
        for job in left:
            if alone or len(left) == 1 or id(job) in run.streamed:
                self.emit(job, "error", exc)
            else:
                self._run_plain([job], alone=True)

    def finish_detailed(self, items: list[tuple[Job, list[int], Generation | None]]) -> None:
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
                self.emit(job, "error", error)
            return
        wall = time.perf_counter() - started
        scores = {id(job): s for (job, _), s in zip(scoring, scored, strict=True)}
        for job, ids, gen in items:
            score = scores.get(id(job))
            try:
                gen = _with_scoring(job, ids, gen, score, wall / max(1, len(scoring)))
                text = job.prompt if isinstance(job.prompt, str) else self.engine.detokenize(ids)
                self.emit(job, "done", detailed(self.engine, job.output, ids, text, gen, score))
            except Exception as exc:
                log.exception("building logprobs failed")
                self.emit(job, "error", exc)

    def _run_strategy(self, jobs: list[Job]) -> None:
        from ponder.scorers.registry import make_scorer
        from ponder.types import Problem

        def passes(job: Job) -> list[int] | None:
            strategy = job.strategy
            options = cost_options(strategy, strategy.worst_case(1), job.options)
            return self.check(job, strategy.worst_case, f"strategy {strategy.name!r}", options)

        ready = [job for job, _ids in whole_requests(jobs, passes)]
        for job in ready:
            self.emit(job, "started")
        if not ready:
            return
        plain = PlainRun(self) if self.can_admit else None
        engine = MeteredEngine(self.engine, ready, sum(j.budget for j in ready),
                               progress=self._progress_sender(), every=self.progress_seconds,
                               riders=plain)
        # Every problem gets the same id: a seeded request then samples the same whatever
        # else shares its batch. The prompt rides along so render() returns it as sent.
        problems = [Problem("request", job.question, "", {"prompt": job.prompt}) for job in ready]
        name = ready[0].scorer
        try:
            scorer = (self.scorers.get(name) or make_scorer(name, engine)) if name else None
            results = ready[0].strategy.run(problems, engine, scorer=scorer,
                                            render=lambda p: p.metadata["prompt"])
        except Stopped:
            results = None
            errors = [deadline_error(job.seconds) if job.expired() else None for job in ready]
        except ApiError as exc:
            errors = [exc] * len(ready)
        except ValueError as exc:  # the strategy refused this input or engine
            errors = [ApiError(400, f"strategy {ready[0].strategy.name!r}: {exc}",
                               param="ponder")] * len(ready)
        except Exception as exc:
            log.exception("strategy run failed")
            errors = [exc] * len(ready)
        else:
            errors = [deadline_error(job.seconds) if job.expired() else None for job in ready]
        finally:
            if plain is not None:
                engine.finish_riders()
        for i, (job, error) in enumerate(zip(ready, errors, strict=True)):
            if job.cancelled and not job.expired():
                self.cancelled += 1
                log.info("strategy request cancelled by its client")
            elif error is not None:
                self.expired += job.expired()
                self.emit(job, "error", error)
            else:
                self.emit(job, "done", results[i])

    def _progress_sender(self):
        def send(job: Job, info: dict) -> None:
            if job.stream and not job.cancelled:
                self.emit(job, "progress", info)
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

