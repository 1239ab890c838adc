"""Core strategies: vote and tie rules, pooling, accounting, and runs on the real model."""

import pytest

from ponder.scorers.base import Rating, ScoreItem, aggregate
from ponder.scorers.likelihood import HeuristicScorer, LikelihoodScorer
from ponder.strategies.base import problem_seed
from ponder.strategies.best_of_n import vote_weights
from ponder.strategies.registry import make_strategy
from ponder.strategies.voting import majority, tally
from ponder.tasks.datasets import Problem, load_task
from ponder.types import Usage

# ---- voting (pure) -------------------------------------------------------------------


def test_majority_pools_equivalent_answers():
    assert majority(["1/2", "3", "\\frac{1}{2}", "0.5", "3"]) == "1/2"
    [top, second] = tally(["1/2", "3", "\\frac{1}{2}", "0.5", "3"])
    assert (top.votes, second.votes) == (3, 2)


def test_ties_go_to_the_answer_voted_first_and_none_abstains():
    assert majority(["7", "5", "5", "7"]) == "7"
    assert majority(["5", "7", "7", "5"]) == "5"
    assert majority([None, None, "4"]) == "4"
    assert majority([None, None]) is None
    assert majority([]) is None


def test_weighted_vote_sums_weights_per_answer():
    # Two weak votes for 3 lose to one strong vote for 4.
    assert majority(["3", "4", "3"], [0.2, 0.9, 0.3]) == "4"
    assert majority(["3", "4", "3"], [0.5, 0.9, 0.5]) == "3"
    with pytest.raises(ValueError, match="weights"):
        tally(["3"], [1.0, 2.0])


def test_vote_weights_keep_probabilities_and_exponentiate_logprobs():
    assert vote_weights([0.2, 0.9]) == [0.2, 0.9]
    w = vote_weights([-1.0, -3.0, float("-inf")])
    assert w[0] == 1.0 and w[1] == pytest.approx(0.1353, abs=1e-3) and w[2] == 0.0


def test_step_aggregations():
    steps = [0.9, 0.5, 0.8]
    assert aggregate(steps, "min") == 0.5
    assert aggregate(steps, "prod") == pytest.approx(0.36)
    assert aggregate(steps, "last") == 0.8
    assert aggregate(steps, "mean") == pytest.approx(2.2 / 3)
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(steps, "max")


def test_problem_seeds_depend_only_on_seed_and_id():
    assert problem_seed(0, "a") == problem_seed(0, "a")
    assert problem_seed(0, "a") != problem_seed(0, "b") != problem_seed(1, "b")
    assert problem_seed(None, "a") is None


def test_registry_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="unknown strategy 'nope'.*self_consistency"):
        make_strategy("nope")
    with pytest.raises(ValueError, match="does not take \\['iterations'\\]"):
        make_strategy("self-consistency", iterations=3)
    with pytest.raises(ValueError, match="n must be"):
        make_strategy("sc", n=0)
    assert make_strategy("self-consistency", n=3).params.n == 3


def test_heuristic_scorer_prefers_boxed_then_short():
    items = [ScoreItem("q", "q", "The answer is \\boxed{4}."), ScoreItem("q", "q", "4"),
             ScoreItem("q", "q", "\\boxed{4} " + "x" * 1000)]
    scores = [r.score for r in HeuristicScorer().score(items)]
    assert scores[0] > scores[2] > scores[1]


# ---- on the real model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def problems():
    return load_task("arith:1", limit=4, shuffle_seed=1)


def test_self_consistency_votes_over_its_samples_and_counts_usage(engine, problems):
    results = make_strategy("sc", n=4, max_tokens=48, seed=3).run(problems, engine)
    assert [r.problem_id for r in results] == [p.id for p in problems]
    for r in results:
        assert len(r.candidates) == 4
        answers = [c.answer for c in r.candidates]
        assert r.answer == majority(answers)
        assert sum(v["votes"] for v in r.trace["votes"]) == sum(a is not None for a in answers)
        assert r.usage.generated_tokens == sum(c.tokens for c in r.candidates)
        assert r.usage.calls == 1
    # Same seed, same samples: a run is reproducible.
    again = make_strategy("sc", n=4, max_tokens=48, seed=3).run(problems[:2], engine)
    assert [c.text for c in again[1].candidates] == [c.text for c in results[1].candidates]


def test_batched_across_problems_equals_one_problem_at_a_time(engine, problems):
    strategy = make_strategy("sc", n=3, max_tokens=32, seed=0)
    together = strategy.run(problems, engine)
    alone = [strategy.run([p], engine)[0] for p in problems]
    for t, a in zip(together, alone, strict=True):
        assert [c.text for c in t.candidates] == [c.text for c in a.candidates]


def test_best_of_n_picks_the_top_score_and_adds_scorer_tokens(engine, problems):
    scorer = LikelihoodScorer(engine, "mean")
    results = make_strategy("bon", n=3, max_tokens=32, seed=1).run(problems[:2], engine, scorer)
    for r in results:
        scores = [c.score for c in r.candidates]
        assert r.answer == r.candidates[scores.index(max(scores))].answer
        assert r.chosen == scores.index(max(scores))
        # The policy's forward tokens plus the scorer's tokens, counted apart.
        assert r.usage.scorer_tokens > 0
        assert r.usage.generated_tokens == sum(c.tokens for c in r.candidates)
    with pytest.raises(ValueError, match="needs a scorer"):
        make_strategy("bon", n=2).run(problems[:1], engine)


def test_likelihood_scorer_matches_engine_score(engine):
    item = ScoreItem("What is 2 + 2?", [{"role": "user", "content": "What is 2 + 2?"}],
                     "2 + 2 = 4.")
    [rating] = LikelihoodScorer(engine, "sum").score([item])
    from ponder.types import ScoreRequest

    [scored] = engine.score([ScoreRequest(item.prompt, item.response)])
    assert rating.score == pytest.approx(scored.sum_logprob)
    assert rating.usage.scorer_tokens == scored.usage.forward_tokens
    assert rating.usage.forward_tokens == 0


class CountingScorer:
    """A scorer whose scores we control, to test self-refine's keep rule exactly."""

    name = "scripted"

    def __init__(self, values):
        self.values = list(values)

    def score(self, items):
        return [Rating(self.values.pop(0), usage=Usage(scorer_tokens=1)) for _ in items]


def test_self_refine_keeps_a_revision_only_when_its_score_improves(engine):
    [problem] = [Problem("p", "What is 3 + 4?", "7")]
    # Draft 0.5, revision 1 scores lower (rejected), revision 2 higher (kept).
    scorer = CountingScorer([0.5, 0.1, 0.9])
    [r] = make_strategy("self_refine", iterations=2, max_tokens=32, seed=0).run(
        [problem], engine, scorer)
    kept = [c.meta["kept"] for c in r.candidates]
    assert kept == [True, False, True]
    assert r.trace["final_score"] == 0.9
    assert r.answer == r.candidates[2].answer
    steps = [h["step"] for h in r.trace["history"]]
    assert steps == ["draft", "critique 1", "revision 1", "critique 2", "revision 2"]
    # Draft + 2 x (critique + revision) are five generations; three ratings.
    assert r.usage.calls == 5 and r.usage.scorer_tokens == 3
