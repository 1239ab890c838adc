"""Scalable power sampling (Ji et al., "Scalable Power Sampling", arXiv 2601.21590): sample
p(x)^alpha autoregressively, one block at a time, with no Markov chain.

The math. Over the sequences a sampler of up to T tokens can produce (ending at EOS, or cut
at T), the target pi(x) is proportional to p(x)^alpha. Its conditional for the next block c
after a prefix x is

    pi(c | x) = p(c | x)^alpha * zeta(x, c) / sum over c' of p(c' | x)^alpha * zeta(x, c'),
    zeta(x, c) = sum over futures f of p(f | x, c)^alpha = E_{f ~ p(. | x, c)}[p(f | x, c)^(alpha-1)],

where the futures complete x + c to EOS or to T tokens (zeta = 1 when c ends the sequence).
With blocks of one token this is the paper's token-level decomposition; longer blocks apply
the same identity to a block, and are the cheap setting (below).

The proposal. Rollouts (and so candidates) are drawn from a proposal q: the model at
`proposal_temperature` tau, token by token (default 1/alpha, the token-level power
distribution, as `smc` proposes). Importance weights p/q correct for it, so the target is the
same for every tau; tau = 1 makes q = p, the paper's setting. Why not p: with p as proposal a
candidate's weight varies as p(c)^(alpha-1) over a handful of draws from p, which at alpha = 4
is nearly "keep the likeliest of k blocks", far from p^alpha (measured on the bundled model:
mean log p per token -0.86 at tau = 1 against MH's -0.43). q at 1/alpha is already close to
p^alpha token by token, so the weights only correct what is left.

The estimator. zeta is estimated from k rollouts f_1..f_k sampled from q continued from the
KV state of x + c, each of at most `rollout_tokens` tokens:

    zeta_hat(c) = (1/k) * sum_j exp(alpha * log p(f_j | x, c) - log q(f_j | x, c)),

(with q = p, (1/k) * sum_j p(f_j)^(alpha-1)). With rollouts that reach EOS or T this is
unbiased for zeta; shorter ones estimate the
rollout_tokens-step lookahead the paper approximates zeta with. The normalized weights
pi_hat(c) are a ratio of estimates, biased by O(1/k). The jackknife correction (the paper's)
removes the 1/k term: with pi_hat_{-j} the weights computed leaving out rollout j of every
candidate, pi_jk = k * pi_hat - (k - 1) / k * sum_j pi_hat_{-j}, whose bias is O(1/k^2).
It can be slightly negative: negative weights are clipped to 0 and the rest renormalized.
Both are computed in log space, so long rollouts do not underflow. alpha = 1 with tau = 1
makes every rollout weigh exp(0) = 1, so zeta_hat = 1 exactly and the sampler draws exactly
from p (see Candidates). The jackknife here leaves out rollouts only; the candidate counts
below are a second ratio estimate it does not correct.

Candidates. The next block's candidates are the first blocks of k samples from q(. | x),
and those samples are free: they are the first tokens of the chosen candidate's own
rollouts, which already continue x + c (only the first block of a run needs a call of its
own). Since the candidates are drawn from q, a distinct block c drawn n_c times weighs

    w(c) = n_c * p(c | x)^alpha / q(c | x) * zeta_hat(c)

(self-normalized importance sampling with q as the proposal: the counts stand in for one
factor of q). This is consistent for tokens and blocks alike (weighting sampled blocks by
p^alpha alone would count q twice), and exact at alpha = tau = 1, where choosing in
proportion to the counts is drawing from p. `top_m` keeps the most frequent distinct blocks (ties: the
likelier) and drops the rest; with top_m >= k nothing is dropped. The choice of c tilts its
rollouts, and so the next pool, toward likelier futures; on the toy this measured closer to
p^alpha than fresh samples would (TV 0.040 against 0.062 at k = 4, alpha = 2, plain
estimator) and costs nothing. The paper takes the exact top-K tokens of p instead; that
needs top log-probabilities and a call of its own per position, and is not done here: the
sampled candidates work on every engine and add no call.

Cost. Each block is one engine.generate call holding, for every live problem, one request
per candidate (n = k rollouts, continued from the candidate's KV state, max_tokens =
rollout_tokens). So a run of T tokens takes about T / block_size calls, each decoding at
most rollout_tokens steps in up to problems * top_m * k rows: in decode steps about
rollout_tokens / block_size times one sample, and in tokens up to top_m * k *
rollout_tokens / block_size times. Per-token selection (block_size = 1) with rollouts of
16 tokens is 16 times a sample's decode steps; the defaults (blocks of 16, rollouts of 16,
k = 4, top_m = 4) keep the decode steps near one sample's while the rows grow 16-fold,
which a GPU batches well (on a CPU, with the bundled model, 64 tokens for 2 problems took
about 2.4x a sample's CPU time per output token, for 13-15x the tokens). Longer rollouts see further ahead (a better
zeta) at proportionally more cost; more rollouts or candidates cost rows, not steps.

Engines need log-probabilities and states (`require(engine, ..., "logprobs", "states")`);
KV reuse makes the continued states cheap but is not needed for correctness. Memory: every
rollout keeps its state until the block is chosen (only the chosen candidate's rollouts
are kept after it), so up to problems * top_m * k states are held at a time.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from ponder.engines.base import require
from ponder.strategies.base import (
    check_problems,
    confidence_meta,
    default_render,
    problem_seed,
    result,
)
from ponder.strategies.cost import Cost, blocks
from ponder.tasks.extract import extract_answer
from ponder.types import Candidate, GenerateRequest, Prompt, SamplingParams, SequenceState, Usage


@dataclass(frozen=True)
class PowerAR:
    alpha: float = 4.0
    max_tokens: int = 3072
    k: int = 4  # rollouts per candidate
    rollout_tokens: int = 16  # the lookahead of each rollout (at least block_size)
    top_m: int = 4  # candidates per block, the most frequent of k samples
    block_size: int = 16  # tokens chosen per step (1 is the paper's token-level sampler)
    jackknife: bool = True
    proposal_temperature: float | None = None  # default 1 / alpha; 1 is the paper's p
    seed: int | None = 0
    name: str = "power_ar"

    def __post_init__(self) -> None:
        if not (isinstance(self.alpha, int | float) and math.isfinite(self.alpha)
                and self.alpha >= 1):
            raise ValueError(f"alpha must be a number >= 1 (1 is plain sampling), got {self.alpha!r}")
        for key in ("max_tokens", "k", "rollout_tokens", "top_m", "block_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        if self.rollout_tokens < self.block:
            raise ValueError(f"rollout_tokens ({self.rollout_tokens}) must be at least "
                             f"block_size ({self.block}): the chosen candidate's rollouts "
                             "supply the next block's candidates")
        tau = self.proposal_temperature
        if tau is not None and not (isinstance(tau, int | float) and not isinstance(tau, bool)
                                    and math.isfinite(tau) and tau > 0):
            raise ValueError(f"proposal_temperature must be a number > 0 (default 1/alpha), "
                             f"got {tau!r}")
        if self.jackknife and self.k < 2:
            raise ValueError("the jackknife needs k >= 2 rollouts (or set jackknife=false)")

    @property
    def tau(self) -> float:
        """The proposal's temperature: proposal_temperature, or 1/alpha."""
        return self.proposal_temperature if self.proposal_temperature is not None else 1 / self.alpha

    @property
    def block(self) -> int:
        """Tokens chosen per step: block_size, or max_tokens if that is shorter."""
        return min(self.block_size, self.max_tokens)

    def worst_case(self, prompt_tokens: int) -> Cost:
        """The first block's k samples, then per block j (of at most K = ceil(T/B)) top_m
        requests, each charged its state (at most the prompt and j blocks) and generating k
        rollouts."""
        steps = blocks(self.max_tokens, self.block)
        states = steps * prompt_tokens + self.block * steps * (steps + 1) // 2
        rollouts = steps * self.k * self.rollout_tokens
        first = prompt_tokens + self.k * self.block
        return Cost(first + self.top_m * (states + rollouts), prompt_tokens + self.max_tokens,
                    ("k", "top_m", "rollout_tokens", "max_tokens"))

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        problems = check_problems(problems)
        walks = run_power_ar(engine, [render(p) for p in problems], self,
                             [problem_seed(self.seed, p.id, "power_ar") for p in problems])
        out = []
        for problem, walk in zip(problems, walks, strict=True):
            text = engine.detokenize(walk.tokens)
            candidate = Candidate(text, extract(text), walk.mean_logprob, len(walk.tokens),
                                  {"sum_logprob": sum(walk.logp), "mean_logprob": walk.mean_logprob,
                                   "finish_reason": "eos" if walk.ended else "length",
                                   **confidence_meta(walk.entropies)})
            out.append(result(
                problem, candidate.answer, (candidate,), walk.usage, chosen=0,
                blocks=walk.trace, first_block_tokens=walk.first_tokens,
                rollout_tokens_generated=walk.rollout_tokens,
                cost_ratio_vs_one_sample=walk.usage.generated_tokens / max(1, len(walk.tokens))))
        return out


