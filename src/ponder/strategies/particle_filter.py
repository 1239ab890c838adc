"""Particle filtering over reasoning steps with a reward model as the likelihood (Puri et al.,
"A Probabilistic Inference Approach to Inference-Time Scaling of LLMs using Particle-Based
Monte Carlo Methods", arXiv 2502.01618).

N particles are partial solutions (nodes of the step-search tree, search/). Each round every
live particle grows one step from its own KV state (resampled copies of one node grow in one
request, so its prefix is read once), the scorer rates the new step, and the particle's
log-weight gains g(R_t) - g(R_{t-1}), where R_t is the path's value (the step scores
aggregated as `aggregation` says; "last" is the newest step's score, the paper's choice) and

- weighting="logit": g(R) = logit(R) / reward_temperature, for scores in [0, 1] (a PRM's
  probability that the solution is on track); the default, as its_hub does;
- weighting="reward": g(R) = R / reward_temperature, for any real-valued score.

The increments telescope, so a finished particle's weight is exp(g(R_final)) and the weighted
particles estimate q(x) * exp(g(R(x))), where q is the policy at the sampling temperature (p
itself at temperature 1): the reward tilts the policy's distribution over whole solutions,
and the intermediate scores only decide where compute goes. (Resampling on softmax(g(R_t)) of
the current scores each step, as the paper's algorithm reads, is what this does right after a
resampling, when all weights are equal.) When the effective sample size falls below
`ess_threshold` * N the particles are resampled (smc_core.py); the default 1.0 resamples
whenever the weights differ, as the paper does every step.

A particle that reaches a final step (an answer or EOS), max_steps, or the token budget stops
and keeps its weight. The answer: the weighted vote over the particles' answers
(answer_by="vote") or the heaviest particle's (answer_by="best").
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from ponder.strategies.base import default_render, problem_seed
from ponder.strategies.cost import Cost
from ponder.strategies.search.ops import Expansion, expand, last_score, path_value, rate
from ponder.strategies.search.results import candidate, finish
from ponder.strategies.search.tree import Node, SearchConfig, Tree, start
from ponder.strategies.smc_core import Population, check_scheme
from ponder.strategies.voting import vote, vote_table
from ponder.tasks.extract import extract_answer
from ponder.types import SequenceState

WEIGHTINGS = ("logit", "reward")
ANSWER_BY = ("vote", "best")


@dataclass(frozen=True)
class ParticleFilter(SearchConfig):
    particles: int = 8
    weighting: str = "logit"
    reward_temperature: float = 1.0
    resampling: str = "systematic"  # or multinomial, stratified
    ess_threshold: float = 1.0
    answer_by: str = "vote"
    name: str = "particle_filter"

    def worst_case(self, prompt_tokens: int) -> Cost:
        return self.search_cost(prompt_tokens, self.max_steps * self.particles)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.particles < 1:
            raise ValueError(f"particles must be >= 1, got {self.particles}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if not self.reward_temperature > 0:
            raise ValueError(f"reward_temperature must be > 0, got {self.reward_temperature}")
        if not 0 <= self.ess_threshold <= 1:
            raise ValueError(f"ess_threshold must be in [0, 1], got {self.ess_threshold}")
        if self.answer_by not in ANSWER_BY:
            raise ValueError(f"answer_by must be one of {ANSWER_BY}, got {self.answer_by!r}")
        check_scheme(self.resampling)

    def potential(self, value: float | None) -> float:
        """g(R): the log-potential of a path whose value is R (0 at the root)."""
        if value is None:
            return 0.0
        if self.weighting == "reward":
            return value / self.reward_temperature
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"weighting='logit' needs scores in [0, 1], got {value}; use "
                             "weighting='reward' for this scorer")
        value = min(max(value, 1e-6), 1 - 1e-6)
        return math.log(value / (1 - value)) / self.reward_temperature

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        filters = begin(problems, engine, scorer, extract, render, self)
        sweep(engine, scorer, filters, self, "pf")
        return [answer(f, [f.population], self) for f in filters]


@dataclass(eq=False)
class Filter:
    """One problem's particle filter: its search tree and its current population."""

    tree: Tree
    rng: random.Random
    population: Population[Node] = field(init=False)
    cut: set[int] = field(default_factory=set)  # node ids the budget stopped


def begin(problems, engine, scorer, extract, render, config: ParticleFilter) -> list[Filter]:
    if scorer is None:
        raise ValueError(f"{config.name} needs a scorer: its step scores are the particles' "
                         "weights (e.g. --scorer judge, a PRM, or a trained verifier)")
    trees = start(problems, engine, render, config, extract, config.name)
    return [Filter(t, random.Random(problem_seed(config.seed, t.problem.id, config.name)))
            for t in trees]


