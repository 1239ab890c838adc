"""Power sampling (Karan & Du, "Reasoning with Sampling: Your Base Model is Smarter Than You
Think"): sample whole sequences from p(x)^alpha, not token by token, with block-wise
Metropolis-Hastings. Generation grows in blocks of B tokens from the proposal q (the model at
temperature 1/alpha); after each block, N_MCMC steps each pick an index m uniformly over the
generated tokens, regenerate the suffix from m with q, and accept with probability

    min(1, p(x')^alpha q(x | x') / (p(x)^alpha q(x' | x))).

States and EOS. In block k the chain lives on the sequences a horizon-H sampler can produce
(H = k*B, at most T_max): sequences that end with EOS within H tokens, and sequences of exactly
H tokens without EOS. These are disjoint events of "sample up to H tokens", so p (with
p(EOS | prefix) included for ended sequences, and the prefix probability for cut ones) is a
proper distribution on them and p^alpha a well-defined target. A proposal from m regenerates
with q until EOS or the horizon, so it lands in the same space, and the reverse move (same m,
regenerate back to x) has positive probability because every token of x came from q. The
index is uniform over the current length L, so the move's probability carries 1/L and its
reverse 1/L'; the acceptance ratio therefore includes L / L' (the length term the authors'
code leaves out), and the p^alpha and q factors of the shared prefix x[:m] cancel:

    log A = alpha * (sum log p(x'[m:]) - sum log p(x[m:]))
            + sum log q(x[m:]) - sum log q(x'[m:]) + log L - log L'.

For each m the moves (x, m) <-> (x', m) satisfy detailed balance, so the mixture kernel keeps
p^alpha invariant. A chain whose sequence has ended with EOS at the start of a block is not
extended: that block's MH steps use the final horizon T_max (an ended sequence is a state of
every horizon's space, and proposals then land in the T_max space), and the chain stops after
them. So the last N_MCMC steps of every chain are applied by a kernel that keeps p^alpha at
T_max invariant, at the cost of one extra round for chains that end early; stopping at the
first EOS, as the paper's code does, would leave such samples targeting a shorter horizon.

Speed: a proposal from m continues from the KV state of x[:m] (prefix reuse), and the chains of
every problem decode together; each chain steps on as soon as its own proposal is back
(engine follow-ups), instead of every step waiting for the longest proposal of a round.
"""

from __future__ import annotations

import math
import random
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

from ponder.engines.base import generate_chained, require
from ponder.strategies.base import (
    check_problems,
    confidence_meta,
    default_render,
    problem_seed,
    result,
)
from ponder.strategies.voting import majority, vote_table
from ponder.tasks.extract import extract_answer
from ponder.types import Candidate, GenerateRequest, Prompt, SamplingParams, SequenceState, Usage


