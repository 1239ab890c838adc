"""Beam search against a step verifier (Snell et al., 2024; search-and-learn): sample N first
steps, keep the top M by the scorer's value, grow each kept beam N/M ways, and repeat until
the beams end in answers or max_steps; the answer is the best completed beam's. Every
expansion is one batched engine call over all beams of all problems, each continuing from
its beam's KV state. `lookahead` > 0 scores a step by greedy rollouts (see lookahead.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ponder.strategies.base import default_render
from ponder.strategies.cost import Cost
from ponder.strategies.search.beams import run_beams
from ponder.strategies.search.tree import SearchConfig
from ponder.tasks.extract import extract_answer


@dataclass(frozen=True)
class BeamSearch(SearchConfig):
    n: int = 8  # candidate steps per step, across the kept beams
    m: int = 2  # beams kept per step
    lookahead: int = 0  # greedy steps rolled out before a candidate is scored
    name: str = "beam_search"

    def worst_case(self, prompt_tokens: int) -> Cost:
        # n candidate steps per depth, each rolled out `lookahead` steps further.
        return self.search_cost(prompt_tokens, self.max_steps * self.n * (1 + self.lookahead))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.m < 1 or self.n < self.m or self.n % self.m:
            raise ValueError(f"n must be a positive multiple of m (n={self.n}, m={self.m}): "
                             "each of the m kept beams grows n/m ways")
        if self.lookahead < 0:
            raise ValueError("lookahead must be >= 0")

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        return run_beams(problems, engine, scorer, extract, render, self, self.name,
                         groups=1, keep=self.m, width=self.n // self.m, first_width=self.n,
                         lookahead=self.lookahead)
