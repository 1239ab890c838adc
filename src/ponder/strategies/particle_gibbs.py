"""Particle Gibbs over reasoning steps (Puri et al., arXiv 2502.01618, after Andrieu et al.,
2010): `sweeps` particle-filter passes (particle_filter.py), each conditioned on a reference
particle: in every pass after the first, particle 0 retraces the reference solution step by
step (its scores are reused, not re-rated) and survives every resampling, while the other
N - 1 resample from all N, the reference included (conditional SMC). At the end of a pass one
particle is drawn by weight and becomes the next reference. This is a Markov chain whose
stationary distribution is the filter's target q(x) * exp(g(R(x))), so the references are
(correlated) samples of it, and later passes search around the best solution found so far.

The answer is the weighted vote (or heaviest particle) over every pass's final particles, each
pass's weights normalized and the passes weighted equally.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ponder.strategies.base import default_render
from ponder.strategies.cost import Cost
from ponder.strategies.particle_filter import ParticleFilter, answer, begin, sweep
from ponder.tasks.extract import extract_answer


@dataclass(frozen=True)
class ParticleGibbs(ParticleFilter):
    sweeps: int = 4
    name: str = "particle_gibbs"

    def worst_case(self, prompt_tokens: int) -> Cost:
        return self.search_cost(prompt_tokens, self.sweeps * self.max_steps * self.particles)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sweeps < 1:
            raise ValueError(f"sweeps must be >= 1, got {self.sweeps}")
        if self.particles < 2 and self.sweeps > 1:
            raise ValueError("particle Gibbs needs particles >= 2: one is the reference")

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        filters = begin(problems, engine, scorer, extract, render, self)
        populations = [[] for _ in filters]
        references = None
        drawn: list[list[int]] = [[] for _ in filters]
        for s in range(self.sweeps):
            sweep(engine, scorer, filters, self, f"pg{s}", references)
            references = []
            for f, pops, ids in zip(filters, populations, drawn, strict=True):
                pops.append(f.population)
                k = f.rng.choices(range(len(f.population)), weights=f.population.weights())[0]
                node = f.population.particles[k]
                ids.append(node.id)
                references.append(node.path())
        return [answer(f, pops, self, references=ids)
                for f, pops, ids in zip(filters, populations, drawn, strict=True)]
