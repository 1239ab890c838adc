"""Self-certainty (Kang et al., 2025) and tail confidence: the formula, what the engines
return in their sampling and scoring passes, the scorer and the selection strategy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ponder.engines.table import TableEngine
from ponder.sampling import self_certainty
from ponder.scorers.base import ScoreItem
from ponder.scorers.registry import make_scorer
from ponder.scorers.self_certainty import (
    SelfCertaintyScorer,
    mean_certainty,
    self_certainty_of,
    token_self_certainties,
    topk_self_certainty,
)
from ponder.strategies.confidence import token_confidences, trace_score
from ponder.strategies.registry import make_strategy
from ponder.strategies.self_certainty import SelfCertainty, borda_weights
from ponder.types import (
    Completion,
    GenerateRequest,
    Problem,
    SamplingParams,
    ScoreRequest,
    SequenceState,
    Usage,
)


def test_self_certainty_equals_its_formula_on_a_known_distribution():
    p = [0.5, 0.25, 0.125, 0.125]
    expected = -math.log(4) - sum(math.log(x) for x in p) / 4  # KL(U || p)
    kl = sum(0.25 * math.log(0.25 / x) for x in p)
    assert expected == pytest.approx(kl)
    assert self_certainty_of([math.log(x) for x in p]) == pytest.approx(expected, abs=1e-12)
    rows = torch.log(torch.tensor([p, [0.25] * 4], dtype=torch.float64))
    assert self_certainty(rows).tolist() == pytest.approx([expected, 0.0], abs=1e-12)
    # Peakier is more certain; a masked token (log p = -inf) stays finite.
    assert self_certainty_of([math.log(0.97), math.log(0.01), math.log(0.01),
                              math.log(0.01)]) > expected
    assert math.isfinite(self_certainty_of([0.0, -math.inf]))


def test_the_top_k_approximation_is_exact_when_the_rest_is_flat():
    p = [0.5, 0.3] + [0.05] * 4  # the 4 tokens outside the top 2 share 0.2 evenly
    exact = self_certainty_of([math.log(x) for x in p])
    top = {0: math.log(0.5), 1: math.log(0.3)}
    assert topk_self_certainty(top, vocab_size=6) == pytest.approx(exact, abs=1e-12)
    # Without a vocabulary size: the large-vocabulary limit, -log(remaining mass).
    assert topk_self_certainty(top) == pytest.approx(-math.log(0.2))
    completion = Completion("x", (0, 1), (-0.7, -1.2), (0.0, 0.0), "eos", Usage(),
                            SequenceState((0, 1)), top_logprobs=(top, top))
    assert token_self_certainties(completion, 6) == pytest.approx([exact, exact])
    bare = Completion("x", (0,), (-0.7,), (0.0,), "eos", Usage(), SequenceState((0,)))
    assert token_self_certainties(bare) is None
    with pytest.raises(ValueError, match="top-k"):
        SelfCertaintyScorer().rate([bare])


def test_the_table_engine_reports_it_for_sampled_and_scored_tokens():
    engine = TableEngine(vocab_size=5, seed=3)
    prompt = [0, 1]
    gen = engine.generate([GenerateRequest(prompt, SamplingParams(n=3, max_tokens=6, seed=1))])
    for c in gen[0].completions:
        expected = [self_certainty_of(engine.logprobs(prompt + list(c.token_ids[:i])).tolist())
                    for i in range(len(c.token_ids))]
        assert c.self_certainties == pytest.approx(expected, abs=1e-12)
        scored = engine.score([ScoreRequest(prompt, list(c.token_ids))])[0]
        assert scored.self_certainties == pytest.approx(expected, abs=1e-12)


def test_the_native_engine_computes_it_in_the_sampling_pass_as_its_scoring_pass_does(engine):
    prompt = "The capital of France is"
    gen = engine.generate([GenerateRequest(prompt, SamplingParams(
        n=2, temperature=0.8, max_tokens=12, seed=4, logprobs=5))])[0]
    for c in gen.completions:
        assert len(c.self_certainties) == len(c.token_ids)
        assert all(v >= 0 for v in c.self_certainties)
        scored = engine.score([ScoreRequest(list(gen.prompt_token_ids), list(c.token_ids))])[0]
        assert scored.self_certainties == pytest.approx(c.self_certainties, rel=1e-3, abs=1e-3)
    # The scorer reads the same values: from the completions for free, or from the text
    # through a scoring pass it counts as scorer tokens.
    scorer = make_scorer("self_certainty", engine)
    free = scorer.rate(gen.completions)
    assert [r.score for r in free] == pytest.approx(
        [float(np.mean(c.self_certainties)) for c in gen.completions])
    assert all(r.usage == Usage() for r in free)
    c = gen.completions[0]
    read = scorer.score([ScoreItem("q", list(gen.prompt_token_ids), c.text),
                         ScoreItem("q", prompt, " ")])
    assert read[1].score == -math.inf
    assert read[0].usage.scorer_tokens > 0 and read[0].usage.forward_tokens == 0
    tail = SelfCertaintyScorer(engine, tail=4).rate([c])[0].score
    assert tail == pytest.approx(mean_certainty(c.self_certainties[-4:]))


def test_best_of_n_picks_the_most_certain_trace_on_the_table_engine():
    engine = TableEngine(vocab_size=4, seed=7, concentration=0.5)
    problems = [Problem("a", "q", "0"), Problem("b", "q", "1")]
    strategy = SelfCertainty(params=SamplingParams(n=6, temperature=1.0, max_tokens=5, seed=2))
    results = strategy.run(problems, engine, render=lambda p: [0, 1],
                           extract=lambda text: text.split()[0] if text.strip() else None)
    for r in results:
        scores = []
        for cand in r.candidates:  # recompute each trace's mean from the table itself
            tokens = [int(t) for t in cand.text.split()]
            tokens += [engine.eos_id] * (cand.tokens - len(tokens))
            scores.append(float(np.mean([
                self_certainty_of(engine.logprobs([0, 1, *tokens[:i]]).tolist())
                for i in range(len(tokens))])))
        assert [c.score for c in r.candidates] == pytest.approx(scores, abs=1e-12)
        assert r.chosen == int(np.argmax(scores)) and r.answer == r.candidates[r.chosen].answer
        assert r.usage.generated_tokens == sum(c.tokens for c in r.candidates)
        assert r.usage.prompt_tokens + r.usage.generated_tokens <= strategy.worst_case(2).tokens
    weighted = SelfCertainty(params=strategy.params, weighted=True, borda_power=1.0)
    r = weighted.run(problems[:1], engine, render=lambda p: [0, 1],
                     extract=lambda text: text.split()[0] if text.strip() else None)[0]
    table = {row["answer"]: row["weight"] for row in r.trace["votes"]}
    weights = borda_weights([c.score for c in r.candidates], 1.0)
    for answer, weight in table.items():
        assert weight == pytest.approx(sum(w for c, w in zip(r.candidates, weights, strict=True)
                                           if c.answer == answer))
    assert r.answer == max(table, key=table.get)


def test_borda_weights_follow_rank():
    assert borda_weights([0.1, 0.9, 0.5], 1.0) == [1.0, 3.0, 2.0]
    assert borda_weights([0.1, 0.9, 0.5], 0.0) == [1.0, 1.0, 1.0]  # plain majority


def test_tail_confidence_and_the_registry_on_the_bundled_model(engine):
    from ponder.tasks.datasets import load_task

    problems = load_task("arith:1", limit=1)
    strategy = make_strategy("self_certainty", n=2, max_tokens=24, seed=0,
                             by="tail_confidence", tail=8)
    r = strategy.run(problems, engine)[0]
    assert len(r.candidates) == 2 and r.trace["by"] == "tail_confidence"
    best = max(range(2), key=lambda i: (r.candidates[i].score, -i))
    assert r.chosen == best
    for c in r.candidates:  # -mean top-5 log-probability: positive, finite
        assert c.meta["tail_confidence"] == c.score and 0 < c.score < 100
    # As the scorer of a strategy that hands it text: one scoring pass, as scorer tokens.
    bon = make_strategy("best_of_n", n=2, max_tokens=16, seed=0)
    r = bon.run(problems, engine, scorer=make_scorer("self-certainty", engine))[0]
    assert all(0 <= c.score < 20 for c in r.candidates) and r.usage.scorer_tokens > 0
    assert r.chosen == max(range(2), key=lambda i: (r.candidates[i].score, -i))
    with pytest.raises(ValueError, match="by="):
        make_strategy("self_certainty", by="entropy")
    assert make_strategy("self_certainty").worst_case(10).tokens == 10 + 8 * 512


def test_tail_confidence_is_deepconf_tail_score():
    steps = [{1: -0.1, 2: -3.0}, {1: -1.0, 2: -1.2}, {1: -0.01, 2: -6.0}]
    completion = Completion("x", (1, 1, 1), (-0.1, -1.0, -0.01), (0.0,) * 3, "eos", Usage(),
                            SequenceState((1, 1, 1)), top_logprobs=tuple(steps))
    by_tail = SelfCertainty(by="tail_confidence", tail=2).measure(completion)
    assert by_tail == pytest.approx(trace_score(token_confidences(steps), "tail", tail=2))
    assert by_tail == pytest.approx(((1.0 + 1.2) / 2 + (0.01 + 6.0) / 2) / 2)
