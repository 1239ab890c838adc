"""Diverse Verifier Tree Search (Beeching et al., "search-and-learn", 2024): split the N
samples into N/M independent subtrees, each a greedy beam search (keep its single best step,
grow it M ways), so one strong early step cannot take over the whole search as it can in
beam search. The answer is the best completed subtree's by value. Shares beam search's core
and batching: one engine call grows every subtree of every problem.
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
class DVTS(SearchConfig):
    n: int = 8  # candidate steps per step, across the subtrees
    m: int = 2  # each subtree grows M ways; there are n/m subtrees
    name: str = "dvts"

    def worst_case(self, prompt_tokens: int) -> Cost:
        return self.search_cost(prompt_tokens, self.max_steps * self.n)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.m < 1 or self.n < self.m or self.n % self.m:
            raise ValueError(f"n must be a positive multiple of m (n={self.n}, m={self.m}): "
                             "there are n/m subtrees, each growing m ways")

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        return run_beams(problems, engine, scorer, extract, render, self, self.name,
                         groups=self.n // self.m, keep=1, width=self.m, first_width=self.m)
