"""Step search end to end on the bundled model with the judge as scorer, reading the policy's
KV states: beam search keeps exactly the top M of the judge's ratings, prefix reuse shows in
the token accounting, results reproduce and do not depend on batching, lookahead scores come
from rollouts, MCTS visit counts and backed-up values add up, and budgets hold with real
caches. The algorithms themselves (exact picks and values, DVTS subtrees, PUCT, early stops)
are tested on synthetic trees and the table engine: test_search_units.py, test_search_table.py.
"""

import pytest
from search_traces import by_depth, response_of

from ponder.scorers.judge import JudgeScorer
from ponder.strategies.base import default_render
from ponder.strategies.beam_search import BeamSearch
from ponder.strategies.dvts import DVTS
from ponder.strategies.lookahead import Lookahead
from ponder.strategies.mcts import MCTS
from ponder.strategies.registry import make_strategy, needs_scorer
from ponder.tasks.datasets import load_task

STEP = 24  # step_max_tokens: short steps keep the tests fast


class Recorder:
    """The judge, recording every item it rated and the rating it gave."""

    def __init__(self, inner):
        self.inner, self.name, self.engine = inner, inner.name, inner.engine
        self.calls = []

    def score(self, items):
        ratings = self.inner.score(items)
        self.calls.append(list(zip(items, ratings, strict=True)))
        return ratings

    def score_last_step(self, items, states=None):
        ratings = self.inner.score_last_step(items, states)
        self.calls.append(list(zip(items, ratings, strict=True)))
        return ratings

    def rating_of(self, response):
        found = [r for call in self.calls for it, r in call if it.response == response]
        assert found, f"the scorer never saw {response!r}"
        return found[-1]


@pytest.fixture(scope="module")
def problems():
    return load_task("arith:1", limit=2, shuffle_seed=0)


@pytest.fixture(scope="module")
def judge(engine):
    return JudgeScorer(engine)


@pytest.fixture(scope="module")
def beam(engine, judge, problems):
    recorder = Recorder(judge)
    config = BeamSearch(n=4, m=2, max_steps=3, step_max_tokens=STEP, seed=0)
    return config, config.run(problems, engine, recorder), recorder


def test_beam_search_keeps_exactly_the_top_m_each_step(beam):
    config, results, recorder = beam
    for r in results:
        levels = by_depth(r)
        assert len(levels[1]) == config.n and {n["parent"] for n in levels[1]} == {0}
        for depth, nodes in levels.items():
            kept = [n for n in nodes if n["kept"]]
            pruned = [n for n in nodes if not n["kept"]]
            assert len(kept) == config.m
            assert min(n["value"] for n in kept) >= max(n["value"] for n in pruned)
            if depth > 1:  # only the live beams of the step before grow, n/m ways each
                parents = {n["id"]: n for n in levels[depth - 1] if n["kept"] and not n["final"]}
                assert {n["parent"] for n in nodes} == set(parents)
                for p in parents:
                    assert sum(n["parent"] == p for n in nodes) == config.n // config.m
        for node in r.trace["nodes"][1:]:  # the value ranked is the judge's P(Yes) of the step
            assert node["value"] == node["score"]
            assert node["score"] == recorder.rating_of(response_of(r, node["id"])).score
    # One scorer call per step, covering every problem.
    assert len(recorder.calls) == max(max(by_depth(r)) for r in results)


def test_beam_search_accounts_for_policy_and_judge_tokens(beam, engine, problems):
    config, results, _ = beam
    suffix = len(JudgeScorer(engine)._suffix(True, "step"))
    for p, r in zip(problems, results, strict=True):
        nodes = r.trace["nodes"][1:]
        assert r.usage.generated_tokens == sum(n["tokens"] for n in nodes)
        # Prefix reuse: the prompt is fed once; a beam's expansion re-feeds one token.
        expansions = len({n["parent"] for n in nodes if n["depth"] > 1})
        prompt = len(engine.tokenize(default_render(p)))
        assert r.usage.forward_tokens == prompt + expansions + sum(n["tokens"] - 1 for n in nodes)
        # The judge continues each step's state: a question's worth of tokens per step.
        assert 0 < r.usage.scorer_tokens <= len(nodes) * (suffix + 1)
        chosen = r.trace["chosen_path"]
        parents = {n["id"]: n["parent"] for n in nodes}
        assert [parents[i] for i in chosen] == [0, *chosen[:-1]]
        assert r.candidates[r.chosen].meta["node"] == chosen[-1]
        assert r.answer == r.candidates[r.chosen].answer


def test_beam_search_is_reproducible_and_independent_of_batching(beam, engine, judge, problems):
    config, results, _ = beam
    [alone] = config.run(problems[1:], engine, judge)
    assert [n["text"] for n in alone.trace["nodes"]] == [n["text"] for n in results[1].trace["nodes"]]
    assert alone.answer == results[1].answer


