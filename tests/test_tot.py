"""Tree of Thoughts: BFS and DFS on the table engine (an exact toy model) with scripted and
hashed toy scorers as the valuer (which states are kept, pruned, expanded and backtracked
from; budgets), the self-valuation's reading of "Sure / Likely / Impossible", and one short
run on the bundled model valuing its own states.

As in test_search_table.py: a step is up to STEP tokens of the table model, the table
ignores stop strings, so a step ends at its cap or at EOS (a final step).
"""

import math

import pytest
from search_traces import by_depth, response_of
from test_search_table import STEP, HashScorer, Script, last_token, problems, render

from ponder.engines.table import TableEngine
from ponder.scorers.base import ScoreItem
from ponder.scorers.value_prompt import ValuePromptScorer
from ponder.server.errors import LimitError
from ponder.server.limits import Limits
from ponder.server.schemas import parse_chat
from ponder.strategies.base import default_render
from ponder.strategies.cost import cost_options
from ponder.strategies.registry import STRATEGIES, make_strategy, needs_scorer
from ponder.strategies.tot import TreeOfThoughts
from ponder.tasks.datasets import load_task
from ponder.types import GenerateRequest, SamplingParams, ScoreRequest

# Tables whose draws in the scripted tests hold no EOS (no final step); the tests check it.
BFS_TABLE, DFS_TABLE = 53, 1


