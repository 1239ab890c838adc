"""What every engine promises, checked on each engine available here (see conftest.py).

All engines serve the bundled SmolLM2-135M-Instruct, so the same prompt must give
log-probabilities that agree across engines too.
"""

from __future__ import annotations

import pytest

from ponder.types import GenerateRequest, SamplingParams, ScoreRequest

pytestmark = pytest.mark.slow

PROMPT = [{"role": "user", "content": "What is 12 + 35? Answer with a number."}]
OTHER = [{"role": "user", "content": "Name a colour."}]
FINISH_REASONS = {"eos", "stop", "length", "stopped"}


def one(engine, prompt=PROMPT, **params):
    return engine.generate([GenerateRequest(prompt=prompt, params=SamplingParams(**params))])[0]


def test_n_completions_with_consistent_shapes_and_usage(any_engine):
    gen = one(any_engine, n=3, temperature=1.0, max_tokens=12, seed=7)
    assert len(gen.completions) == 3
    assert gen.prompt_token_ids
    for c in gen.completions:
        assert 1 <= len(c.token_ids) <= 12
        assert len(c.logprobs) == len(c.sampling_logprobs) == len(c.token_ids)
        assert all(lp <= 1e-6 for lp in c.logprobs)
        assert c.finish_reason in FINISH_REASONS
        assert c.usage.generated_tokens == len(c.token_ids)
        assert c.text == any_engine.detokenize(c.token_ids) or c.finish_reason == "stop"
    assert gen.usage.generated_tokens == sum(len(c.token_ids) for c in gen.completions)
    assert gen.usage.prompt_tokens == len(gen.prompt_token_ids)
    assert gen.usage.forward_tokens >= gen.usage.generated_tokens


def test_length_finish_stops_at_max_tokens(any_engine):
    gen = one(any_engine, temperature=1.0, max_tokens=5, seed=1, ignore_eos=True)
    (c,) = gen.completions
    assert len(c.token_ids) == 5 and c.finish_reason == "length"


def test_batch_keeps_request_order(any_engine):
    alone = [one(any_engine, p, temperature=0.0, max_tokens=8).completions[0].token_ids
             for p in (PROMPT, OTHER)]
    batch = any_engine.generate([GenerateRequest(prompt=p, params=SamplingParams(
        temperature=0.0, max_tokens=8)) for p in (PROMPT, OTHER)])
    assert [g.completions[0].token_ids for g in batch] == alone


def test_same_seed_same_samples_different_seed_differs(any_engine):
    a = one(any_engine, n=4, temperature=1.0, max_tokens=16, seed=123)
    b = one(any_engine, n=4, temperature=1.0, max_tokens=16, seed=123)
    c = one(any_engine, n=4, temperature=1.0, max_tokens=16, seed=456)
    ids = lambda g: [x.token_ids for x in g.completions]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    assert len(set(ids(a))) > 1, "n samples at T=1 should not all be the same"


def test_greedy_is_deterministic_and_a_point_mass(any_engine):
    a = one(any_engine, temperature=0.0, max_tokens=10).completions[0]
    b = one(any_engine, temperature=0.0, max_tokens=10).completions[0]
    assert a.token_ids == b.token_ids
    assert all(abs(q) < 1e-6 for q in a.sampling_logprobs)


def test_stop_string_cuts_the_text(any_engine):
    full = one(any_engine, temperature=0.0, max_tokens=24, ignore_eos=True).completions[0]
    assert len(full.text) > 6
    stop = full.text[4:6]
    cut = one(any_engine, temperature=0.0, max_tokens=24, stop=[stop]).completions[0]
    assert cut.finish_reason == "stop"
    assert stop not in cut.text
    assert full.text.startswith(cut.text) and len(cut.text) == full.text.index(stop)


def test_generation_logprobs_agree_with_score(any_engine):
    c = one(any_engine, temperature=1.0, max_tokens=16, seed=3).completions[0]
    (scored,) = any_engine.score([ScoreRequest(prompt=PROMPT, continuation=list(c.token_ids))])
    assert scored.token_ids == c.token_ids
    assert max(abs(a - b) for a, b in zip(scored.logprobs, c.logprobs, strict=True)) < 0.05
    assert scored.usage.forward_tokens >= len(c.token_ids)


def test_sampling_logprobs_are_the_tempered_distribution(any_engine):
    params = SamplingParams(temperature=0.5, max_tokens=12, seed=5)
    if not any_engine.capabilities.sampling_logprobs:  # e.g. a server that reports only log p
        with pytest.raises(ValueError, match="sampling_logprobs"):
            any_engine.score([ScoreRequest(PROMPT, " 47", params=params)])
        return
    c = any_engine.generate([GenerateRequest(prompt=PROMPT, params=params)])[0].completions[0]
    (scored,) = any_engine.score([ScoreRequest(PROMPT, list(c.token_ids), params=params)])
    assert scored.sampling_logprobs is not None
    assert max(abs(a - b) for a, b in zip(scored.sampling_logprobs, c.sampling_logprobs,
                                          strict=True)) < 0.05
    # At T=0.5 a sampled token is likelier under q than under p, summed over the sequence.
    assert sum(c.sampling_logprobs) >= sum(c.logprobs)


# Engines that compute in the GGUF's quantized arithmetic rather than on the dequantized
# weights: llama.cpp multiplies 8-bit activations by the 4-bit weights, and was measured
# 0.21 nats off transformers' fp32 on one token of the continuation below (0.19 through
# llama-cpp-python's own Llama.eval; summed over its 19 tokens, +0.03), so 0.05 cannot hold.
QUANTIZED_TOLERANCE = {"llamacpp": 0.3}


