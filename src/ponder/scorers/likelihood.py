"""Scorers that need no extra model: the policy's own likelihood, and a format heuristic."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from ponder.scorers.base import Rating, ScoreItem
from ponder.types import ScoreRequest


class LikelihoodScorer:
    """Mean (default) or summed token log-probability of the response under a model.

    Mean favours confident answers of any length; sum also penalizes length.
    """

    def __init__(self, engine, reduce: str = "mean"):
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
        self.engine, self.reduce = engine, reduce
        self.name = f"{reduce}_logprob"

    def score(self, items: Sequence[ScoreItem]) -> list[Rating]:
        ratings: list[Rating | None] = [None] * len(items)
        scorable = [i for i, it in enumerate(items) if it.response.strip()]
        for i in range(len(items)):
            if i not in scorable:  # nothing to score: the worst possible rating, no cost
                ratings[i] = Rating(float("-inf"))
        scored = self.engine.score([ScoreRequest(items[i].prompt, items[i].response) for i in scorable])
        for i, s in zip(scorable, scored, strict=True):
            value = s.sum_logprob / len(s.logprobs) if self.reduce == "mean" else s.sum_logprob
            # The engine counts forward tokens; for a scorer they are scorer tokens.
            usage = replace(s.usage, prompt_tokens=0, forward_tokens=0,
                            scorer_tokens=s.usage.forward_tokens)
            ratings[i] = Rating(value, usage=usage)
        return ratings


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


class HeuristicScorer:
    """A free format score: +1 for a boxed answer, plus a brevity bonus in [0, 0.5] that
    shrinks as the response grows (shorter is preferred among boxed answers)."""

    name = "heuristic"

    def __init__(self, length_scale: int = 2000):
        self.length_scale = length_scale

    def score(self, items: Sequence[ScoreItem]) -> list[Rating]:
        out = []
        for it in items:
            boxed = 1.0 if _BOXED.search(it.response or "") else 0.0
            brevity = 0.5 * max(0.0, 1.0 - len(it.response or "") / self.length_scale)
            out.append(Rating(boxed + brevity))
        return out
