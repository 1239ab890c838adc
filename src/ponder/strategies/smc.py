"""Sequential Monte Carlo for the power distribution p^alpha: a cheaper sampler of the target
that power sampling's Metropolis-Hastings chain aims at.

N particles grow in blocks from the proposal q (the model at temperature 1/alpha). Each
token multiplies a particle's importance weight by p(token)^alpha / q(token), so after the
last block the weighted particles estimate p^alpha over whole sequences (a particle that hit
EOS is complete and keeps its weight). When the effective sample size falls below
`ess_threshold` * N, particles are resampled in proportion to their weights (systematic by
default) and the weights reset, so compute follows the promising prefixes. The particles,
weights and resampling are the SMC core's (smc_core.py), shared with particle filtering.

This is Power-SMC (Power-SMC, arXiv 2602.10273): SMC with p^alpha / q potentials and a
tempered proposal; `anneal` gives its schedule of rising exponents.

With `anneal`, block k targets p^alpha_k with alpha_k rising linearly from 1 to alpha; the
weight then also gains (alpha_k - alpha_{k-1}) * log p(prefix so far), and the last target
is p^alpha as before. The answer is one particle drawn by weight (a sample of the target),
or the weighted vote over the particles' answers with `vote=True`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ponder.engines.base import require
from ponder.strategies.base import (
    check_problems,
    confidence_meta,
    default_render,
    problem_seed,
    result,
)
from ponder.strategies.cost import Cost, blocks
from ponder.strategies.power import power_proposal
from ponder.strategies.smc_core import Population, check_scheme
from ponder.strategies.voting import vote, vote_table
from ponder.tasks.extract import extract_answer
from ponder.types import Candidate, GenerateRequest, Prompt, SamplingParams, SequenceState, Usage


@dataclass(frozen=True)
class SMCPower:
    alpha: float = 4.0
    max_tokens: int = 3072
    particles: int = 8
    block_size: int = 32  # tokens between resampling checks
    ess_threshold: float = 0.5
    resampling: str = "systematic"  # or multinomial, stratified (see smc_core)
    anneal: bool = False
    proposal_temperature: float | None = None  # default 1 / alpha
    top_p: float = 1.0
    vote: bool = False
    seed: int | None = 0
    name: str = "smc"

    def worst_case(self, prompt_tokens: int) -> Cost:
        """Every particle extends by one block at a time, each call charged its state."""
        k = blocks(self.max_tokens, self.block_size)
        return Cost(self.particles * k * (prompt_tokens + (k + 1) * self.block_size),
                    prompt_tokens + k * self.block_size,
                    ("particles", "max_tokens"))

    def __post_init__(self) -> None:
        if not self.alpha >= 1:
            raise ValueError(f"alpha must be >= 1, got {self.alpha}")
        if self.particles < 1 or self.block_size < 1 or self.max_tokens < 1:
            raise ValueError("particles, block_size and max_tokens must be >= 1")
        if not 0 <= self.ess_threshold <= 1:
            raise ValueError("ess_threshold must be in [0, 1]")
        check_scheme(self.resampling)

    @property
    def proposal(self) -> SamplingParams:
        return power_proposal(self.alpha, self.proposal_temperature, self.top_p, self.block_size)

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        problems = check_problems(problems)
        swarms = run_smc(engine, [render(p) for p in problems], self,
                         [problem_seed(self.seed, p.id, "smc") for p in problems])
        out = []
        for problem, swarm in zip(problems, swarms, strict=True):
            weights = swarm.normalized_weights()
            texts = [engine.detokenize(p.state.token_ids[swarm.prompt_len:]) for p in swarm.particles]
            candidates = tuple(
                Candidate(t, extract(t), w, len(p.logp),
                          {"log_weight": lw, "mean_logprob": p.mean_logprob,
                           **confidence_meta(p.entropies)})
                for t, w, p, lw in zip(texts, weights, swarm.particles,
                                       swarm.population.log_weights, strict=True))
            answers = [c.answer for c in candidates]
            drawn = swarm.rng.choices(range(len(candidates)), weights=weights)[0]
            answer, chosen = vote(answers, weights) if self.vote else (answers[drawn], drawn)
            length = max(1, len(swarm.particles[drawn].logp))
            out.append(result(
                problem, answer, candidates, swarm.usage, chosen=chosen, drawn_index=drawn,
                votes=vote_table(answers, weights), resamples=swarm.population.resamples,
                ess_history=[h["ess"] for h in swarm.population.history],
                particle_steps=[swarm.population.history],
                cost_ratio_vs_one_sample=swarm.usage.generated_tokens / length))
        return out


@dataclass(eq=False)
class Particle:
    state: SequenceState | None = None
    logp: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    ended: bool = False

    @property
    def mean_logprob(self) -> float:
        return sum(self.logp) / len(self.logp) if self.logp else 0.0

    def fork(self) -> Particle:
        """A resampled copy: it shares the state (no re-prefill) and copies the token lists."""
        return Particle(self.state, list(self.logp), list(self.entropies), self.ended)


@dataclass(eq=False)
class Swarm:
    """The particles of one prompt (a Population of the SMC core) and what they cost."""

    prompt: Prompt
    population: Population[Particle]
    prompt_len: int = 0
    usage: Usage = field(default_factory=Usage)

    @property
    def particles(self) -> list[Particle]:
        return self.population.particles

    @property
    def rng(self) -> random.Random:
        return self.population.rng

    def normalized_weights(self) -> list[float]:
        return self.population.weights()


def run_smc(engine, prompts: Sequence[Prompt], config: SMCPower,
            seeds: Sequence[int | None]) -> list[Swarm]:
    """Run one swarm per prompt; every live particle of every swarm extends in one call."""
    require(engine, "SMC power sampling", "logprobs", "sampling_logprobs", "states")
    swarms = [Swarm(p, Population([Particle() for _ in range(config.particles)], random.Random(s),
                                  Particle.fork, config.resampling, config.ess_threshold))
              for p, s in zip(prompts, seeds, strict=True)]
    blocks = math.ceil(config.max_tokens / config.block_size)
    alpha_prev = 1.0 if config.anneal else config.alpha
    for k in range(1, blocks + 1):
        alpha_k = (1.0 + (config.alpha - 1.0) * k / blocks) if config.anneal else config.alpha
        horizon = min(k * config.block_size, config.max_tokens)
        live = [(s, i) for s in swarms for i, p in enumerate(s.particles)
                if not p.ended and len(p.logp) < horizon]
        requests = []
        for s, i in live:
            p = s.particles[i]
            params = seeded_step(config.proposal, s.rng, horizon - len(p.logp))
            requests.append(GenerateRequest(s.prompt, params, keep_state=True) if p.state is None
                            else GenerateRequest(state=p.state, params=params, keep_state=True))
        # Annealing re-weights what every particle already has by the rise in alpha.
        for s in swarms:
            _anneal(s.population, alpha_k - alpha_prev)
        for (s, i), gen in zip(live, engine.generate(requests) if requests else [], strict=True):
            c, p = gen.completions[0], s.particles[i]
            if p.state is None:
                s.prompt_len = len(gen.prompt_token_ids)
            p.state, p.ended = c.state, c.finish_reason == "eos"
            p.logp += c.logprobs
            p.entropies += c.entropies or ()
            s.population.log_weights[i] += alpha_k * sum(c.logprobs) - sum(c.sampling_logprobs)
            s.usage = s.usage + gen.usage
        alpha_prev = alpha_k
        for s in swarms:
            finished = all(p.ended or len(p.logp) >= config.max_tokens for p in s.particles)
            s.population.step_done(may_resample=not finished)
        if not live:
            break
    if alpha_prev != config.alpha:  # every particle ended early: finish the annealing
        for s in swarms:
            _anneal(s.population, config.alpha - alpha_prev)
    return swarms


def _anneal(population: Population[Particle], rise: float) -> None:
    """A rise in alpha re-weights each particle by rise * log p(its tokens so far)."""
    for i, p in enumerate(population.particles):
        population.log_weights[i] += rise * sum(p.logp)


def seeded_step(proposal: SamplingParams, rng: random.Random, max_tokens: int) -> SamplingParams:
    """One proposal call's params: its own length, and a seed drawn from the swarm's rng so
    a run is reproducible whatever else shares the batch."""
    return replace(proposal, max_tokens=max_tokens, seed=rng.getrandbits(62))