def test_scores_agree_with_the_native_engine(any_engine, _engine_stack, _started):
    """Same model, same tokens: per-token log-probabilities within 0.05 of transformers'
    (QUANTIZED_TOLERANCE for engines computing in quantized arithmetic)."""
    from conftest import start_engine

    if "hf" not in _started or isinstance(_started["hf"], pytest.skip.Exception):
        _started["hf"] = start_engine("hf", _engine_stack)
    request = ScoreRequest(PROMPT, " 12 + 35 = 47. The answer is 47.")
    try:
        (ours,) = any_engine.score([request])
    except ValueError as exc:
        # A server that takes only text re-tokenizes prompt + continuation as one string,
        # and here merges "\n" + " " at the boundary: it cannot score these very tokens.
        if "tokenized the text differently" not in str(exc):
            raise
        pytest.skip(str(exc))
    (native,) = _started["hf"].score([request])
    assert ours.token_ids == native.token_ids
    tolerance = QUANTIZED_TOLERANCE.get(any_engine.name, 0.05)
    assert max(abs(a - b) for a, b in zip(ours.logprobs, native.logprobs, strict=True)) < tolerance


def test_tokenize_detokenize_round_trip(any_engine):
    text = "The answer is 47."
    assert any_engine.detokenize(any_engine.tokenize(text)) == text


def test_continuing_from_a_state_matches_one_long_generation(any_engine):
    if not any_engine.capabilities.states:
        pytest.skip(f"{any_engine.name} does not continue from states")
    whole = one(any_engine, temperature=0.0, max_tokens=10, ignore_eos=True).completions[0]
    head = any_engine.generate([GenerateRequest(prompt=PROMPT, keep_state=True, params=(
        SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)))])[0].completions[0]
    tail = any_engine.generate([GenerateRequest(state=head.state, params=SamplingParams(
        temperature=0.0, max_tokens=6, ignore_eos=True))])[0].completions[0]
    assert head.token_ids + tail.token_ids == whole.token_ids


def test_follow_ups_run_the_same_chains_as_lockstep_rounds(any_engine):
    """Chains of continuations (as power sampling runs them): on an engine with follow-ups
    each chain's next request joins the running loop; the lockstep fallback runs them round
    by round. Same requests and seeds, so the same tokens, chain by chain."""
    from types import SimpleNamespace

    from ponder.engines.base import Capabilities, generate_chained

    if not any_engine.capabilities.follow_ups:
        pytest.skip(f"{any_engine.name} has no follow-ups")

    def chains(engine):
        where = {}  # request index -> (chain, link)

        def follow_up(index, gen):
            chain, link = where[index]
            if link == 2:
                return []
            where[len(where)] = (chain, link + 1)
            return [GenerateRequest(state=gen.completions[0].state, keep_state=True,
                                    params=SamplingParams(temperature=1.0, max_tokens=3 + chain,
                                                          seed=10 * chain + link + 1,
                                                          ignore_eos=True))]

        starts = [GenerateRequest(prompt=p, keep_state=True, params=SamplingParams(
            temperature=1.0, max_tokens=2 + 3 * chain, seed=10 * chain, ignore_eos=True))
            for chain, p in enumerate((PROMPT, OTHER, PROMPT))]
        where.update({i: (i, 0) for i in range(len(starts))})
        out = generate_chained(engine, starts, follow_up)
        return {where[i]: g.completions[0].token_ids for i, g in enumerate(out)}

    lockstep = SimpleNamespace(capabilities=Capabilities(follow_ups=False),
                               generate=lambda requests: any_engine.generate(requests))
    joined = chains(any_engine)
    assert len(joined) == 9
    assert joined == chains(lockstep)


def test_top_logprobs_when_supported(any_engine):
    if not any_engine.capabilities.top_logprobs:
        pytest.skip(f"{any_engine.name} does not return top log-probabilities")
    c = one(any_engine, temperature=1.0, max_tokens=6, seed=2, logprobs=3).completions[0]
    assert c.top_logprobs is not None and len(c.top_logprobs) == len(c.token_ids)
    for step, lp in zip(c.top_logprobs, c.logprobs, strict=True):
        assert 1 <= len(step) <= 3
        assert max(step.values()) >= lp - 0.05


def test_early_stop_is_honoured_or_rejected(any_engine):
    request = GenerateRequest(prompt=PROMPT, params=SamplingParams(
        temperature=0.0, max_tokens=12, ignore_eos=True),
        should_stop=lambda _i, step: step.generated >= 3)
    if not any_engine.capabilities.early_stop:
        with pytest.raises(ValueError, match="early_stop|should_stop"):
            any_engine.generate([request])
        return
    (c,) = any_engine.generate([request])[0].completions
    assert len(c.token_ids) == 3 and c.finish_reason == "stopped"


def test_strategies_run_or_fail_clearly(any_engine):
    from ponder.strategies.registry import make_strategy
    from ponder.tasks.datasets import load_task

    problems = load_task("arith:1", limit=2)
    sc = make_strategy("self_consistency", n=3, temperature=0.7, max_tokens=48, seed=0)
    results = sc.run(problems, any_engine, None)
    assert len(results) == 2 and all(r.usage.generated_tokens > 0 for r in results)
    power = make_strategy("power", max_tokens=16, block_size=8, mcmc_steps=1, seed=0)
    if any_engine.capabilities.missing("states", "logprobs", "sampling_logprobs"):
        with pytest.raises(ValueError, match="capabilit"):
            power.run(problems[:1], any_engine, None)
    else:
        (result,) = power.run(problems[:1], any_engine, None)
        assert result.usage.forward_tokens > 0
