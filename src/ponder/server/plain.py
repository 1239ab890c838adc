"""Plain-sampling jobs in one engine loop.

A PlainRun checks jobs in, streams their tokens, and finishes each job as soon as its own
samples are done. On an engine with follow-ups it also admits plain jobs that arrive while
the loop runs, so a short request joins the running batch at the next decode step instead of
waiting for a long one to end. Every job's samples carry a stop hook, so a job whose client
went away, or whose deadline passed, leaves the batch at the next step.

Short ones first: of the jobs that arrive together (one round), a job that may generate at
least SHORT_FIRST_RATIO times the tokens of the round's shortest waits until the jobs
shorter than it are done, then joins the running loop, where such long jobs are fewer
(in samples) than the others. Why: on a CPU a decode step costs about in proportion to its
rows, so a few long jobs in the batch slow many short ones down for all of their steps
(bench_server's mixed load: 4 long and 32 short requests together), while held back they
lose little: they wait for jobs of at most a 1/SHORT_FIRST_RATIO of their length, and
then run in a smaller, faster batch. Where the long ones are as many, holding them would
cost them more than it saves the short ones, so nothing waits. Only the round's own jobs
wait, and only for the round's shorter jobs, so nothing waits on work that arrives later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from ponder.server.errors import deadline_error
from ponder.server.jobs import Job, whole_requests
from ponder.strategies.cost import Cost, sampling_cost
from ponder.types import GenerateRequest, Generation

log = logging.getLogger("ponder.server")

# A job of a round waits for the round's shorter jobs when it may generate this many times
# the shortest's tokens (max_tokens x n).
SHORT_FIRST_RATIO = 4


class Worker(Protocol):
    """What a plain run needs of the engine worker running it (server.batcher.EngineWorker)."""

    can_stop: bool  # the engine honours stop hooks mid-decode
    cancelled: int
    expired: int

    def check(self, job: Job, cost_of: Callable[[int], Cost], what: str,
              options: dict[str, Any]) -> list[int] | None: ...

    def emit(self, job: Job, kind: str, data: Any = None) -> None: ...

    def take_plain(self) -> list[Job]: ...

    def finish_detailed(self, items: list[tuple[Job, list[int], Generation | None]]) -> None: ...


def _tokens(job: Job) -> int:
    """The most tokens the job may generate (0: it only scores its prompt)."""
    if job.output is not None and job.output.score_only:
        return 0
    return job.params.max_tokens * job.params.n


def plain_cost(job: Job, prompt_tokens: int) -> Cost:
    if job.output is not None and job.output.score_only:  # echo scoring reads the prompt
        return Cost(prompt_tokens, prompt_tokens)
    return sampling_cost(prompt_tokens, job.params.n, job.params.max_tokens)


class PlainRun:
    """first: the engine's index of this run's first request (a strategy's own requests
    come before it when plain jobs ride along in a strategy's engine call)."""

    def __init__(self, worker: Worker, first: int = 0):
        self.worker, self.first = worker, first
        self.generating: list[tuple[Job, list[int]]] = []  # by engine index - first
        self.detailed: list[tuple[Job, list[int]]] = []  # finished after the loop
        self.finished: set[int] = set()
        self.results: dict[int, Generation] = {}  # detailed jobs' generations, by position
        self.waiting: list[tuple[Job, list[int]]] = []  # held until the shorter ones are done
        self.shorter: set[int] = set()  # positions of the jobs they wait for
        self.streamed: set[int] = set()  # ids of the jobs whose client has had tokens

    def first_round(self, jobs: list[Job]) -> list[GenerateRequest]:
        """The requests of jobs that arrived together: all of them, or, where admit() will be
        called (an engine with follow-ups), the short ones, the long ones held (see the
        module's docstring)."""
        checked = whole_requests(jobs, self._check)
        sizes = [_tokens(job) for job, _ in checked]
        limit = SHORT_FIRST_RATIO * min(filter(None, sizes), default=0)
        samples = [job.params.n for job, _ in checked]
        long = sum(n for n, size in zip(samples, sizes, strict=True) if size >= limit > 0)
        short = sum(n for n, size in zip(samples, sizes, strict=True) if 0 < size < limit)
        if long == 0 or long >= short:
            return [r for job, ids in checked if (r := self._start(job, ids)) is not None]
        now = []
        for (job, ids), size in zip(checked, sizes, strict=True):
            if size >= limit:
                self.waiting.append((job, ids))
            elif (request := self._start(job, ids)) is not None:
                now.append(request)
                self.shorter.add(len(self.generating) - 1)
        if self.waiting:
            log.info("%d long request(s) wait for %d shorter one(s) of their round",
                     len(self.waiting), len(now))
        return now

    def _check(self, job: Job) -> list[int] | None:
        return self.worker.check(job, lambda tokens: plain_cost(job, tokens), "this request",
                                 {"n": job.params.n, "max_tokens": job.params.max_tokens})

    def _start(self, job: Job, ids: list[int]) -> GenerateRequest | None:
        self.worker.emit(job, "started")
        if job.output is not None and job.output.wanted:
            self.detailed.append((job, ids))
        if job.output is not None and job.output.score_only:
            return None
        self.generating.append((job, ids))
        stop = (lambda _i, _v: job.stopped()) if self.worker.can_stop else None
        return GenerateRequest(ids, job.params, should_stop=stop, abandoned=job.stopped)

    def requests(self, jobs: list[Job]) -> list[GenerateRequest]:
        """Check jobs in (a request whole or not at all); their engine requests."""
        return [r for job, ids in whole_requests(jobs, self._check)
                if (r := self._start(job, ids)) is not None]

    def admit(self) -> list[GenerateRequest]:
        """The round's held jobs once the shorter ones are done, then plain jobs waiting at
        the front of the queue, checked in (engine callback)."""
        held = []
        if self.waiting and self.shorter <= self.finished:
            held = [r for job, ids in self.waiting if (r := self._start(job, ids)) is not None]
            self.waiting = []
        return held + self.requests(self.worker.take_plain())

    def on_token(self, request: int, sample: int, _token: int, delta: str) -> None:
        job = self.generating[request - self.first][0]
        if job.stream and delta and not job.cancelled:
            self.streamed.add(id(job))
            self.worker.emit(job, "token", (sample, delta))

    def follow_up(self, request: int, generation: Generation) -> list[GenerateRequest]:
        """A request's samples are all done: answer it now (engine callback)."""
        self.finish(request - self.first, generation)
        return []

    def finish(self, position: int, generation: Generation) -> None:
        if position in self.finished:
            return
        self.finished.add(position)
        job, _ids = self.generating[position]
        if job.expired():  # first: the app marks a request it gave up on cancelled too
            self.worker.expired += 1
            self.worker.emit(job, "error", deadline_error(job.seconds))
        elif job.cancelled:
            self.worker.cancelled += 1
            log.info("request cancelled by its client after %d generated tokens",
                     generation.usage.generated_tokens)
        elif job.output is None or not job.output.wanted:
            self.worker.emit(job, "done", generation)
        else:
            self.results[position] = generation

    def finish_all(self, generations: list[Generation]) -> None:
        """After the loop: answer whatever was not answered yet, then the detailed jobs."""
        for position, generation in enumerate(generations):
            self.finish(position, generation)
        if self.detailed:
            by_job = {id(self.generating[p][0]): g for p, g in self.results.items()}
            self.worker.finish_detailed([(job, ids, by_job.get(id(job)))
                                         for job, ids in self.detailed if not job.stopped()])
