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
(engine follow-ups), instead of every step waiting for the longest proposal of a round. In
the tail of a run, when only a few chains are left and the batch would decode a row or two,
a chain also starts the steps that would follow if its current step were rejected
(speculation, see _Runner); each step's randomness is fixed in advance, so this changes no
chain, only the tokens spent, and the stale steps' tokens are counted and reported.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ponder.engines.base import generate_chained, require
from ponder.strategies.base import (
    check_problems,
    confidence_meta,
    default_render,
    problem_seed,
    result,
)
from ponder.strategies.cost import Cost, blocks
from ponder.strategies.voting import vote, vote_table
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
    speculation_rows: int = 8  # speculate while fewer requests than this decode (run_chains)
    name: str = "power"

    def worst_case(self, prompt_tokens: int) -> Cost:
        """Per chain, block k (of K): its extension and mcmc_steps MH proposals, each charged
        its state (at most the prompt and k blocks) and generating at most k blocks."""
        k = blocks(self.max_tokens, self.block)
        per_chain = (1 + self.mcmc_steps) * (k * prompt_tokens + self.block * k * (k + 1))
        return Cost(self.n * per_chain, prompt_tokens + k * self.block,
                    ("mcmc_steps", "max_tokens", "n"))

    def __post_init__(self) -> None:
        if not self.alpha >= 1:
            raise ValueError(f"alpha must be >= 1 (1 is plain sampling), got {self.alpha}")
        if self.max_tokens < 1 or self.mcmc_steps < 0 or self.n < 1 or self.speculation_rows < 0:
            raise ValueError("max_tokens and n must be >= 1, mcmc_steps and speculation_rows >= 0")
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
            answer, chosen = vote(answers) if self.n > 1 else (answers[0], 0)
            out.append(result(
                problem, answer, candidates, usage, chosen=chosen,
                votes=vote_table(answers), acceptance_per_block=[c.acceptance for c in mine],
                chains=[c.history for c in mine],
                speculative_tokens_wasted=sum(c.wasted_tokens for c in mine),
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
    wasted_tokens: int = 0  # generated by speculative steps that turned out stale (in usage)
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

    Chains step independently: on an engine with follow-ups, a chain's next request joins the
    running decode loop as soon as its last result is back (elsewhere the chains advance in
    lockstep rounds). Where the engine can also stop a request early, a chain speculates while
    fewer than `config.speculation_rows` requests are decoding, which is the tail of a run,
    when the last chains would otherwise decode one row at a time: besides its current step
    it starts the steps that follow if the current one is rejected (see _Runner). Everything
    random comes from each chain's own seeds, so neither the order the chains step in nor
    speculation changes any chain; speculation only costs tokens, and those are counted.
    """
    require(engine, "power sampling", "logprobs", "sampling_logprobs", "states")
    caps = engine.capabilities
    rows = config.speculation_rows if caps.follow_ups and caps.early_stop else 0
    runners = [_Runner(Chain(random.Random(s), p), config, cancellable=rows > 0)
               for p, s in zip(prompts, seeds, strict=True)]
    owner: list[tuple[_Runner, int, int]] = []  # by request index: runner, op, version
    in_flight = 0
    active = list(runners)

    def launch(first: Sequence[_Runner]) -> list[GenerateRequest]:
        """The current step of each runner in `first` if not yet running, then speculative
        steps of any runner while there is spare room."""
        nonlocal in_flight, active
        out: list[GenerateRequest] = []

        def take(runner: _Runner) -> None:
            for op, version, request in runner.launches(max(0, rows - in_flight - len(out))):
                owner.append((runner, op, version))
                out.append(request)

        for runner in first:
            take(runner)
        # Every unfinished chain has its current step running, so there is spare room only
        # when fewer than `rows` chains are left: only then is the list of them walked.
        if rows - in_flight - len(out) > 0:
            active = [r for r in active if not r.chain.done]
            for runner in active:
                if rows - in_flight - len(out) <= 0:
                    break
                take(runner)
        in_flight += len(out)
        return out

    def follow_up(index: int, generation) -> list[GenerateRequest]:
        nonlocal in_flight
        in_flight -= 1
        runner, op, version = owner[index]
        runner.receive(op, version, generation)
        return launch([runner])

    generate_chained(engine, launch(runners), follow_up)
    return [r.chain for r in runners]


class _Runner:
    """Algorithm 1 for one chain as a fixed sequence of operations: with S = N_MCMC, op j is
    block k = j // (S+1) + 1's extension when j % (S+1) == 0, else one of its MH steps.

    Every op draws its randomness (proposal seed, acceptance uniform, then the index m) from
    its own generator, seeded by the chain's seed and j, so what an op does depends only on
    the sequence it starts from, never on when it runs. A rejected MH step leaves the sequence
    as it was; so, with the current op being an MH step, the ops after it up to the next
    block's extension have known requests if everything before them is rejected, and may run
    early (speculation). `version` counts changes of the sequence: an acceptance makes every
    result started from the old sequence stale, and those requests stop at their next token.
    The chain applies results strictly in op order, so it is exactly the sequential chain.
    """

    def __init__(self, chain: Chain, config: PowerSampling, cancellable: bool):
        self.chain, self.config, self.cancellable = chain, config, cancellable
        self.per_block = config.mcmc_steps + 1
        self.op = 0  # the next op to apply
        self.version = 0
        self.running: set[tuple[int, int]] = set()  # (op, version) requests in flight
        self.ready: dict[int, object] = {}  # results of later ops, in early
        self.seed = chain.rng.getrandbits(64)
        self.accepted = 0  # MH steps accepted in the current block

    def draws(self, op: int, length: int) -> tuple[int, float, int]:
        """Op `op`'s proposal seed, acceptance uniform, and index m over `length` tokens."""
        rng = random.Random(f"{self.seed}:{op}")
        seed, uniform = rng.getrandbits(62), rng.random()
        return seed, uniform, rng.randrange(length) if length else 0

    def horizon(self, block: int) -> int:
        # An ended chain takes its last round at the final horizon (module docstring).
        total = self.config.max_tokens
        return total if self.chain.ended else min(block * self.config.block, total)

    def request(self, op: int) -> GenerateRequest | None:
        """Op `op`'s request from the current sequence; None for an extension with nothing
        to add (the chain has ended, or already reaches the horizon)."""
        c, proposal = self.chain, self.config.proposal
        block, step = divmod(op, self.per_block)
        stop = self._stop_hook() if self.cancellable else None
        if step == 0:
            if self.adds_nothing(op):
                return None
            params = replace(proposal, max_tokens=self.horizon(block + 1) - len(c.logp),
                             seed=self.draws(op, 0)[0])
            if c.state is None:
                return GenerateRequest(c.prompt, params, keep_state=True, should_stop=stop)
            return GenerateRequest(state=c.state, params=params, keep_state=True,
                                   should_stop=stop)
        seed, _, m = self.draws(op, len(c.logp))
        params = replace(proposal, max_tokens=c.horizon - m, seed=seed)
        return GenerateRequest(state=c.state.truncate(c.prompt_len + m), params=params,
                               keep_state=True, should_stop=stop)

    def adds_nothing(self, op: int) -> bool:
        """Extension op `op` has nothing to generate: the chain has ended, or already
        reaches the block's horizon."""
        c = self.chain
        return c.ended or len(c.logp) >= self.horizon(op // self.per_block + 1)

    def _stop_hook(self):
        version = self.version
        return lambda _sample, _step: self.version != version

    def window(self) -> list[int]:
        """The ops whose requests are known now: the current one, and if it is an MH step,
        the rest of its block and the next block's extension."""
        if self.chain.done:
            return []
        if self.op % self.per_block == 0:
            return [self.op]
        next_block = (self.op // self.per_block + 1) * self.per_block
        ops = list(range(self.op, next_block))
        return ops + [next_block] if self.chain.horizon < self.config.max_tokens else ops

    def launches(self, spare: int) -> list[tuple[int, int, GenerateRequest]]:
        """Requests to start now: the current op's if it is not running, then up to `spare`
        speculative ones."""
        out = []
        for op in self.window():
            if (op, self.version) in self.running or op in self.ready:
                continue
            if op != self.op:
                if spare <= 0:
                    break
                spare -= 1
            request = self.request(op)
            if request is None:  # an extension that adds nothing: applied when current
                break
            self.running.add((op, self.version))
            out.append((op, self.version, request))
        return out

    def receive(self, op: int, version: int, generation) -> None:
        c = self.chain
        c.usage = c.usage + generation.usage
        self.running.discard((op, version))
        if version != self.version:  # started from a sequence the chain has left
            c.wasted_tokens += generation.usage.generated_tokens
            return
        self.ready[op] = generation
        self._settle()

    def _settle(self) -> None:
        """Apply, in op order, every op whose result is in (and extensions that add nothing)."""
        while not self.chain.done:
            op = self.op
            if op in self.ready:
                generation = self.ready.pop(op)
            elif op % self.per_block == 0 and self.adds_nothing(op):
                generation = None
            else:
                return
            if op % self.per_block == 0:
                self._extend(op, generation)
            else:
                self._mh_step(op, generation.completions[0])
            if op % self.per_block == self.per_block - 1:
                self._end_block()
            self.op += 1

    def _extend(self, op: int, generation) -> None:
        c = self.chain
        c.horizon = self.horizon(op // self.per_block + 1)
        self.accepted = 0
        if generation is not None:
            if c.state is None:
                c.prompt_len = len(generation.prompt_token_ids)
            c.take(len(c.logp), generation.completions[0])
            self._moved()

    def _mh_step(self, op: int, new) -> None:
        c = self.chain
        _, uniform, m = self.draws(op, len(c.logp))
        if _mh_accept(c, m, new, self.config.alpha, op // self.per_block + 1, uniform):
            self.accepted += 1
            self._moved()

    def _moved(self) -> None:
        """The sequence changed: everything started from the old one is stale."""
        self.version += 1
        for generation in self.ready.values():
            self.chain.wasted_tokens += generation.usage.generated_tokens
        self.ready.clear()

    def _end_block(self) -> None:
        c, steps = self.chain, self.config.mcmc_steps
        c.acceptance.append(self.accepted / steps if steps else 0.0)
        if c.horizon == self.config.max_tokens:
            c.done = True


def _mh_accept(c: Chain, m: int, new, alpha: float, block_index: int, uniform: float) -> bool:
    """Accept or reject the proposal that regenerated the chain from position m."""
    old_len, new_len = len(c.logp), m + len(new.token_ids)
    log_ratio = (alpha * (sum(new.logprobs) - sum(c.logp[m:]))
                 + sum(c.logq[m:]) - sum(new.sampling_logprobs)
                 + math.log(old_len) - math.log(new_len))
    ok = math.log(uniform or 1e-300) < log_ratio
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
