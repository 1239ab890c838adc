"""A request's unit of engine work, as the app hands it to the engine worker."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
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

    @property
    def plain(self) -> bool:
        return self.strategy is None

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def stopped(self) -> bool:
        """Its remaining engine work should stop (checked at every decode step)."""
        return self.cancelled or self.expired()