def test_lookahead_scores_come_from_rollouts(engine, judge, problems):
    recorder = Recorder(judge)
    config = Lookahead(n=4, m=2, max_steps=2, lookahead=1, step_max_tokens=STEP, seed=0)
    results = config.run(problems[:1], engine, recorder)
    nodes = results[0].trace["nodes"][1:]
    rolled = 0
    for node in nodes:
        own = response_of(results[0], node["id"])
        rollout = node["lookahead"]
        assert len(rollout) == (0 if node["final"] else 1)
        sep = "\n\n" if node["finish"] == "stop" else ""
        scored = own + (sep + rollout[0] if rollout else "")
        assert node["score"] == recorder.rating_of(scored).score
        rolled += bool(rollout)
    assert rolled > 0
    # The rollouts cost generated tokens beyond the steps kept in the tree.
    assert results[0].usage.generated_tokens > sum(n["tokens"] for n in nodes)


def check_mcts(result, simulations):
    nodes = {n["id"]: n for n in result.trace["nodes"]}
    sims = result.trace["simulations"]
    assert len(sims) == simulations
    assert nodes[0]["visits"] == simulations
    assert sum(n["visits"] for n in nodes.values() if n["parent"] == 0 and "visits" in n) == simulations
    for node_id, node in nodes.items():
        through = [s["return"] for s in sims if node_id == 0 or node_id in s["path"]]
        assert node.get("visits", 0) == len(through)
        if through:  # a node's value is the mean return of the simulations through it
            assert node["q"] == pytest.approx(sum(through) / len(through))
    return nodes


def test_mcts_visits_sum_to_simulations_and_values_are_mean_returns(engine, judge, problems):
    recorder = Recorder(judge)
    config = MCTS(simulations=5, children=2, max_steps=3, step_max_tokens=STEP, seed=0)
    results = config.run(problems, engine, recorder)
    for r in results:
        nodes = check_mcts(r, 5)
        for node in nodes.values():
            if "return" in node:  # a return is the judge's rating of the step plus its rollout
                scored = response_of(r, node["id"]) + node["rollout"]
                assert node["return"] == recorder.rating_of(scored).score
        # The answer follows the most visited child at every level.
        at = 0
        for chosen in r.trace["chosen_path"]:
            visited = [n for n in nodes.values() if n["parent"] == at and n.get("visits")]
            assert nodes[chosen]["visits"] == max(n["visits"] for n in visited)
            at = chosen
        assert r.usage.scorer_tokens > 0 and r.usage.generated_tokens > 0


def test_budgets_are_never_exceeded(engine, judge, problems):
    prompt = max(len(engine.tokenize(default_render(p))) for p in problems)
    first, beam = prompt + 4 * (STEP - 1), 1 + 2 * (STEP - 1)  # worst cases of an expansion
    budget = first + beam + 10  # room for the first step and one beam, not two
    config = BeamSearch(n=4, m=2, max_steps=4, step_max_tokens=STEP, seed=0, token_budget=budget)
    for r in config.run(problems, engine, judge):
        assert r.usage.forward_tokens <= budget
        assert r.trace["stopped"] == "budget"
        assert budget - r.usage.forward_tokens < beam  # it stopped because nothing more fit
    lookahead = Lookahead(n=4, m=2, max_steps=3, lookahead=2, step_max_tokens=STEP, seed=0,
                          token_budget=budget)
    mcts = MCTS(simulations=8, children=2, max_steps=3, step_max_tokens=STEP, seed=0,
                token_budget=prompt + 2 * STEP + 40)
    for config in (lookahead, mcts):
        for r in config.run(problems, engine, judge):
            assert r.usage.forward_tokens <= config.token_budget, config.name
            assert r.trace["stopped"] == "budget", config.name


def test_search_strategies_by_name():
    assert isinstance(make_strategy("beam", n=4, m=2), BeamSearch)
    assert make_strategy("beam_search", lookahead=1).lookahead == 1
    assert make_strategy("lookahead").lookahead == 2
    assert isinstance(make_strategy("dvts", n=8, m=4), DVTS)
    mcts = make_strategy("mcts", n=12, children=4, c="1.5", selection="puct")
    assert (mcts.simulations, mcts.children, mcts.c, mcts.selection) == (12, 4, 1.5, "puct")
    assert make_strategy("beam", max_tokens=64).step_max_tokens == 64
    assert all(needs_scorer(n) for n in ("beam_search", "lookahead", "dvts", "mcts"))
    for bad in ({"n": 6, "m": 4}, {"m": 0}, {"aggregation": "max"}, {"final": "never"},
                {"token_budget": 0}):
        with pytest.raises(ValueError):
            make_strategy("beam", **bad)
    with pytest.raises(ValueError, match="selection"):
        make_strategy("mcts", selection="random")
    with pytest.raises(ValueError, match="scorer"):
        BeamSearch().run([], None, None)
