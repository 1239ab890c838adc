"""Power sampling: exact checks on an enumerable toy model, then the bundled model.

The toy model has 2 words + EOS and sequences of at most 5 tokens (63 possible
continuations), with a fixed random next-token table that depends on the whole prefix.
"""

import collections
import math

import pytest

from ponder.engines.table import (
    TableEngine,
    exact_power_distribution,
    exact_temperature_distribution,
    total_variation,
)
from ponder.strategies.power import PowerSampling, run_chains
from ponder.strategies.registry import make_strategy
from ponder.strategies.smc import SMCPower, run_smc
from ponder.tasks.datasets import Problem
from ponder.types import GenerateRequest, SamplingParams

ALPHA, LENGTH, PROMPT = 4.0, 5, [0]


@pytest.fixture(scope="module")
def toy():
    return TableEngine(vocab_size=3, seed=0)


@pytest.fixture(scope="module")
def target(toy):
    return exact_power_distribution(toy, PROMPT, LENGTH, ALPHA)


def histogram(sequences):
    counts = collections.Counter(sequences)
    return {k: v / len(sequences) for k, v in counts.items()}


def test_toy_model_is_a_proper_distribution(toy, target):
    base = exact_temperature_distribution(toy, PROMPT, LENGTH, 1.0)
    assert len(base) == 63
    assert sum(base.values()) == pytest.approx(1.0)
    assert sum(target.values()) == pytest.approx(1.0)


def test_metropolis_hastings_samples_the_power_distribution(toy, target):
    chains = 3000
    config = PowerSampling(alpha=ALPHA, max_tokens=LENGTH, block_size=LENGTH, mcmc_steps=20)
    final = run_chains(toy, [PROMPT] * chains, config, list(range(chains)))
    samples = [c.state.token_ids[len(PROMPT):] for c in final]
    assert total_variation(histogram(samples), target) < 0.05
    # Token-level low temperature is a different distribution, and it shows.
    low = exact_temperature_distribution(toy, PROMPT, LENGTH, 1 / ALPHA)
    assert total_variation(low, target) > 0.2
    [gen] = toy.generate([GenerateRequest(PROMPT, SamplingParams(
        n=chains, temperature=1 / ALPHA, max_tokens=LENGTH, seed=1))])
    low_samples = [c.token_ids for c in gen.completions]
    assert total_variation(histogram(low_samples), target) > 0.15


def test_block_wise_chains_keep_the_target(toy, target):
    """Blocks of 2 tokens: extension, EOS inside early blocks, growing horizons."""
    chains = 3000
    config = PowerSampling(alpha=ALPHA, max_tokens=LENGTH, block_size=2, mcmc_steps=12)
    final = run_chains(toy, [PROMPT] * chains, config, list(range(chains)))
    samples = [c.state.token_ids[len(PROMPT):] for c in final]
    assert total_variation(histogram(samples), target) < 0.05
    # Chains that never end take all three blocks; ended ones stop after a round at T_max.
    assert all(1 <= len(c.acceptance) <= 3 and c.done for c in final)
    assert any(len(c.acceptance) < 3 for c in final) and any(len(c.acceptance) == 3 for c in final)
    assert all(c.horizon == LENGTH for c in final)


def test_chain_bookkeeping_matches_a_rescore(toy):
    config = PowerSampling(alpha=ALPHA, max_tokens=LENGTH, block_size=2, mcmc_steps=5)
    for chain in run_chains(toy, [PROMPT] * 20, config, list(range(20))):
        generated = chain.state.token_ids[len(PROMPT):]
        assert len(chain.logp) == len(chain.logq) == len(generated)
        assert sum(chain.logp) == pytest.approx(toy.sequence_logprob(PROMPT, generated))
        assert sum(chain.logq) == pytest.approx(toy.sequence_logprob(PROMPT, generated, 1 / ALPHA))
        assert chain.ended == (generated[-1] == toy.eos_id)
        assert sum(h["accepted"] for h in chain.history) == round(sum(
            a * 5 for a in chain.acceptance))


@pytest.mark.parametrize("anneal, block", [(False, 1), (True, 2)])
def test_smc_weighted_particles_estimate_the_power_distribution(toy, target, anneal, block):
    config = SMCPower(alpha=ALPHA, max_tokens=LENGTH, particles=4000, block_size=block,
                      anneal=anneal)
    [swarm] = run_smc(toy, [PROMPT], config, [0])
    estimate = collections.defaultdict(float)
    for particle, weight in zip(swarm.particles, swarm.normalized_weights(), strict=True):
        estimate[particle.state.token_ids[len(PROMPT):]] += weight
    assert total_variation(estimate, target) < 0.05
    assert sum(swarm.normalized_weights()) == pytest.approx(1.0)