@dataclass(frozen=True)
class Block:
    """A candidate next block: its tokens, log p of each, and the state after it."""

    tokens: tuple[int, ...]
    logp: tuple[float, ...]
    logq: tuple[float, ...]  # under the proposal
    entropies: tuple[float, ...]
    state: SequenceState
    ends: bool  # with EOS
    count: int = 1  # times it was sampled


@dataclass(eq=False)
class Walk:
    """One problem's sequence, grown block by block."""

    prompt: Prompt
    rng: random.Random
    prompt_len: int = 0
    tokens: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    ended: bool = False
    pool: list[Block] = field(default_factory=list)  # the next block's candidates
    usage: Usage = field(default_factory=Usage)
    first_tokens: int = 0  # the first block's samples
    rollout_tokens: int = 0  # every rollout's
    trace: list[dict] = field(default_factory=list)

    @property
    def mean_logprob(self) -> float:
        return sum(self.logp) / len(self.logp) if self.logp else 0.0


def run_power_ar(engine, prompts: Sequence[Prompt], config: PowerAR,
                 seeds: Sequence[int | None]) -> list[Walk]:
    """Grow one sequence per prompt; each block of every problem is one engine call."""
    require(engine, "scalable power sampling (power_ar)", "logprobs", "states")
    walks = [Walk(p, random.Random(s)) for p, s in zip(prompts, seeds, strict=True)]
    first = [GenerateRequest(w.prompt, _seeded(config, w.rng, config.block),
                             keep_state=True) for w in walks]
    for w, gen in zip(walks, engine.generate(first), strict=True):
        w.prompt_len = len(gen.prompt_token_ids)
        w.usage = w.usage + gen.usage
        w.first_tokens = sum(len(c.token_ids) for c in gen.completions)
        w.pool = _candidates(gen.completions, w.prompt_len, config)
    while live := [w for w in walks if w.pool]:
        requests, owners = [], []
        for w in live:
            for i, c in enumerate(w.pool):
                room = config.max_tokens - len(w.tokens) - len(c.tokens)
                if not c.ends and room > 0:
                    owners.append((w, i))
                    requests.append(GenerateRequest(
                        state=c.state, params=_seeded(config, w.rng, min(config.rollout_tokens, room)),
                        keep_state=True))
        rollouts: dict[tuple[int, int], tuple] = {}
        for (w, i), gen in zip(owners, engine.generate(requests) if requests else [], strict=True):
            w.usage = w.usage + gen.usage
            w.rollout_tokens += sum(len(c.token_ids) for c in gen.completions)
            rollouts[id(w), i] = gen.completions
        for w in live:
            _step(w, [rollouts.get((id(w), i), ()) for i in range(len(w.pool))], config)
    return walks


