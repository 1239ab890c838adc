"""Long prompts on the native engine: fed in chunks between decode steps, so requests that
come while one is fed still get their tokens; the result is the one-prefill result within
fp32 rounding; a request abandoned meanwhile is fed no further."""

from __future__ import annotations

import pytest

from ponder.engines import hf
from ponder.types import GenerateRequest, SamplingParams

pytestmark = pytest.mark.slow

GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)


@pytest.fixture
def small_chunks(monkeypatch):
    """Prompts over 64 tokens are long, fed 32 at a time: the bundled model's test prompts
    then need a few chunks, and the test stays fast."""
    monkeypatch.setattr(hf, "LONG_PROMPT", 64)
    monkeypatch.setattr(hf, "PREFILL_CHUNK", 32)


def long_prompt(engine) -> list[int]:
    ids = engine.tokenize("Count the words in this text, then say the number. " + "one two " * 90)
    assert len(ids) > 150
    return ids


def test_a_chunked_prompt_gives_what_one_prefill_gives(engine, small_chunks, monkeypatch):
    ids = long_prompt(engine)
    sampled = SamplingParams(n=2, max_tokens=6, temperature=0.8, seed=3, ignore_eos=True)
    chunked = engine.generate([GenerateRequest(ids, GREEDY), GenerateRequest(ids, sampled)])
    monkeypatch.setattr(hf, "LONG_PROMPT", 10**9)
    whole = engine.generate([GenerateRequest(ids, GREEDY), GenerateRequest(ids, sampled)])
    for a, b in zip(chunked, whole, strict=True):
        assert a.usage.prompt_tokens == b.usage.prompt_tokens == len(ids)
        assert a.usage.forward_tokens == b.usage.forward_tokens
        for x, y in zip(a.completions, b.completions, strict=True):
            assert x.token_ids == y.token_ids
            assert x.sum_logprob == pytest.approx(y.sum_logprob, abs=1e-3)


def test_a_request_arriving_while_a_long_prompt_is_fed_is_answered_first(engine, small_chunks):
    """The long request comes first; a short one admitted on the loop's second turn decodes
    between the long one's chunks and is done before the long one's first token."""
    events = []
    calls = {"admit": 0}
    short = GenerateRequest(engine.tokenize("Hi"), GREEDY)

    def admit():
        calls["admit"] += 1
        return [short] if calls["admit"] == 2 else []

    def on_token(request, _sample, _token, _delta):
        events.append(("token", request))

    def follow_up(request, _generation):
        events.append(("done", request))
        return []

    long_gen, short_gen = engine.generate([GenerateRequest(long_prompt(engine), GREEDY)],
                                          on_token, follow_up=follow_up, admit=admit)
    assert len(short_gen.completions[0].token_ids) == 6
    assert events.index(("done", 1)) < events.index(("token", 0))
    assert long_gen.usage.prompt_tokens == len(long_prompt(engine))


def test_an_abandoned_long_prompt_is_fed_no_further(engine, small_chunks):
    ids = long_prompt(engine)
    asked = {"n": 0}

    def abandoned() -> bool:  # the client leaves after the first two chunks
        asked["n"] += 1
        return asked["n"] > 2

    [gen] = engine.generate([GenerateRequest(ids, GREEDY, abandoned=abandoned)])
    fed = 2 * hf.PREFILL_CHUNK + 1  # two chunks, then one token to end it on
    assert gen.usage.prompt_tokens == fed < len(ids)
    assert len(gen.completions[0].token_ids) == 1