class Counting(TableEngine):
    """The table engine, counting its generate calls."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.calls = 0

    def generate(self, requests, *args, **kw):
        self.calls += 1
        return super().generate(requests, *args, **kw)


def run(config, scorer, engine=None, probs=None):
    engine = engine or TableEngine(vocab_size=4, seed=3)
    return config.run(probs or problems(), engine, scorer, extract=last_token, render=render)


def tot(**kw):
    return TreeOfThoughts(**{"step_max_tokens": STEP, "valuer": "scorer", "seed": 0, **kw})


# ---- BFS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("breadth,n", [(2, 3), (1, 2), (3, 2)])
def test_bfs_keeps_the_breadth_best_states_per_depth_each_growing_n_ways(breadth, n):
    scorer, engine = HashScorer(), Counting(vocab_size=4, seed=3)
    results = run(tot(search="bfs", breadth=breadth, n=n, max_steps=4), scorer, engine,
                  problems(3))
    for r in results:
        levels = by_depth(r)
        assert len(levels[1]) == n and {x["parent"] for x in levels[1]} == {0}
        for depth, nodes in levels.items():
            kept = [x for x in nodes if x["kept"]]
            ranked = sorted(nodes, key=lambda x: (-x["value"], x["id"]))
            assert sorted(x["id"] for x in kept) == sorted(x["id"] for x in ranked[:breadth])
            if depth > 1:  # every kept live state of the depth before grows n ways, no other
                parents = {x["id"] for x in levels[depth - 1] if x["kept"] and not x["final"]}
                assert {x["parent"] for x in nodes} == parents
                assert all(sum(x["parent"] == p for x in nodes) == n for p in parents)
        for node in r.trace["nodes"][1:]:  # a state's value is the valuer's score of its path
            assert node["value"] == scorer.value(response_of(r, node["id"]))
        assert r.trace["search"] == "bfs" and r.trace["valuer"] == "scorer"
        assert r.trace["stopped"] in ("answered", "max_steps")
        assert r.answer == r.candidates[r.chosen].answer
    # One engine call and one valuation call per depth, every problem in them.
    depths = max(max(by_depth(r)) for r in results)
    assert engine.calls == len(scorer.calls) == depths


def test_bfs_grows_the_best_states_with_the_values_it_was_given():
    # Depth 1: nodes 1-3 valued .2 .9 .5: keep 2 and 3. Depth 2: 2 grows first (4, 5, 6),
    # then 3 (7, 8, 9); 7 (.8) and 9 (.6) are kept, and 7 is the answer's path.
    script = Script([[0.2, 0.9, 0.5], [0.1, 0.3, 0.2, 0.8, 0.4, 0.6]])
    [r] = run(tot(search="bfs", breadth=2, n=3, max_steps=2), script,
              TableEngine(vocab_size=8, seed=BFS_TABLE), problems(1))
    nodes = r.trace["nodes"]
    assert len(nodes) == 10 and not any(x["final"] for x in nodes)
    assert [x["parent"] for x in nodes[1:]] == [0, 0, 0, 2, 2, 2, 3, 3, 3]
    assert [x["id"] for x in nodes if x["kept"]] == [2, 3, 7, 9]
    assert r.trace["stopped"] == "max_steps" and r.trace["chosen_path"] == [3, 7]
    assert script.seen[1] == [response_of(r, i) for i in range(4, 10)]


# ---- DFS ---------------------------------------------------------------------------------


def test_dfs_backtracks_on_an_impossible_value():
    # Values: sure 1.0, likely 0.5, impossible 0.0. The root's children 1 (sure) and 2
    # (likely) pass; 1 is grown first, its children 3 and 4 are both impossible (pruned),
    # so the walk backs up to 2, whose children 5 (likely), 6 (sure) are at max_steps.
    script = Script([[1.0, 0.5], [0.0, 0.0], [0.5, 1.0]])
    [r] = run(tot(search="dfs", n=2, max_steps=2, value_threshold=0.25), script,
              TableEngine(vocab_size=8, seed=DFS_TABLE), problems(1))
    nodes = r.trace["nodes"]
    assert len(nodes) == 7 and not any(x["final"] for x in nodes)
    assert [x["parent"] for x in nodes[1:]] == [0, 0, 1, 1, 2, 2]
    assert r.trace["dfs_order"] == [0, 1, 2]  # 1 before 2: the more valuable first
    assert [x["expanded"] for x in nodes] == [0, 1, 2, None, None, None, None]
    assert [x["kept"] for x in nodes] == [None, True, True, False, False, True, True]
    assert script.seen[2] == [response_of(r, 5), response_of(r, 6)]  # grown from 2
    # 1 -> 2 backs up past the pruned children; 6 -> 5 (dead ends at max_steps) again.
    assert r.trace["backtracks"] == 2 and r.trace["stopped"] == "exhausted"
    # No answer was reached: the deepest, most valuable state is the answer's path.
    assert r.trace["chosen_path"] == [2, 6] and r.candidates[r.chosen].meta["node"] == 6


def test_dfs_prunes_everything_below_the_threshold_and_stops_at_the_first_passing_answer():
    seen_answer = seen_exhausted = False
    for threshold in (0.3, 0.5, 0.7):
        config = tot(search="dfs", n=3, max_steps=4, value_threshold=threshold)
        for r in run(config, HashScorer(), probs=problems(6)):
            nodes = {x["id"]: x for x in r.trace["nodes"]}
            order = r.trace["dfs_order"]
            assert order[0] == 0 and len(order) <= config.max_expansions
            for i, node_id in enumerate(order):
                x = nodes[node_id]
                assert x["expanded"] == i and not x["final"] and x["depth"] < 4
                assert node_id == 0 or x["kept"]
                kids = [k for k in nodes.values() if k["parent"] == node_id]
                assert len(kids) == 3
                assert all(k["kept"] == (k["value"] >= threshold) for k in kids)
                if i:  # depth first: grown from a state expanded before it
                    assert x["parent"] in order[:i]
            if r.trace["stopped"] == "answered":
                seen_answer = True
                end = nodes[r.trace["chosen_path"][-1]]
                assert end["final"] and end["kept"] and end["value"] >= threshold
                assert r.answer == last_token(response_of(r, end["id"]))
            else:
                seen_exhausted |= r.trace["stopped"] == "exhausted"
                assert r.trace["stopped"] in ("exhausted", "max_expansions")
    assert seen_answer and seen_exhausted


def test_dfs_walks_are_batched_across_problems_and_do_not_depend_on_it():
    engine, scorer = Counting(vocab_size=4, seed=3), HashScorer()
    config = tot(search="dfs", n=3, max_steps=4, value_threshold=0.4)
    together = run(config, scorer, engine, problems(3))
    assert engine.calls == len(scorer.calls) == max(len(r.trace["dfs_order"]) for r in together)
    [alone] = run(config, HashScorer(), probs=problems(3)[1:2])
    assert alone.trace == together[1].trace and alone.answer == together[1].answer
    assert alone.usage.forward_tokens == together[1].usage.forward_tokens


# ---- budgets -----------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [12, 20, 35])
@pytest.mark.parametrize("search", ["bfs", "dfs"])
def test_budgets_are_never_exceeded(budget, search):
    config = tot(search=search, breadth=2, n=3, max_steps=4, token_budget=budget,
                 value_threshold=0.2)
    results = run(config, HashScorer(), probs=problems(3))
    assert all(r.usage.forward_tokens <= budget for r in results)
    if budget == 12:
        assert any(r.trace["stopped"] == "budget" for r in results)
    small = run(tot(search=search, token_budget=3), HashScorer(), probs=problems(2))
    for r in small:  # no room for the first step: nothing spent, nothing answered
        assert (r.answer, r.chosen, r.candidates) == (None, None, ())
        assert r.trace["stopped"] == "budget" and r.usage.forward_tokens == 0


def test_the_worst_case_grows_with_the_options_and_the_server_refuses_it():
    base = make_strategy("tot", n=3, max_tokens=16, max_steps=2)
    assert make_strategy("tot", n=3, max_tokens=16, max_steps=2, breadth=3).worst_case(
        10).tokens > base.worst_case(10).tokens > make_strategy(
        "tot", n=2, max_tokens=16, max_steps=2).worst_case(10).tokens
    dfs = make_strategy("tot", search="dfs", n=3, max_tokens=16, max_steps=2)
    assert make_strategy("tot", search="dfs", n=3, max_tokens=16, max_steps=2,
                         max_expansions=40).worst_case(10).tokens > dfs.worst_case(10).tokens
    sampled = make_strategy("tot", n=3, max_tokens=16, max_steps=2, value_samples=3)
    assert "value_samples" in cost_options(sampled, sampled.worst_case(10))
    assert set(cost_options(dfs, dfs.worst_case(10))) == {"n", "max_expansions", "max_steps",
                                                          "max_tokens"}
    # With the valuer a scorer, the bound is the search family's.
    scored = make_strategy("tot", n=3, max_tokens=16, max_steps=2, valuer="scorer")
    assert scored.worst_case(10).tokens == scored.search_cost(10, 2 * 2 * 3).tokens
    limits = Limits(max_n=8, max_tokens=64, default_max_tokens=32, max_request_tokens=5000)
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    with pytest.raises(LimitError, match="max_request_tokens"):
        parse_chat({"model": "smollm2-135m", "messages": messages, "max_tokens": 64,
                    "ponder": {"strategy": "tot", "n": 3, "max_steps": 8}},
                   ("smollm2-135m",), limits)


# ---- registry and options ----------------------------------------------------------------


def test_tot_runs_without_a_scorer_unless_its_valuer_is_one():
    assert not needs_scorer("tot") and "search" in STRATEGIES["tot"].options
    config = make_strategy("tot", n=2, breadth=3, search="dfs", value_threshold="0.5")
    assert (config.n, config.breadth, config.search, config.value_threshold) == (2, 3, "dfs", 0.5)
    with pytest.raises(ValueError, match="needs a scorer"):
        tot().run(problems(1), TableEngine(), None, extract=last_token, render=render)
    with pytest.raises(ValueError, match="uses no scorer"):
        tot(valuer="self").run(problems(1), TableEngine(), HashScorer(), extract=last_token,
                               render=render)
    for bad in ({"search": "astar"}, {"valuer": "oracle"}, {"breadth": 0},
                {"value_samples": -1}):
        with pytest.raises(ValueError):
            TreeOfThoughts(**bad)


def test_verdicts_map_to_values():
    scorer = ValuePromptScorer(None)
    assert [scorer.read(v) for v in ("Sure.", " likely so", "IMPOSSIBLE", "unlikely", "?")] == \
        [1.0, 0.5, 0.0, None, None]
    assert scorer.mean_verdict(["Sure", "Impossible", "hmm"]) == 0.5
    assert scorer.mean_verdict(["no idea"]) == 0.5
    assert scorer.expected([-0.6931471805599453, -1.3862943611198906, -1.3862943611198906]) \
        == pytest.approx(0.625)  # 1.0 x 1/2 + 0.5 x 1/4 + 0.0 x 1/4


# ---- the bundled model valuing its own states --------------------------------------------


@pytest.fixture(scope="module")
def smoke(engine):
    problems_ = load_task("arith:1", limit=2, shuffle_seed=0)
    config = TreeOfThoughts(search="bfs", breadth=2, n=3, max_steps=2, step_max_tokens=24,
                            seed=0)
    return problems_, config, config.run(problems_, engine)


def test_the_model_values_its_own_states(smoke, engine):
    problems_, config, results = smoke
    valuer = ValuePromptScorer(engine)
    for p, r in zip(problems_, results, strict=True):
        levels = by_depth(r)
        assert [len(levels[1]), sum(x["kept"] for x in levels[1])] == [3, 2]
        values = [x["value"] for x in r.trace["nodes"][1:]]
        assert all(0.0 <= v <= 1.0 for v in values) and len(set(values)) > 1
        # A state's value: 1.0 x P(Sure) + 0.5 x P(Likely) + 0.0 x P(Impossible), the words
        # scored as the reply to the question asked after the state, normalized over the three.
        node = levels[2][0]
        context = valuer._context(default_render(p), response_of(r, node["id"]).strip(), "step")
        scored = engine.score([ScoreRequest(context, valuer._bare(w))
                               for w in ("Sure", "Likely", "Impossible")])
        probs = [math.exp(s.sum_logprob) for s in scored]
        assert node["value"] == pytest.approx((probs[0] + 0.5 * probs[1]) / sum(probs), abs=1e-4)
        # Every token is counted: the valuer's as scorer tokens, and the bound holds.
        assert r.usage.scorer_tokens > 0 and r.usage.generated_tokens > 0
        prompt = len(engine.tokenize(default_render(p)))
        charged = r.usage.prompt_tokens + r.usage.generated_tokens + r.usage.scorer_tokens
        assert charged <= config.worst_case(prompt).tokens


def test_one_token_words_are_read_from_the_states_and_sampled_verdicts_reproduce(engine):
    [p] = load_task("arith:1", limit=1, shuffle_seed=0)
    prompt = default_render(p)
    [gen] = engine.generate([GenerateRequest(prompt, SamplingParams(temperature=0.0,
                                                                    max_tokens=12),
                                             keep_state=True)])
    done = gen.completions[0]
    item = ScoreItem(p.question, prompt, done.text)
    yes_no = ValuePromptScorer(engine, words=("Yes", "No"), values=(1.0, 0.0))
    [fast] = yes_no.score_last_step([item], [done.state])
    [exact] = yes_no.score_last_step([item], [None])
    assert fast.score == pytest.approx(exact.score, abs=0.02)
    assert 0 < fast.usage.scorer_tokens < exact.usage.scorer_tokens  # only the question's
    sampled = ValuePromptScorer(engine, samples=3, seed=0)
    first = sampled.score_last_step([item, item], [done.state, None])
    again = sampled.score_last_step([item], [done.state])
    assert first[0].score == again[0].score and 0.0 <= first[0].score <= 1.0
    assert all(r.usage.scorer_tokens > 0 for r in first)
