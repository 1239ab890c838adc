"""Scalable power sampling (power_ar) on the enumerable toy model: its samples approach the
exact p^alpha as the rollouts grow, alpha = 1 samples p, the jackknife lowers the
estimator's bias, and every rollout token is paid for.

The toy model has 2 words + EOS and sequences of at most 3 tokens (15 continuations), so a
few thousand seeded runs give a histogram close to the sampler's true distribution. Every
run is seeded, so the figures below are deterministic; they were measured with these seeds.
"""

import collections
import math

import pytest

from ponder.engines.base import Capabilities
from ponder.engines.table import (
    TableEngine,
    exact_power_distribution,
    exact_temperature_distribution,
    total_variation,
)
from ponder.strategies.power_ar import PowerAR, run_power_ar, weights
from ponder.strategies.registry import make_strategy
from ponder.types import GenerateRequest, Problem, SamplingParams

LENGTH, PROMPT, RUNS = 3, [0], 2000


@pytest.fixture(scope="module")
def toy():
    return TableEngine(vocab_size=3, seed=0)


def sampled(engine, config, runs=RUNS):
    walks = run_power_ar(engine, [PROMPT] * runs, config, list(range(runs)))
    counts = collections.Counter(tuple(w.tokens) for w in walks)
    return {s: c / runs for s, c in counts.items()}, walks


def token_level(alpha, k, **changes):
    """Per-token choices with rollouts to the end, so zeta_hat is unbiased."""
    return PowerAR(alpha=alpha, max_tokens=LENGTH, k=k, rollout_tokens=LENGTH, block_size=1,
                   **changes)


def test_samples_approach_the_power_distribution_as_rollouts_grow(toy):
    # alpha = 2 spreads the target (its top sequence has 0.62): TV(p, target) = 0.28 and
    # token-level temperature 1/2 is 0.18 from it. With p as the proposal (the paper's),
    # measured TV to the exact p^alpha over 2000 runs (jackknife on; a perfect sampler's
    # histogram averages 0.018 at this size):
    #   k = 2: 0.134, k = 4: 0.036, k = 8: 0.015   (over 3000 runs: 0.120, 0.037, 0.014;
    #   plain estimator over 3000 runs: 0.129, 0.040, 0.018)
    target = exact_power_distribution(toy, PROMPT, LENGTH, 2.0)
    tv = {k: total_variation(sampled(toy, token_level(2.0, k, proposal_temperature=1.0))[0],
                             target) for k in (2, 4, 8)}
    assert tv[2] > tv[4] > tv[8]
    assert tv[2] > 0.09 and tv[8] < 0.035
    assert tv[8] < total_variation(exact_temperature_distribution(toy, PROMPT, LENGTH, 0.5),
                                   target) / 4


def test_the_tempered_proposal_is_closer_at_few_rollouts_and_converges_too(toy):
    # The default proposal q = p at temperature 1/alpha, with p^alpha/q weights. Measured TV
    # over 2000 runs: k = 2: 0.082 (p as proposal: 0.134), 4: 0.040, 8: 0.039, 16: 0.013 (3000
    # runs). At alpha = 4, k = 2: 0.068 against 0.260 with p. It converges more slowly in k
    # here (0.039 against 0.015 at k = 8): q's tails are lighter than the target's.
    target = exact_power_distribution(toy, PROMPT, LENGTH, 2.0)
    tv = {k: total_variation(sampled(toy, token_level(2.0, k))[0], target) for k in (2, 16)}
    assert tv[2] < 0.1 and tv[16] < 0.025
    plain = total_variation(sampled(toy, token_level(2.0, 2, proposal_temperature=1.0))[0],
                            target)
    assert tv[2] < plain - 0.03


def test_blocks_of_two_tokens_approach_it_too(toy):
    # Candidate blocks are weighed n_c * p^alpha / q * zeta_hat, which targets p^alpha for
    # blocks as for tokens. Measured TV over 2000 runs, every candidate kept, p as proposal:
    # k = 2: 0.157, 4: 0.078, 8: 0.048, 16: 0.045, 32: 0.012 (slower than per token: more
    # distinct blocks); q at 1/alpha: k = 2: 0.081, 8: 0.036.
    target = exact_power_distribution(toy, PROMPT, LENGTH, 2.0)
    tv = {k: total_variation(sampled(toy, PowerAR(
        alpha=2.0, max_tokens=LENGTH, k=k, rollout_tokens=LENGTH, block_size=2, top_m=k,
        proposal_temperature=1.0))[0], target) for k in (2, 8)}
    assert tv[8] < tv[2] - 0.05 and tv[8] < 0.07


def test_alpha_one_samples_the_model_itself(toy):
    # zeta_hat is exactly 1 and candidates weigh their sample counts, so this is p for any k
    # (measured TV 0.021 over 3000 runs at k = 2, within a perfect sampler's spread).
    hist, walks = sampled(toy, token_level(1.0, 2), runs=RUNS)
    assert all(z == 0.0 for w in walks for b in w.trace for z in b["log_zeta"])
    assert total_variation(hist, exact_temperature_distribution(toy, PROMPT, LENGTH, 1.0)) < 0.04


