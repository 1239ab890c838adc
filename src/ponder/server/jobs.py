"""A request's unit of engine work, as the app hands it to the engine worker."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from ponder.types import Prompt, SamplingParams


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
    options: tuple[str, ...] = ()  # the strategy options the request set (for messages)
    deadline: float | None = None  # time.monotonic() by which it must be done
    seconds: float = 0.0  # the deadline's length, for messages
    cancelled: bool = False  # the client went away: its remaining work is dropped
    own_budget: bool = False  # `budget` is the request's own, under the server's limit
    # The request this job is one prompt of: its other prompts' jobs share it.
    request: object = field(default_factory=object)

    def sibling_of(self, other: Job) -> bool:
        """Both are prompts of one request."""
        return self.request is other.request

    @property
    def plain(self) -> bool:
        return self.strategy is None

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def stopped(self) -> bool:
        """Its remaining engine work should stop (checked at every decode step)."""
        return self.cancelled or self.expired()


def whole_requests(jobs: list[Job], passes) -> list[tuple[Job, Any]]:
    """(job, passes(job)) for the jobs whose every sibling passed too: `passes` returns None
    for a job it refused (and has answered). Why: a request is answered whole, so one refused
    prompt refuses it all, and its other prompts must not go on to cost the engine (a long
    prompt's prefill would hold everyone else up for nothing). Siblings of a refused job are
    not checked (their request already has its answer)."""
    checked, refused = [], []
    for job in jobs:
        if any(job.sibling_of(r) for r in refused):
            continue
        value = passes(job)
        if value is None:
            refused.append(job)
        else:
            checked.append((job, value))
    return [(job, v) for job, v in checked if not any(job.sibling_of(r) for r in refused)]