def test_power_usage_counts_every_token_and_reports_cost_ratios(toy):
    config = PowerSampling(alpha=ALPHA, max_tokens=LENGTH, block_size=2, mcmc_steps=3, seed=0)
    problem = Problem("toy", "toy", "")
    [r] = config.run([problem], toy, render=lambda p: PROMPT)
    chain = r.trace["chains"][0]
    proposed = sum(h["proposed_tokens"] for h in chain)
    assert r.usage.generated_tokens >= proposed  # proposals plus the block extensions
    assert r.trace["cost_ratio_vs_one_sample"] == pytest.approx(
        r.usage.generated_tokens / r.candidates[0].tokens)
    assert r.trace["claimed_cost_ratio"] == pytest.approx(3 * LENGTH / (4 * 2))


# ---- on the bundled model --------------------------------------------------------------

QUESTIONS = ["What is 7 + 5?", "Name the largest planet.", "What is 9 minus 4?"]


def test_power_samples_are_likelier_than_low_temperature_than_plain(engine):
    problems = [Problem(f"q{i}", q, "") for i, q in enumerate(QUESTIONS)]
    tokens = 48

    def mean_loglik(results):
        values = [c.meta["mean_logprob"] for r in results for c in r.candidates]
        return sum(values) / len(values)

    plain = make_strategy("sample", n=1, temperature=1.0, max_tokens=tokens, seed=0)
    low = make_strategy("low_temp", alpha=4.0, max_tokens=tokens, seed=0)
    power = make_strategy("power", alpha=4.0, max_tokens=tokens, block_size=16,
                          mcmc_steps=4, n=2, seed=0)
    # Several plain and low-temperature samples per question, to compare means fairly.
    plain_results = [r for s in range(4) for r in make_strategy(
        "sample", temperature=1.0, max_tokens=tokens, seed=s).run(problems, engine)]
    low_results = [r for s in range(4) for r in make_strategy(
        "low_temp", alpha=4.0, max_tokens=tokens, seed=s).run(problems, engine)]
    power_results = power.run(problems, engine)
    assert plain and low  # the factory calls above are the ones under test
    t1, lt, pw = mean_loglik(plain_results), mean_loglik(low_results), mean_loglik(power_results)
    assert pw > lt > t1, (pw, lt, t1)
    for r in power_results:
        assert all(0.0 <= a <= 1.0 for chain in r.trace["acceptance_per_block"] for a in chain)
        assert 1 <= len(r.trace["acceptance_per_block"][0]) <= math.ceil(tokens / 16)
        assert r.usage.generated_tokens > sum(c.tokens for c in r.candidates)
        # Figure 4's confidence: mean negative entropy of the chosen sequence's steps.
        assert all(c.meta["confidence"] <= 0 for c in r.candidates)


def test_power_chains_step_independently_with_the_same_result(engine):
    """Follow-ups let each chain step as soon as its proposal is back, and speculate on
    rejection in the tail; the chains (and so the answers) are exactly those of lockstep
    rounds, and the token counts differ by exactly the speculative tokens reported wasted."""
    from dataclasses import replace

    class Rounds:
        name, capabilities = "rounds", replace(engine.capabilities, follow_ups=False)

        def generate(self, requests):
            return engine.generate(requests)

        def detokenize(self, token_ids):
            return engine.detokenize(token_ids)

    problems = [Problem(f"q{i}", q, "") for i, q in enumerate(QUESTIONS)]
    power = make_strategy("power", alpha=4.0, max_tokens=24, block_size=8, mcmc_steps=2, seed=3)
    joined, rounds = power.run(problems, engine), power.run(problems, Rounds())
    def moves(result):  # log ratios agree to float noise: batch neighbours differ
        return [[(h["block"], h["m"], h["proposed_tokens"], h["accepted"]) for h in chain]
                for chain in result.trace["chains"]]

    for a, b in zip(joined, rounds, strict=True):
        assert moves(a) == moves(b)
        ratios = [h["log_ratio"] for chain in a.trace["chains"] for h in chain]
        assert ratios == pytest.approx([h["log_ratio"] for chain in b.trace["chains"]
                                        for h in chain], abs=1e-2)
        assert a.candidates[0].text == b.candidates[0].text
        # Speculative steps that turned stale cost tokens, counted in usage and reported.
        wasted = a.trace["speculative_tokens_wasted"]
        assert a.usage.generated_tokens == b.usage.generated_tokens + wasted
        assert b.trace["speculative_tokens_wasted"] == 0
    assert sum(r.trace["speculative_tokens_wasted"] for r in joined) > 0  # it did speculate