def sweep(engine, scorer, filters: Sequence[Filter], config: ParticleFilter, salt: str,
          references: Sequence[list[Node]] | None = None) -> None:
    """One particle-filter pass over every problem. With `references` (particle Gibbs),
    particle 0 of problem i follows references[i] step by step instead of sampling, and
    conditional resampling keeps it."""
    for f in filters:
        f.population = Population([f.tree.root] * config.particles, f.rng,
                                  scheme=config.resampling, threshold=config.ess_threshold)
    for depth in range(1, config.max_steps + 1):
        jobs, owners = [], []
        for i, f in enumerate(filters):
            groups: dict[int, list[int]] = {}
            for k, node in enumerate(f.population.particles):
                if references and k == 0 or _stopped(f, node, config):
                    continue
                groups.setdefault(node.id, []).append(k)
            for slots in groups.values():
                node = f.population.particles[slots[0]]
                if f.tree.reserve(node, len(slots), config.step_max_tokens):
                    jobs.append(Expansion(f.tree, node, len(slots), f"{salt}:d{depth}:n{node.id}"))
                    owners.append((i, slots))
                else:
                    f.cut.add(node.id)
        moved = _reference_steps(filters, references, depth)
        if not jobs and not moved:
            break
        parents = [list(f.population.particles) for f in filters]
        new = []
        for (i, slots), children in zip(owners, expand(engine, jobs, config.name), strict=True):
            for k, child in zip(slots, children, strict=True):
                new.append((i, k, child))
        _rate(engine, scorer, filters, new)
        for i, k, child in [*new, *moved]:
            f = filters[i]
            parent = f.population.particles[k]
            f.population.log_weights[k] += (config.potential(child.value)
                                            - config.potential(parent.value))
            f.population.particles[k] = child
        for i, f in enumerate(filters):
            live = any(not _stopped(f, n, config) for n in f.population.particles)
            f.population.step_done(may_resample=live, reference=0 if references else None)
            _drop_states(f, parents[i], references[i] if references else [])


def _reference_steps(filters, references, depth) -> list[tuple[int, int, Node]]:
    """Particle 0's next step on each problem's reference path (already rated)."""
    if not references:
        return []
    return [(i, 0, references[i][depth - 1]) for i in range(len(filters))
            if depth <= len(references[i])]


def _rate(engine, scorer, filters, new) -> None:
    jobs = [(filters[i].tree, child.response(filters[i].tree.config.separator), child.state)
            for i, _, child in new]
    for (i, _, child), r in zip(new, rate(scorer, engine, jobs), strict=True):
        child.score = last_score(r)
        child.value = path_value(child, filters[i].tree.config.aggregation)


def _stopped(f: Filter, node: Node, config: ParticleFilter) -> bool:
    return node.final or node.depth >= config.max_steps or node.id in f.cut


def _drop_states(f: Filter, parents: Sequence[Node], reference: Sequence[Node]) -> None:
    """Free the KV caches no particle can grow from any more (a reference path keeps its
    own). A node keeps its tokens: particle Gibbs may draw it into the next reference, and
    growing from it then re-reads its prefix (counted as any prefill is)."""
    alive = {n.id for n in f.population.particles} | {n.id for n in reference}
    for node in parents:
        if node.state is not None and node.state.cache is not None and node.id not in alive:
            node.state = SequenceState(node.state.token_ids)


def answer(f: Filter, populations: Sequence[Population[Node]], config: ParticleFilter,
           **trace):
    """The Result from the final particles of one or more sweeps (each sweep's weights
    normalized, the sweeps weighted equally)."""
    tree = f.tree
    nodes, weights, sweeps = [], [], []
    for s, pop in enumerate(populations):
        nodes += pop.particles
        weights += [w / len(populations) for w in pop.weights()]
        sweeps += [s] * len(pop)
    candidates = tuple(_candidate(tree, n, w, s) for n, w, s in zip(nodes, weights, sweeps,
                                                                    strict=True))
    answers = [c.answer for c in candidates]
    if config.answer_by == "vote":
        best, index = vote(answers, weights)
    else:
        index = max(range(len(nodes)), key=lambda j: (weights[j], -j))
        best = answers[index]
    chosen = nodes[index] if index is not None else None
    tree.stopped = tree.stopped or "answered"
    for n in tree.nodes:
        n.state = None
    return finish(tree, best, candidates, chosen, votes=vote_table(answers, weights),
                  particle_steps=[pop.history for pop in populations],
                  resamples=sum(pop.resamples for pop in populations), **trace)


def _candidate(tree: Tree, node: Node, weight: float, sweep_index: int):
    c = candidate(tree, node, score=weight)
    c.meta.update(value=node.value, sweep=sweep_index)
    return c