@dataclass(frozen=True)
class PowerSampling:
    alpha: float = 4.0
    max_tokens: int = 3072
    block_size: int | None = None  # default max_tokens // 16, as in the paper
    mcmc_steps: int = 10
    proposal_temperature: float | None = None  # default 1 / alpha
    top_p: float = 1.0
    n: int = 1  # independent chains per problem; more than one votes
    seed: int | None = 0
    name: str = "power"

    def __post_init__(self) -> None:
        if not self.alpha >= 1:
            raise ValueError(f"alpha must be >= 1 (1 is plain sampling), got {self.alpha}")
        if self.max_tokens < 1 or self.mcmc_steps < 0 or self.n < 1:
            raise ValueError("max_tokens and n must be >= 1 and mcmc_steps >= 0")
        if self.block_size is not None and not 1 <= self.block_size <= self.max_tokens:
            raise ValueError(f"block_size must be in [1, max_tokens={self.max_tokens}]")

    @property
    def block(self) -> int:
        return self.block_size or max(1, self.max_tokens // 16)

    @property
    def proposal(self) -> SamplingParams:
        return power_proposal(self.alpha, self.proposal_temperature, self.top_p, self.max_tokens)

    def claimed_cost_ratio(self, length: int | None = None) -> float:
        """The paper's estimate of tokens spent per token of output: N_MCMC * T / (4B)."""
        return self.mcmc_steps * (length or self.max_tokens) / (4 * self.block)

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        problems = check_problems(problems)
        prompts, seeds = [], []
        for p in problems:
            for c in range(self.n):
                prompts.append(render(p))
                seeds.append(problem_seed(self.seed, p.id, f"chain{c}"))
        chains = run_chains(engine, prompts, self, seeds)
        out = []
        for i, problem in enumerate(problems):
            mine = chains[i * self.n:(i + 1) * self.n]
            candidates = tuple(
                Candidate(c.text(engine), extract(c.text(engine)), c.mean_logprob, len(c.logp),
                          {"acceptance": c.acceptance, "sum_logprob": sum(c.logp),
                           "mean_logprob": c.mean_logprob, **confidence_meta(c.entropies)})
                for c in mine)
            answers = [c.answer for c in candidates]
            usage = Usage.sum(c.usage for c in mine)
            length = sum(len(c.logp) for c in mine)
            out.append(result(
                problem, majority(answers) if self.n > 1 else answers[0], candidates, usage,
                votes=vote_table(answers), acceptance_per_block=[c.acceptance for c in mine],
                chains=[c.history for c in mine],
                cost_ratio_vs_one_sample=usage.generated_tokens / max(1, length),
                claimed_cost_ratio=self.claimed_cost_ratio(),
                claimed_cost_ratio_at_length=self.claimed_cost_ratio(length // self.n)))
        return out


@dataclass(eq=False)
class Chain:
    """One Metropolis-Hastings chain: its current sequence and what it cost."""

    rng: random.Random
    prompt: Prompt
    state: SequenceState | None = None
    prompt_len: int = 0
    logp: list[float] = field(default_factory=list)  # log p of each generated token
    logq: list[float] = field(default_factory=list)  # log q (proposal) of each
    entropies: list[float] = field(default_factory=list)  # model entropy at each, if known
    ended: bool = False  # the sequence ends with EOS
    horizon: int = 0  # the longest sequence this block's moves may produce
    done: bool = False  # took its last round at the final horizon
    usage: Usage = field(default_factory=Usage)
    acceptance: list[float] = field(default_factory=list)  # per block
    history: list[dict] = field(default_factory=list)  # proposals, for drill-down reports

    @property
    def mean_logprob(self) -> float:
        return sum(self.logp) / len(self.logp) if self.logp else 0.0

    def text(self, engine) -> str:
        return engine.detokenize(self.state.token_ids[self.prompt_len:])

    def take(self, prefix_len: int, completion) -> None:
        """Replace everything after generated position `prefix_len` with the completion."""
        self.state = completion.state
        self.logp = self.logp[:prefix_len] + list(completion.logprobs)
        self.logq = self.logq[:prefix_len] + list(completion.sampling_logprobs)
        self.entropies = self.entropies[:prefix_len] + list(completion.entropies or ())
        self.ended = completion.finish_reason == "eos"


def run_chains(engine, prompts: Sequence[Prompt], config: PowerSampling,
               seeds: Sequence[int | None]) -> list[Chain]:
    """Run one chain per prompt, all chains batched together; returns the final chains.

    Each chain is a coroutine that yields its next engine request and receives the result.
    Chains step independently: on an engine with follow-ups, a chain's next proposal joins
    the running decode loop as soon as its last one is back, so no chain waits for the
    longest proposal of a round. Everything random comes from each chain's own rng and
    seeds, so the order the chains step in changes nothing.
    """
    require(engine, "power sampling", "logprobs", "sampling_logprobs", "states")
    chains = [Chain(random.Random(s), p) for p, s in zip(prompts, seeds, strict=True)]
    owner: list[tuple[Chain, Generator]] = []  # by request index

    def advance(chain: Chain, process: Generator, generation=None) -> list[GenerateRequest]:
        try:
            request = process.send(generation)
        except StopIteration:
            return []
        owner.append((chain, process))
        return [request]

    def follow_up(index: int, generation) -> list[GenerateRequest]:
        return advance(*owner[index], generation)

    first = [r for c in chains for r in advance(c, _chain_process(c, config))]
    for (chain, _), generation in zip(owner, generate_chained(engine, first, follow_up),
                                      strict=True):
        chain.usage = chain.usage + generation.usage
    return chains


def _chain_process(c: Chain, config: PowerSampling) -> Generator:
    """Algorithm 1 for one chain: grow a block, then N_MCMC MH steps; yields requests."""
    proposal, block, total = config.proposal, config.block, config.max_tokens
    for k in range(1, math.ceil(total / block) + 1):
        # An ended chain takes its last round at the final horizon (module docstring).
        c.horizon = total if c.ended else min(k * block, total)
        if not c.ended and len(c.logp) < c.horizon:
            params = seeded_step(proposal, c.rng, c.horizon - len(c.logp))
            if c.state is None:
                gen = yield GenerateRequest(c.prompt, params, keep_state=True)
                c.prompt_len = len(gen.prompt_token_ids)
            else:
                gen = yield GenerateRequest(state=c.state, params=params, keep_state=True)
            c.take(len(c.logp), gen.completions[0])
        accepted = 0
        for _ in range(config.mcmc_steps):
            m = c.rng.randrange(len(c.logp))
            params = seeded_step(proposal, c.rng, c.horizon - m)
            gen = yield GenerateRequest(state=c.state.truncate(c.prompt_len + m), params=params,
                                        keep_state=True)
            accepted += _mh_accept(c, m, gen.completions[0], config.alpha, k)
        c.acceptance.append(accepted / config.mcmc_steps if config.mcmc_steps else 0.0)
        if c.horizon == total:
            c.done = True
            return


def _mh_accept(c: Chain, m: int, new, alpha: float, block_index: int) -> bool:
    """Accept or reject the proposal that regenerated the chain from position m."""
    old_len, new_len = len(c.logp), m + len(new.token_ids)
    log_ratio = (alpha * (sum(new.logprobs) - sum(c.logp[m:]))
                 + sum(c.logq[m:]) - sum(new.sampling_logprobs)
                 + math.log(old_len) - math.log(new_len))
    ok = math.log(c.rng.random() or 1e-300) < log_ratio
    c.history.append({"block": block_index, "m": m, "proposed_tokens": len(new.token_ids),
                      "log_ratio": round(log_ratio, 4), "accepted": ok})
    if ok:
        c.take(m, new)
    return ok


def power_proposal(alpha: float, temperature: float | None, top_p: float,
                   max_tokens: int) -> SamplingParams:
    """The proposal q of the power samplers: the model at temperature 1/alpha by default."""
    return SamplingParams(temperature=temperature or 1.0 / alpha, top_p=top_p,
                          max_tokens=max_tokens)


def seeded_step(proposal: SamplingParams, rng: random.Random, max_tokens: int) -> SamplingParams:
    """One proposal call's params: its own length, and a seed drawn from the caller's rng so
    a chain (or swarm) is reproducible whatever else shares the batch."""
    from dataclasses import replace

    return replace(proposal, max_tokens=max_tokens, seed=rng.getrandbits(62))
