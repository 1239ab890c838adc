"""Self-consistency (Wang et al., 2022): sample N reasoning paths, extract each one's final
answer, and return the majority answer. Equivalent answers are pooled before voting; ties go
to the answer voted for first (see strategies.voting)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ponder.strategies.base import (
    candidates_from,
    check_problems,
    default_render,
    result,
    sample_all,
)
from ponder.strategies.cost import Cost, sampling_cost
from ponder.strategies.voting import vote, vote_table
from ponder.tasks.extract import extract_answer
from ponder.types import SamplingParams


@dataclass(frozen=True)
class SelfConsistency:
    params: SamplingParams = field(
        default_factory=lambda: SamplingParams(n=8, temperature=0.7, max_tokens=512))
    name: str = "self_consistency"

    def worst_case(self, prompt_tokens: int) -> Cost:
        return sampling_cost(prompt_tokens, self.params.n, self.params.max_tokens)

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        problems = check_problems(problems)
        out = []
        for problem, gen in zip(problems, sample_all(problems, engine, self.params, render),
                                strict=True):
            candidates = candidates_from(gen.completions, extract)
            answers = [c.answer for c in candidates]
            answer, chosen = vote(answers)
            out.append(result(problem, answer, candidates, gen.usage, chosen=chosen,
                              votes=vote_table(answers)))
        return out
