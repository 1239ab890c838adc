"""The decode loop of the engines that run ponder's own sampling (native and llama.cpp).

The loop is the scheduler: it admits requests while the batch has room, samples one token
for every live sample, lets finished samples leave, hands a finished request to
`follow_up` and admits what it returns (and what `admit` brings in) into the running loop.
What runs the model is a per-backend `Runner`: it prefills admitted requests, gives the
next-token logits of every live sample, releases finished ones and runs one decode step.
The split is nano-vllm's (scheduler / model runner); here it lets every backend get
follow-ups, admission mid-decode and the same sampling rules from one piece of code.

One iteration:
  1. admit waiting requests while they fit (first come, first served);
  2. sample a token for every live sample from its logits (`decode.sample_step`);
  3. finished samples leave; a request with all its samples done goes to `follow_up`,
     whose requests join the queue (those that continue a cached state at once);
  4. one decode step feeds every live sample's last token.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol

import torch

from ponder.engines.base import Admit, FollowUp, TokenCallback
from ponder.engines.core.collect import JobRecord, collect_generations, wall_share
from ponder.engines.core.decode import DecodeSample, sample_step
from ponder.engines.core.requests import generate_requests
from ponder.types import GenerateRequest, Generation


class Runner(Protocol):
    """What the loop needs from a backend. Rows of `logits()` and of `step()` are the live
    samples, in the loop's order: the backend keeps its per-row state in that order.

    Optionally `ready(job) -> bool` and `prepare(job)`: a job not ready (a long prompt) has
    its prompt fed ahead, one chunk per prepare() call, between decode steps (see _Queue),
    instead of in one prefill that would hold every live sample up."""

    max_positions: int

    def job(self, index: int, request: GenerateRequest) -> JobRecord:
        """Check and tokenize one request (a clear ValueError for a bad one)."""

    def admissible(self, job: JobRecord, started: int, in_batch: Sequence[DecodeSample]) -> int:
        """How many more of `job`'s samples (`started` already are) may start now beside
        `in_batch`; 0: wait for room."""

    def joins(self, job: JobRecord) -> bool:
        """Whether the job needs no prefill of its own: its last prompt token rides along
        in the next decode step (a continuation of a cached state)."""

    def start(self, job: JobRecord, first: int, take: int) -> list[DecodeSample]:
        """New samples first..first+take-1 of `job` (the model work may wait for logits())."""

    def logits(self) -> torch.Tensor:
        """Next-token logits, one row per live sample (prefilling what start() queued)."""

    def release(self, finished: list[tuple[int, DecodeSample]], keep: list[int]) -> None:
        """Finished samples (with their rows) leave: set each one's state; keep `keep` rows."""

    def join(self, samples: list[DecodeSample]) -> None:
        """Append rows for samples that joins() admitted, after the live ones."""

    def step(self, tokens: list[int]) -> None:
        """Feed one token per live row through the model; logits() then gives the next."""

    def is_end(self, token: int) -> bool: ...

    def abort(self) -> None:
        """The loop failed (a callback raised, say): leave no half-written state behind."""


def run_decode(runner: Runner, requests: Sequence[GenerateRequest],
               on_token: TokenCallback | None = None, follow_up: FollowUp | None = None,
               admit: Admit | None = None) -> list[Generation]:
    """Every request's Generation by index, follow-ups and admitted requests included (they
    take the next indices, in the order they come)."""
    started = time.perf_counter()
    jobs = [runner.job(i, r) for i, r in enumerate(generate_requests(requests))]
    queue = _Queue(runner, jobs)
    live: list[DecodeSample] = []
    try:
        while True:
            if admit is not None:
                queue.add(admit())
            if not (queue.pending or live):
                break
            joining = queue.admit(live, [])
            if not (live or joining or queue.preparing):
                raise RuntimeError(f"request {queue.pending[0].index} does not fit in the "
                                   "engine even alone (its prompt and max_tokens need more "
                                   "room than the batch or the KV cache has)")
            if live:
                sample_step(runner.logits(), live, runner.is_end, runner.max_positions, on_token)
                keep = [i for i, s in enumerate(live) if not s.done]
                finished = [(i, s) for i, s in enumerate(live) if s.done]
                if finished:
                    runner.release(finished, keep)
                    live = [live[i] for i in keep]
                    # Each request once, even when several of its samples end together.
                    completed = list(dict.fromkeys(s.job for _, s in finished
                                                   if _finished(s.job)))
                    if follow_up is not None and completed:
                        share = wall_share(jobs, started)
                        for job in completed:
                            queue.add(follow_up(job.index, collect_generations([job], share)[0]))
                        # Follow-ups that continue a cached state join this very step.
                        joining += queue.admit(live, joining, only_joins=True)
            for sample in live:
                sample.forward_tokens += 1  # its last sampled token goes through the model
            if joining:
                runner.join(joining)
                live += joining
            if live:
                runner.step([s.token_ids[-1] if s.token_ids else s.job.ids[-1] for s in live])
    except BaseException:
        runner.abort()
        raise
    return collect_generations(jobs, wall_share(jobs, started))


def _finished(job: JobRecord) -> bool:
    return len(job.samples) == job.params.n and all(s.done for s in job.samples)


# While samples decode, a long prompt (Runner.prepare) gets one chunk fed every this many
# decode steps: the live samples keep most of the machine, and the prompt still advances.
FEED_EVERY = 4


class _Queue:
    """Requests waiting for room, first come first served; except that a request whose
    prompt the runner feeds ahead in chunks (its optional `ready` and `prepare`) lets later
    ones pass it until it is ready, and gets a chunk fed each iteration while nothing else
    decodes, else every FEED_EVERY decode steps."""

    def __init__(self, runner: Runner, jobs: list[JobRecord]):
        self.runner, self.jobs, self.pending = runner, jobs, deque(jobs)
        self.preparing = False  # a job was still being fed ahead at the last admit()
        self.since_fed = FEED_EVERY  # iterations since a chunk was fed ahead

    def add(self, requests: Sequence[GenerateRequest]) -> None:
        """New requests joining a running loop take the next indices, in order."""
        for request in requests:
            if not isinstance(request, GenerateRequest):
                raise ValueError("follow_up and admit must return GenerateRequests")
            job = self.runner.job(len(self.jobs), request)
            self.jobs.append(job)
            self.pending.append(job)

    def admit(self, live: list[DecodeSample], joining: list[DecodeSample],
              only_joins: bool = False) -> list[DecodeSample]:
        """Start waiting jobs' samples while they fit: those that need a prefill go into
        `live` (their logits come from it), those that join the next step are returned.
        With only_joins, stop at the first job that would need a prefill."""
        runner, new_joins = self.runner, []
        ready = getattr(runner, "ready", None)
        if not only_joins:
            self.since_fed += 1
        self.preparing, fed, i = False, False, 0
        while i < len(self.pending):
            job = self.pending[i]
            if ready is not None and not job.samples and not ready(job):
                if only_joins:
                    break
                if not fed and (not live or self.since_fed >= FEED_EVERY):
                    runner.prepare(job)  # one chunk an iteration at most
                    fed, self.since_fed = True, 0
                if not ready(job):
                    self.preparing = True
                    i += 1  # later requests may start meanwhile
                    continue
            joins = runner.joins(job)
            if only_joins and not joins:
                break
            started = len(job.samples)
            take = runner.admissible(job, started, [*live, *joining, *new_joins])
            if take == 0:
                break
            samples = runner.start(job, started, take)
            (new_joins if joins else live).extend(samples)
            if started + take == job.params.n:
                del self.pending[i]
        return new_joins
