"""The Scorer protocol: rate responses to questions, counting the tokens it costs.

Outcome scorers return one score per response. Process scorers also return one score per
step (`step_scores`); how steps combine into one score is a separate pure function, so a
strategy can choose min, prod, last or mean without re-scoring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ponder.types import Prompt, SequenceState, Usage


@dataclass(frozen=True)
class ScoreItem:
    """A response to rate: the bare question, the prompt the policy saw, and the response."""

    question: str
    prompt: Prompt
    response: str


@dataclass(frozen=True)
class Rating:
    score: float
    step_scores: tuple[float, ...] | None = None
    usage: Usage = field(default_factory=Usage)


@runtime_checkable
class Scorer(Protocol):
    name: str

    def score(self, items: Sequence[ScoreItem]) -> list[Rating]: ...


@runtime_checkable
class StepScorer(Scorer, Protocol):
    """A process scorer that can rate just each response's newest step (step search needs
    only that), continuing `states` (the policy's sequences ending with each response, or
    None) instead of re-reading the prompt when `engine` is the policy's engine."""

    engine: Any

    def score_last_step(self, items: Sequence[ScoreItem],
                        states: Sequence[SequenceState | None] | None = None) -> list[Rating]: ...


def aggregate_min(steps: Sequence[float]) -> float:
    return min(steps) if steps else 0.0


def aggregate_prod(steps: Sequence[float]) -> float:
    return math.prod(steps) if steps else 0.0


def aggregate_last(steps: Sequence[float]) -> float:
    return steps[-1] if steps else 0.0


def aggregate_mean(steps: Sequence[float]) -> float:
    return sum(steps) / len(steps) if steps else 0.0


AGGREGATIONS = {"min": aggregate_min, "prod": aggregate_prod, "last": aggregate_last,
                "mean": aggregate_mean}


def aggregate(steps: Sequence[float], how: str) -> float:
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown step aggregation {how!r}; use one of {sorted(AGGREGATIONS)}")
    return AGGREGATIONS[how](steps)
