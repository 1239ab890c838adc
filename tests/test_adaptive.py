"""Adaptive compute on the bundled model: DeepConf online/offline, adaptive self-consistency
and thinking budgets. Every check recomputes what it asserts from the engine's raw output."""

import copy

import numpy as np
import pytest

from ponder.engines.hf import HFEngine
from ponder.engines.table import TableEngine
from ponder.strategies.adaptive_sc import AdaptiveSelfConsistency
from ponder.strategies.confidence import group_confidences, token_confidences
from ponder.strategies.deepconf import DeepConfOffline, DeepConfOnline
from ponder.strategies.thinking_budget import ThinkingBudget, _ids
from ponder.strategies.voting import majority
from ponder.tasks.datasets import Problem, load_task
from ponder.types import SamplingParams

WINDOW = 8


class Recorder:
    """The engine, with every generate() call's requests and generations kept."""

    def __init__(self, engine):
        self.engine, self.name, self.capabilities = engine, engine.name, engine.capabilities
        self.calls = []

    def generate(self, requests, on_token=None):
        gens = self.engine.generate(requests, on_token)
        self.calls.append((list(requests), gens))
        return gens

    def tokenize(self, prompt):
        return self.engine.tokenize(prompt)

    def detokenize(self, ids):
        return self.engine.detokenize(ids)


@pytest.fixture(scope="module")
def problems():
    return load_task("arith:1", limit=3, shuffle_seed=2)


def lowest_group(completion):
    return min(group_confidences(token_confidences(completion.top_logprobs), WINDOW))


@pytest.fixture(scope="module")
def online_run(engine, problems):
    recorder = Recorder(engine)
    strategy = DeepConfOnline(SamplingParams(n=6, temperature=0.8, max_tokens=40, seed=0),
                              warmup=3, keep_percent=10, round_size=3, window=WINDOW)
    return strategy, recorder, strategy.run(problems, recorder)


def test_deepconf_threshold_is_the_percentile_of_warmup_confidences(online_run):
    _, recorder, results = online_run
    [(_, prefill), (warm_requests, warm)] = recorder.calls[:2]
    assert all(r.params.max_tokens == 1 for r, _ in zip(*recorder.calls[0], strict=True))
    assert all(r.should_stop is None and r.params.n == 3 for r in warm_requests)
    for r, gen in zip(results, warm, strict=True):
        scores = [lowest_group(c) for c in gen.completions]
        # keep_percent 10 (DeepConf-low): the threshold is the 90th percentile.
        assert r.trace["threshold"] == float(np.percentile(scores, 90))
        assert r.trace["warmup_scores"] == scores


def raw_completions(recorder):
    """Per problem, its completions in the order the strategy made them: the warm-up, then
    each round (a problem's requests all continue from the same prompt state)."""
    warm_requests, warm = recorder.calls[1]
    order = {id(r.state): i for i, r in enumerate(warm_requests)}
    out = [list(g.completions) for g in warm]
    for requests, gens in recorder.calls[2:]:
        for request, gen in zip(requests, gens, strict=True):
            assert request.should_stop is not None
            out[order[id(request.state)]] += gen.completions
    return out


