"""Recursive self-aggregation (Venkatraman et al., 2025, arXiv 2509.26626): keep a
population of N solutions and improve it step by step. The first population is N samples of
the problem; at each later step every one of the N new solutions is generated from a prompt
that shows the question and K solutions drawn (uniformly, without replacement) from the
previous population and asks for one improved solution. After T populations the answer is
the majority vote over the last one (as the paper reports RSA with majority voting).

K = 1 makes each chain a self-refinement; T = 1 is plain self-consistency. The options keep
the paper's names: n (N, the population), k (K) and steps (T, counting the first
population, so T - 1 aggregation steps run). The paper's main setting is N=16, K=4, T=10;
the defaults here are smaller, for small models.

Every problem's aggregation requests of a step go to the engine in one batched call. Usage
counts every generation and every aggregation prompt. Result.candidates holds every
population in order (meta: its `step` and the `parents` it was aggregated from, as indices
into the candidates); `chosen` points into the last one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ponder.strategies.base import (
    candidates_from,
    check_problems,
    default_render,
    problem_seed,
    result,
    sample_all,
    sampling_for,
)
from ponder.strategies.candidate_prompts import CANDIDATE_TOKENS, aggregation_prompt
from ponder.strategies.cost import TEMPLATE_TOKENS, Cost
from ponder.strategies.voting import vote, vote_table
from ponder.tasks.extract import extract_answer
from ponder.types import Candidate, GenerateRequest, SamplingParams


@dataclass(frozen=True)
class RSA:
    params: SamplingParams = field(
        default_factory=lambda: SamplingParams(n=8, temperature=0.7, max_tokens=512))
    k: int = 4  # K: the solutions each aggregation prompt shows
    steps: int = 3  # T: populations, the first one sampled from the problem itself
    name: str = "rsa"

    def __post_init__(self) -> None:
        for key in ("k", "steps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{self.name} needs {key} >= 1, got {value!r}")
        if self.k > self.params.n:
            raise ValueError(f"{self.name} draws k={self.k} solutions from a population of "
                             f"n={self.params.n}: use k <= n")

    def worst_case(self, prompt_tokens: int) -> Cost:
        """N samples of the problem, then (T - 1) x N aggregation calls, each prompt holding
        the question, the template and K solutions, each output up to max_tokens."""
        n, t = self.params.n, self.params.max_tokens
        aggregate = prompt_tokens + TEMPLATE_TOKENS + self.k * (t + CANDIDATE_TOKENS) + t
        tokens = prompt_tokens + n * t + (self.steps - 1) * n * aggregate
        longest = max(prompt_tokens + t, aggregate if self.steps > 1 else 0)
        return Cost(tokens, longest, ("n", "max_tokens", "k", "steps"))

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        problems = check_problems(problems)
        first = sample_all(problems, engine, self.params, render)
        usage = [g.usage for g in first]
        populations = [[_tag(c, 1, []) for c in candidates_from(g.completions, extract)]
                       for g in first]
        every = [list(pop) for pop in populations]  # every population, in order
        traces = [[_population_trace(1, pop)] for pop in populations]
        for step in range(2, self.steps + 1):
            requests, parents = [], []
            for i, problem in enumerate(problems):
                rng = random.Random(problem_seed(self.params.seed, problem.id, f"rsa:{step}"))
                offset = len(every[i]) - len(populations[i])
                for j in range(self.params.n):
                    subset = rng.sample(range(len(populations[i])), self.k)
                    prompt = aggregation_prompt(problem.question,
                                                [populations[i][s].text for s in subset])
                    requests.append(GenerateRequest(prompt, sampling_for(
                        self.params, problem, f"rsa:{step}:{j}", n=1,
                        max_tokens=self._room(engine, prompt))))
                    parents.append([offset + s for s in subset])
            generations = iter(engine.generate(requests))
            chosen_parents = iter(parents)
            for i in range(len(problems)):
                new = []
                for _ in range(self.params.n):
                    gen = next(generations)
                    usage[i] += gen.usage
                    candidate = candidates_from(gen.completions, extract)[0]
                    new.append(_tag(candidate, step, next(chosen_parents)))
                populations[i] = new
                every[i] += new
                traces[i].append(_population_trace(step, new))
        out = []
        for i, problem in enumerate(problems):
            answers = [c.answer for c in populations[i]]
            answer, first_voter = vote(answers)
            offset = len(every[i]) - len(populations[i])
            chosen = offset + first_voter if first_voter is not None else None
            out.append(result(problem, answer, tuple(every[i]), usage[i], chosen=chosen,
                              populations=traces[i], votes=vote_table(answers),
                              voters=len(answers),
                              k=self.k, steps=self.steps))
        return out

    def _room(self, engine, prompt) -> int:
        """max_tokens, capped at what the context leaves after the prompt; a prompt that
        leaves nothing is refused with what to lower."""
        room = engine.max_positions - len(engine.tokenize(prompt))
        if room < 1:
            raise ValueError(f"{self.name}: a prompt with k={self.k} solutions does not fit the "
                             f"model's context of {engine.max_positions} tokens; lower k or "
                             "max_tokens")
        return min(self.params.max_tokens, room)


def _tag(candidate: Candidate, step: int, parents: list[int]) -> Candidate:
    return replace(candidate, meta={**candidate.meta, "step": step, "parents": parents})


def _population_trace(step: int, population: Sequence[Candidate]) -> dict:
    answers = [c.answer for c in population]
    return {"step": step, "answers": answers, "votes": vote_table(answers)}
