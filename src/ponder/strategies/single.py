"""One sample per problem: `greedy` (temperature 0) and `sample` (any temperature, top-p,
top-k, min-p). Chain-of-thought is a prompt choice (`render`), so it composes with both."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ponder.strategies.base import (
    candidates_from,
    check_problems,
    default_render,
    result,
    sample_all,
)
from ponder.strategies.cost import Cost, sampling_cost
from ponder.tasks.extract import extract_answer
from ponder.types import SamplingParams


@dataclass(frozen=True)
class Sample:
    """One sample per problem from `params` (n is forced to 1)."""

    params: SamplingParams = field(
        default_factory=lambda: SamplingParams(temperature=0.7, max_tokens=512))
    name: str = "sample"

    def worst_case(self, prompt_tokens: int) -> Cost:
        return sampling_cost(prompt_tokens, self.params.n, self.params.max_tokens)

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        problems = check_problems(problems)
        generations = sample_all(problems, engine, replace(self.params, n=1), render)
        out = []
        for problem, gen in zip(problems, generations, strict=True):
            candidates = candidates_from(gen.completions, extract)
            out.append(result(problem, candidates[0].answer, candidates, gen.usage, chosen=0))
        return out


def greedy(max_tokens: int = 512) -> Sample:
    return Sample(SamplingParams(temperature=0, max_tokens=max_tokens), name="greedy")
