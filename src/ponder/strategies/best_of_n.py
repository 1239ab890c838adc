"""Best-of-N against a verifier (Cobbe et al., 2021; Lightman et al., 2023): sample N,
score each with an outcome or process scorer, return the top-scored answer. The weighted
form sums the scores of the samples that reach each (pooled) answer and returns the
heaviest answer, which mixes voting with verification."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ponder.scorers.base import ScoreItem
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
from ponder.types import SamplingParams, Usage


@dataclass(frozen=True)
class BestOfN:
    params: SamplingParams = field(
        default_factory=lambda: SamplingParams(n=8, temperature=0.7, max_tokens=512))
    weighted: bool = False
    name: str = "best_of_n"

    def worst_case(self, prompt_tokens: int) -> Cost:
        # The scorer reads every sample with its prompt.
        return sampling_cost(prompt_tokens, self.params.n, self.params.max_tokens, scored=True)

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        if scorer is None:
            raise ValueError(f"{self.name} needs a scorer (e.g. --scorer mean_logprob)")
        problems = check_problems(problems)
        generations = sample_all(problems, engine, self.params, render)
        items = [ScoreItem(p.question, render(p), c.text)
                 for p, g in zip(problems, generations, strict=True) for c in g.completions]
        ratings = iter(scorer.score(items))
        out = []
        for problem, gen in zip(problems, generations, strict=True):
            rated = [next(ratings) for _ in gen.completions]
            scores = [r.score for r in rated]
            candidates = candidates_from(gen.completions, extract, scores)
            usage = gen.usage + Usage.sum(r.usage for r in rated)
            answers = [c.answer for c in candidates]
            if self.weighted:
                weights = vote_weights(scores)
                answer, chosen = vote(answers, weights)
                out.append(result(problem, answer, candidates, usage, chosen=chosen,
                                  votes=vote_table(answers, weights)))
            else:
                best = max(range(len(candidates)), key=lambda i: (scores[i], -i))
                out.append(result(problem, candidates[best].answer, candidates, usage,
                                  chosen=best))
        return out


def vote_weights(scores: Sequence[float]) -> list[float]:
    """Scores as non-negative evidence to add up. Probabilities and other scores >= 0 (PRM
    outputs) are used as they are; log-probabilities become relative probabilities
    exp(score - max), so a sample ten nats less likely counts for almost nothing."""
    finite = [s for s in scores if math.isfinite(s)]
    if not finite:
        return [0.0] * len(scores)
    if min(finite) >= 0:
        return [s if math.isfinite(s) else 0.0 for s in scores]
    top = max(finite)
    return [math.exp(s - top) if math.isfinite(s) else 0.0 for s in scores]