def test_deepconf_stops_exactly_when_the_window_falls_below_the_threshold(online_run):
    _, recorder, results = online_run
    stopped = 0
    for r, comps in zip(results, raw_completions(recorder), strict=True):
        threshold = r.trace["threshold"]
        assert [c.text for c in comps] == [c.text for c in r.candidates]
        stops = iter(r.trace["stops"])
        for cand, comp in zip(r.candidates[3:], comps[3:], strict=True):
            groups = group_confidences(token_confidences(comp.top_logprobs), WINDOW)
            if comp.finish_reason == "stopped":
                stopped += 1
                assert len(comp.token_ids) >= WINDOW and groups[-1] < threshold
                assert all(g >= threshold for g in groups[:-1])  # it stopped at the first dip
                stop = next(stops)
                assert stop["group_confidence"] == groups[-1]
                assert stop["tokens"] == len(comp.token_ids)
                assert not cand.meta["voted"]
            else:
                # The hook is not consulted on the EOS token itself, so leave it out.
                body = comp.top_logprobs[:-1] if comp.finish_reason == "eos" else comp.top_logprobs
                confs = token_confidences(body)
                if len(confs) >= WINDOW:
                    assert min(group_confidences(confs, WINDOW)) >= threshold
        assert next(stops, None) is None
        assert r.trace["samples_used"] == len(r.candidates) <= 6
        assert r.trace["samples_used"] + r.trace["samples_saved"] == 6
        assert r.trace["tokens"] == r.usage.generated_tokens
        # The one-token prompt prefill, then every trace's tokens, stopped ones included.
        assert r.usage.generated_tokens == 1 + sum(c.tokens for c in r.candidates)
    assert stopped > 0, "no trace was stopped: the test would not test stopping"


def test_deepconf_votes_only_complete_confident_traces(online_run):
    _, _, results = online_run
    for r in results:
        voters = [c for c in r.candidates if c.meta["voted"]]
        assert all(c.meta["finish_reason"] != "stopped" for c in voters)
        assert all(c.score >= r.trace["threshold"] for c in voters)
        if voters:
            assert r.answer == majority([c.answer for c in voters], [c.score for c in voters])


def test_deepconf_is_reproducible_and_independent_of_batching(engine, problems, online_run):
    strategy, _, results = online_run
    [alone] = strategy.run([problems[1]], engine)
    assert [c.text for c in alone.candidates] == [c.text for c in results[1].candidates]
    # Batch neighbours change the float rounding of the logits a little, not the samples.
    assert alone.trace["threshold"] == pytest.approx(results[1].trace["threshold"], rel=1e-5)


def test_deepconf_offline_keeps_the_top_percent_and_votes_by_confidence(engine, problems):
    recorder = Recorder(engine)
    strategy = DeepConfOffline(SamplingParams(n=4, temperature=0.8, max_tokens=32, seed=1),
                               keep_percent=50, window=WINDOW)
    results = strategy.run(problems[:2], recorder)
    [(_, gens)] = recorder.calls
    for r, gen in zip(results, gens, strict=True):
        scores = [lowest_group(c) for c in gen.completions]
        cut = np.percentile(scores, 50)
        kept = [i for i, s in enumerate(scores) if s >= cut]
        assert r.trace["kept"] == kept and len(kept) >= 2
        voted = [c for c in r.candidates if c.meta["voted"]]
        assert r.answer == majority([c.answer for c in voted], [c.score for c in voted])
        assert r.trace["samples_saved"] == 0


def test_unsupported_engines_get_a_clear_error():
    table = TableEngine()
    problem = [Problem("p", "What is 1 + 1?", "2")]
    with pytest.raises(ValueError, match=r"deepconf_online needs engine capabilities "
                                         r"\['top_logprobs', 'early_stop'\].*'table'"):
        DeepConfOnline().run(problem, table, render=lambda p: [0, 1])
    with pytest.raises(ValueError, match=r"deepconf needs .*top_logprobs"):
        DeepConfOffline().run(problem, table, render=lambda p: [0, 1])


# ---- adaptive self-consistency -------------------------------------------------------------