def _step(w: Walk, rollouts: list[tuple], config: PowerAR) -> None:
    """Weigh the candidates, draw one, append it, and take the next candidates from its
    rollouts."""
    alpha = config.alpha
    log_base = [math.log(c.count) + alpha * sum(c.logp) - sum(c.logq) for c in w.pool]
    values = [[alpha * sum(r.logprobs) - sum(r.sampling_logprobs) for r in rs]
              for rs in rollouts]
    plain = weights(log_base, values, jackknife=False)
    used = weights(log_base, values, jackknife=True) if config.jackknife else plain
    pick = w.rng.choices(range(len(w.pool)), weights=used)[0]
    chosen = w.pool[pick]
    w.trace.append({
        "position": len(w.tokens),
        "candidates": [list(c.tokens) for c in w.pool],
        "counts": [c.count for c in w.pool],
        "log_p": [round(sum(c.logp), 6) for c in w.pool],
        "log_q": [round(sum(c.logq), 6) for c in w.pool],
        "log_zeta": [round(_log_mean(v), 6) if v else 0.0 for v in values],
        "rollouts": [len(v) for v in values],
        "generated": sum(len(r.token_ids) for rs in rollouts for r in rs),
        "weights": [round(x, 6) for x in plain],
        "jackknife_weights": [round(x, 6) for x in used] if config.jackknife else None,
        "chosen": pick})
    w.tokens += chosen.tokens
    w.logp += chosen.logp
    w.entropies += chosen.entropies
    w.ended = chosen.ends
    done = chosen.ends or len(w.tokens) >= config.max_tokens
    start = w.prompt_len + len(w.tokens)
    w.pool = [] if done else _candidates(rollouts[pick], start, config)