@pytest.mark.parametrize("k", [2, 3, 4])
def test_the_jackknife_lowers_the_bias_of_the_next_token_weights(toy, k):
    """E[weights] at the first position, every token a candidate, against the exact
    conditional of p^alpha (alpha = 4). Measured bias (TV of the mean weights to the exact
    conditional, 3000 draws): plain 0.107 / 0.051 / 0.024 at k = 2 / 3 / 4, jackknife
    0.063 / 0.008 / 0.012."""
    alpha, draws = 4.0, 3000
    exact = collections.defaultdict(float)
    for seq, prob in exact_power_distribution(toy, PROMPT, LENGTH, alpha).items():
        exact[seq[0]] += prob
    row = toy.logprobs(PROMPT)
    words = [0, 1]  # token 2 is EOS: it ends the sequence, zeta = 1, no rollouts
    gens = toy.generate([GenerateRequest(PROMPT + [t], SamplingParams(
        n=k * draws, max_tokens=LENGTH - 1, seed=100 + k + t)) for t in words])
    values = [[(alpha - 1) * sum(c.logprobs) for c in g.completions] for g in gens]
    base = [alpha * float(row[t]) for t in range(3)]  # every token, each counted once
    mean = {False: [0.0] * 3, True: [0.0] * 3}
    for d in range(draws):
        rollouts = [v[d * k:(d + 1) * k] for v in values] + [[]]
        for jackknife in mean:
            w = weights(base, rollouts, jackknife)
            mean[jackknife] = [m + x / draws for m, x in zip(mean[jackknife], w, strict=True)]
    bias = {j: 0.5 * sum(abs(m[t] - exact[t]) for t in range(3)) for j, m in mean.items()}
    assert bias[True] < 0.75 * bias[False]
    assert bias[False] > 0.02


def test_usage_counts_every_rollout_token():
    toy = TableEngine(vocab_size=8, seed=1)  # EOS is rarer: longer runs
    problems = [Problem(f"p{i}", "toy", "0") for i in range(3)]
    config = PowerAR(alpha=4.0, max_tokens=8, k=3, rollout_tokens=4, top_m=2, block_size=2,
                     seed=5)
    results = config.run(problems, toy, render=lambda p: [int(p.id[1:])])
    assert sum(len(r.trace["blocks"]) for r in results) == 7  # blocks, with these seeds
    for r in results:
        blocks = r.trace["blocks"]
        rollout = sum(b["generated"] for b in blocks)
        assert r.trace["rollout_tokens_generated"] == rollout
        assert r.usage.generated_tokens == r.trace["first_block_tokens"] + rollout
        assert r.usage.calls == 1 + sum(1 for b in blocks for n in b["rollouts"] if n)
        for b in blocks:  # each candidate that does not end gets its k rollouts, >= 1 token
            assert all(n in (0, 3) for n in b["rollouts"])
            assert b["generated"] >= sum(b["rollouts"])
            assert len(b["candidates"]) <= 2
        assert r.usage.generated_tokens >= 3 * sum(n > 0 for b in blocks for n in b["rollouts"])
        assert r.usage.prompt_tokens + r.usage.generated_tokens <= config.worst_case(1).tokens
        assert math.isclose(sum(blocks[0]["jackknife_weights"]), 1.0, abs_tol=1e-5)
    # A problem's run does not depend on what else shares the batch.
    alone = config.run(problems[1:2], toy, render=lambda p: [int(p.id[1:])])
    assert alone[0].candidates == results[1].candidates and alone[0].usage.generated_tokens == \
        results[1].usage.generated_tokens


@pytest.mark.parametrize("options, message", [
    ({"alpha": 0.5}, "alpha must be a number >= 1"),
    ({"k": 0}, "k must be an integer >= 1"),
    ({"top_m": 0}, "top_m must be an integer >= 1"),
    ({"rollout_tokens": 4, "block_size": 8}, "rollout_tokens .* must be at least block_size"),
    ({"k": 1}, "the jackknife needs k >= 2"),
    ({"k": True}, "k must be an integer"),
    ({"proposal_temperature": 0}, "proposal_temperature must be a number > 0"),
])
def test_bad_options_say_what_is_wrong(options, message):
    with pytest.raises(ValueError, match=message):
        PowerAR(**options)
    assert PowerAR(k=1, jackknife=False).k == 1
    # A block longer than the whole run is the whole run.
    assert PowerAR(block_size=64, rollout_tokens=8, max_tokens=8).block == 8


def test_engines_without_states_are_refused_and_the_registry_builds_it():
    class Stateless(TableEngine):
        capabilities = Capabilities(states=False)

    with pytest.raises(ValueError, match=r"power_ar.*\['states'\]"):
        PowerAR(max_tokens=4, block_size=1, rollout_tokens=2).run(
            [Problem("a", "q", "0")], Stateless(), render=lambda p: [0])
    built = make_strategy("power_ar", k="8", max_tokens=64, alpha=2, jackknife="false")
    assert (built.k, built.max_tokens, built.alpha, built.jackknife) == (8, 64, 2.0, False)
    assert make_strategy("power_ar").worst_case(100).tokens > make_strategy(
        "sample").worst_case(100).tokens