def test_adaptive_sc_never_exceeds_n(engine, problems):
    strategy = AdaptiveSelfConsistency(SamplingParams(n=5, temperature=1.0, max_tokens=24,
                                                      seed=4), round_size=2, min_rounds=1)
    for r in strategy.run(problems[:2], engine):
        used = r.trace["samples_used"]
        assert used == len(r.candidates) <= 5 and used + r.trace["samples_saved"] == 5
        assert len(r.trace["posterior_per_round"]) == r.trace["rounds"] == -(-used // 2)
        # Stopped early only on a decided vote; otherwise it ran to N.
        assert used == 5 or r.trace["posterior_per_round"][-1] >= 0.95
        assert r.answer == majority([c.answer for c in r.candidates])
        assert r.usage.generated_tokens == 1 + sum(c.tokens for c in r.candidates)


@pytest.mark.parametrize("min_rounds", [2, 3])
def test_adaptive_sc_stops_after_the_minimum_rounds_when_all_agree(engine, problems,
                                                                    min_rounds):
    # Greedy: every sample is the same, so every round agrees. Unanimous k votes give
    # P(leader) = 1 - 2^-(k+1): 0.875 after 2, 0.969 after 4, so the posterior decides
    # first at 4 samples; min_rounds decides after that.
    strategy = AdaptiveSelfConsistency(SamplingParams(n=8, temperature=0.0, max_tokens=20),
                                       round_size=2, min_rounds=min_rounds)
    for r in strategy.run(problems[:2], engine):
        assert r.candidates[0].answer is not None
        assert len({c.text for c in r.candidates}) == 1
        assert r.trace["rounds"] == min_rounds and r.trace["samples_used"] == 2 * min_rounds
        assert r.trace["samples_saved"] == 8 - 2 * min_rounds
        assert r.trace["posterior_per_round"][0] < 0.95 <= r.trace["posterior_per_round"][-1]


# ---- thinking budgets ------------------------------------------------------------------------

THINK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


@pytest.fixture(scope="module")
def thinker(engine):
    """The bundled model behind a chat template whose generation prompt opens <think>."""
    tokenizer = copy.deepcopy(engine.tokenizer)
    tokenizer.chat_template = THINK_TEMPLATE
    return HFEngine.from_model(engine.model, tokenizer, name="smollm2-think")


def test_budget_forcing_caps_thinking_and_answers_after_the_close(thinker, problems):
    strategy = ThinkingBudget(SamplingParams(n=2, temperature=0.8, max_tokens=16, seed=0),
                              budget=20)
    prompt = thinker.tokenize([{"role": "user", "content": "Hi"}])
    assert thinker.detokenize(prompt).endswith("assistant\n<think>\n")
    thoughts = strategy.think(problems[:2], thinker)
    assert len(thoughts) == 4
    for t in thoughts:
        assert len(t.thinking) <= 20
        after = t.token_ids[len(t.thinking):]
        closing = after[: len(after) - len(t.answer.token_ids)]
        assert "</think>" in thinker.detokenize(closing)
        assert "</think>" not in thinker.detokenize(t.thinking)
        assert t.token_ids[: len(t.thinking)] == tuple(t.thinking)
        if t.forced:  # cut at the cap (or the model ended): the forced close follows
            assert list(closing) == _ids(thinker, "\n</think>\n\n")
        assert 1 <= len(t.answer.token_ids) <= 16
    results = strategy.run(problems[:2], thinker)
    for r in results:
        assert all(n <= 20 for n in r.trace["thinking_tokens"])
        assert r.trace["tokens"] == r.usage.generated_tokens
        assert all("</think>" in c.text for c in r.candidates)


def test_wait_replaces_an_early_close_and_stays_within_the_budget(thinker, problems):
    # The bundled model never writes </think> by itself, so let "." close the thinking: it
    # writes one early, which exercises s1's "Wait" path.
    strategy = ThinkingBudget(SamplingParams(n=2, temperature=0.8, max_tokens=8, seed=0),
                              budget=30, wait_rounds=2, close=".", forced_close=".\n\n")
    thoughts = strategy.think(problems[:2], thinker)
    wait = _ids(thinker, strategy.wait)
    assert any(t.waits > 0 for t in thoughts)
    for t in thoughts:
        assert len(t.thinking) <= 30 and t.waits <= 2
        assert "." not in thinker.detokenize(t.thinking)  # every close was replaced or cut
        windows = [tuple(t.thinking[i:i + len(wait)]) for i in range(len(t.thinking))]
        assert windows.count(tuple(wait)) >= t.waits