def _candidates(completions, start: int, config: PowerAR) -> list[Block]:
    """The distinct first blocks of `completions` (whose new tokens begin at position
    `start` of their states), the top_m most frequent, ties broken by likelihood."""
    found: dict[tuple[int, ...], Block] = {}
    for c in completions:
        n = min(config.block, len(c.token_ids))
        tokens = tuple(c.token_ids[:n])
        if tokens in found:
            b = found[tokens]
            found[tokens] = Block(b.tokens, b.logp, b.logq, b.entropies, b.state, b.ends,
                                  b.count + 1)
            continue
        ends = c.finish_reason == "eos" and n == len(c.token_ids)
        found[tokens] = Block(tokens, tuple(c.logprobs[:n]), tuple(c.sampling_logprobs[:n]),
                              tuple((c.entropies or ())[:n]),
                              c.state.truncate(start + n), ends)
    ranked = sorted(found.values(), key=lambda b: (-b.count, -sum(b.logp)))
    return ranked[:config.top_m]


def weights(log_base: Sequence[float], values: Sequence[Sequence[float]],
            jackknife: bool) -> list[float]:
    """Normalized weights of candidates with log base weights `log_base` (log n_c +
    alpha log p(c) - log q(c)) and rollout log-weights `values` (alpha log p - log q of each
    rollout; none for a candidate that ends the sequence, whose zeta is 1). With `jackknife`, the bias-corrected weights
    k * pi_hat - (k - 1)/k * sum_j pi_hat_{-j}, clipped at 0 and renormalized."""
    full = _normalized([b + (_log_mean(v) if v else 0.0) for b, v in zip(log_base, values, strict=True)])
    k = max((len(v) for v in values), default=0)
    if not jackknife or k < 2:
        return full
    if any(v and len(v) != k for v in values):
        raise ValueError("the jackknife needs the same number of rollouts for every candidate")
    loo = [0.0] * len(full)
    for j in range(k):
        left = _normalized([b + (_log_mean(v[:j] + v[j + 1:]) if v else 0.0)
                            for b, v in zip(log_base, values, strict=True)])
        loo = [a + x for a, x in zip(loo, left, strict=True)]
    corrected = [max(0.0, k * f - (k - 1) / k * s) for f, s in zip(full, loo, strict=True)]
    total = sum(corrected)
    return [x / total for x in corrected] if total > 0 else full


def _log_mean(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))


def _normalized(logs: Sequence[float]) -> list[float]:
    top = max(logs)
    raw = [math.exp(x - top) for x in logs]
    total = sum(raw)
    return [x / total for x in raw]


def _seeded(config: PowerAR, rng: random.Random, max_tokens: int) -> SamplingParams:
    return SamplingParams(n=config.k, temperature=config.tau, max_tokens=max_tokens,
                          seed=rng.getrandbits(62))
