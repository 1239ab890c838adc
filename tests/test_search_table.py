"""Beam search, lookahead, DVTS and MCTS end to end on the table engine (an exact toy model,
ponder.engines.table) with fake scorers: which steps are kept, which nodes MCTS visits and
what it backs up, budgets, early stops, reproducibility. No real model: seconds in all.

On the table engine a step is up to STEP tokens ("0 3"); the engine ignores stop strings, so
a step ends at its token cap ("length", joined to the next without a separator) or at EOS
(final). A scripted scorer gives the scores a test chooses, in the order the search asks.
"""

import zlib
from dataclasses import replace

import pytest
from search_traces import by_depth, response_of

from ponder.engines.table import TableEngine
from ponder.scorers.base import Rating
from ponder.strategies.beam_search import BeamSearch
from ponder.strategies.dvts import DVTS
from ponder.strategies.lookahead import Lookahead
from ponder.strategies.mcts import MCTS
from ponder.tasks.datasets import Problem
from ponder.types import Usage

STEP = 2
# Tables whose draws in the scripted tests below hold no EOS before the steps they script
# (a final step would end its beam early); the tests check it.
BEAM_TABLE, DVTS_TABLE, MCTS_TABLE = 6, 44, 6


def last_token(text: str) -> str | None:
    return text.split()[-1] if text.split() else None


class HashScorer:
    """Rates a response by a hash of its text, in [0, 1); records every call."""

    name = "hash"
    engine = None

    def __init__(self):
        self.calls: list[list[tuple[str, float]]] = []

    @staticmethod
    def value(response: str) -> float:
        return zlib.crc32(response.encode()) / 2**32

    def score(self, items):
        ratings = [Rating(self.value(it.response), usage=Usage(scorer_tokens=1, calls=1))
                   for it in items]
        self.calls.append([(it.response, r.score) for it, r in zip(items, ratings, strict=True)])
        return ratings


class Script:
    """Gives call i's item j the score script[i][j] (then 0.0); records the responses."""

    name = "script"

    def __init__(self, script):
        self.script, self.seen = script, []

    def score(self, items):
        row = self.script[len(self.seen)] if len(self.seen) < len(self.script) else []
        self.seen.append([it.response for it in items])
        return [Rating(row[j] if j < len(row) else 0.0) for j in range(len(items))]


def problems(n=2):
    return [Problem(f"p{i}", f"question {i}", "") for i in range(n)]


def render(p: Problem) -> list[int]:
    return [int(p.id[1:]) % 3, 1]


def table(seed: int) -> TableEngine:
    return TableEngine(vocab_size=8, seed=seed)


def run(config, scorer, engine=None, probs=None, **kw):
    engine = engine or TableEngine(vocab_size=4, seed=3)
    return config.run(probs or problems(), engine, scorer, extract=last_token,
                      render=kw.pop("render", render), **kw)


# ---- beam search ---------------------------------------------------------------------


@pytest.mark.parametrize("n,m", [(4, 2), (6, 3), (4, 1)])
def test_beam_search_keeps_exactly_the_top_m_each_step(n, m):
    scorer = HashScorer()
    config = BeamSearch(n=n, m=m, max_steps=4, step_max_tokens=STEP, seed=0)
    results = run(config, scorer, probs=problems(3))
    for r in results:
        levels = by_depth(r)
        assert len(levels[1]) == n and {x["parent"] for x in levels[1]} == {0}
        for depth, nodes in levels.items():
            kept = [x for x in nodes if x["kept"]]
            pruned = [x for x in nodes if not x["kept"]]
            assert len(kept) == min(m, len(nodes))
            ranked = sorted(nodes, key=lambda x: (-x["value"], x["id"]))
            assert [x["id"] for x in kept] == sorted(x["id"] for x in ranked[:m])  # ties: earlier
            if depth > 1:  # only the live beams of the step before grow, n/m ways each
                parents = {x["id"] for x in levels[depth - 1] if x["kept"] and not x["final"]}
                assert {x["parent"] for x in nodes} == parents
                for p in parents:
                    assert sum(x["parent"] == p for x in nodes) == n // m
            assert all(not x["kept"] for x in pruned)
        for node in r.trace["nodes"][1:]:  # the value ranked is the scorer's score of the path
            assert node["value"] == node["score"] == scorer.value(response_of(r, node["id"]))
        completed = r.trace["completed"]
        assert all(r.trace["nodes"][i]["final"] and r.trace["nodes"][i]["kept"] for i in completed)
        # It stops at the step where m beams have completed, or none is live, or max_steps.
        deepest = max(levels)
        done = [sum(r.trace["nodes"][i]["depth"] <= d for i in completed) for d in levels]
        live = [x for x in levels[deepest] if x["kept"] and not x["final"]]
        assert all(k < m for k in done[:-1])
        assert r.trace["stopped"] == ("answered" if done[-1] >= m or not live else "max_steps")
        assert r.trace["stopped"] == "answered" or deepest == 4
        # The answer: the best completed beam's (ties: the earlier), else the best live one.
        best = r.candidates[r.chosen]
        assert best.score == max(c.score for c in r.candidates[:len(completed) or None])
        assert r.trace["chosen_path"][-1] == best.meta["node"] and r.answer == best.answer
        assert r.answer == last_token(response_of(r, best.meta["node"]))
    # One scorer call per step, covering every problem.
    assert len(scorer.calls) == max(max(by_depth(r)) for r in results)


def test_beam_search_expands_the_best_beams_with_the_scores_it_was_given():
    # Depth 1: nodes 1-4 score .5 .7 .5 .1: keep 2 (.7) and 1 (.5, earlier than 3).
    # Depth 2: 2 grows first (nodes 5, 6), then 1 (7, 8); 8 scores best, then 5.
    script = Script([[0.5, 0.7, 0.5, 0.1], [0.6, 0.2, 0.3, 0.8]])
    config = BeamSearch(n=4, m=2, max_steps=2, step_max_tokens=STEP, seed=0)
    [r] = run(config, script, engine=table(BEAM_TABLE), probs=problems(1))
    nodes = r.trace["nodes"]
    assert len(nodes) == 9 and not any(x["final"] for x in nodes)
    assert [x["id"] for x in nodes if x["kept"]] == [1, 2, 5, 8]
    assert [x["parent"] for x in nodes[5:]] == [2, 2, 1, 1]
    assert [x["value"] for x in nodes[5:]] == [0.6, 0.2, 0.3, 0.8]
    assert r.trace["stopped"] == "max_steps" and r.trace["chosen_path"] == [1, 8]
    assert [c.meta["node"] for c in r.candidates] == [8, 5] and r.chosen == 0
    # The scorer read each new step after its path, one call per step.
    assert script.seen[1] == [response_of(r, i) for i in (5, 6, 7, 8)]


def test_min_aggregation_ranks_a_path_by_its_weakest_step():
    script = Script([[0.5, 0.9, 0.1, 0.1], [0.6, 0.2, 0.8, 0.7]])
    config = BeamSearch(n=4, m=2, max_steps=2, step_max_tokens=STEP, seed=0, aggregation="min")
    [r] = run(config, script, engine=table(BEAM_TABLE), probs=problems(1))
    nodes = r.trace["nodes"]
    assert len(nodes) == 9 and not any(x["final"] for x in nodes)
    # Kept at depth 1: 2 (.9), 1 (.5). Their children: 5, 6 under 2; 7, 8 under 1.
    assert [x["parent"] for x in nodes[5:]] == [2, 2, 1, 1]
    assert [x["value"] for x in nodes[5:]] == [0.6, 0.2, 0.5, 0.5]  # min(step, parent's)
    assert [x["id"] for x in nodes[5:] if x["kept"]] == [5, 7]


# ---- lookahead and DVTS --------------------------------------------------------------


def test_lookahead_scores_come_from_greedy_rollouts():
    scorer = HashScorer()
    config = Lookahead(n=4, m=2, max_steps=3, lookahead=2, step_max_tokens=STEP, seed=0)
    results = run(config, scorer, probs=problems(3))
    rolled = 0
    for r in results:
        nodes = r.trace["nodes"][1:]
        for node in nodes:
            own, rollout = response_of(r, node["id"]), node["lookahead"]
            # Two greedy steps, fewer only where one ends the solution (EOS: fewer tokens).
            if node["final"]:
                assert rollout == []
            else:
                assert 1 <= len(rollout) <= 2
                assert all(len(s.split()) == STEP for s in rollout[:-1])
                assert len(rollout) == 2 or len(rollout[-1].split()) < STEP
            assert node["score"] == scorer.value(own + "".join(rollout))
            rolled += bool(rollout)
        # The rollouts cost generated tokens beyond the steps kept in the tree.
        assert r.usage.generated_tokens > sum(x["tokens"] for x in nodes)
        assert r.trace["nodes"][0].get("lookahead") is None
    assert rolled > 0
    # The first steps are sampled before any rollout, and rollouts are greedy: one step of
    # lookahead rolls out the first step of two.
    shorter = run(replace(config, lookahead=1), HashScorer(), probs=problems(3))
    for r, s in zip(results, shorter, strict=True):
        two, one = by_depth(r)[1], by_depth(s)[1]
        assert [x["text"] for x in two] == [x["text"] for x in one]
        assert [x["lookahead"][:1] for x in two] == [x["lookahead"] for x in one]


def test_dvts_runs_independent_greedy_subtrees():
    scorer = HashScorer()
    config = DVTS(n=6, m=2, max_steps=4, step_max_tokens=STEP, seed=0)
    for r in run(config, scorer, probs=problems(3)):
        levels = by_depth(r)
        assert [x["group"] for x in levels[1]] == [0, 0, 1, 1, 2, 2]
        for depth, nodes in levels.items():
            for group in (0, 1, 2):
                mine = [x for x in nodes if x["group"] == group]
                if not mine:
                    continue
                kept = [x for x in mine if x["kept"]]
                assert kept == [min(mine, key=lambda x: (-x["value"], x["id"]))]
                if depth > 1:  # each subtree grows only from its own kept step, m ways
                    [parent] = [x for x in levels[depth - 1] if x["group"] == group and x["kept"]]
                    assert not parent["final"]
                    assert all(x["parent"] == parent["id"] for x in mine) and len(mine) == 2
        # A subtree ends at its first kept final step; the search when every subtree has.
        completed = r.trace["completed"]
        assert len({r.trace["nodes"][i]["group"] for i in completed}) == len(completed)
        assert r.trace["stopped"] == ("answered" if len(completed) == 3 else "max_steps")


def test_dvts_subtrees_grow_from_their_own_best_step():
    # Depth 1: subtree 0 is nodes 1, 2 (.3, .6), subtree 1 is 3, 4 (.9, .2): keep 2 and 3.
    # Depth 2: 3 grows first (the better value): 5, 6 in subtree 1; then 2: 7, 8 in subtree 0.
    script = Script([[0.3, 0.6, 0.9, 0.2], [0.1, 0.4, 0.7, 0.5]])
    config = DVTS(n=4, m=2, max_steps=2, step_max_tokens=STEP, seed=0)
    [r] = run(config, script, engine=table(DVTS_TABLE), probs=problems(1))
    nodes = r.trace["nodes"]
    assert len(nodes) == 9 and not any(x["final"] for x in nodes)
    assert [(x["parent"], x["group"]) for x in nodes[5:]] == [(3, 1), (3, 1), (2, 0), (2, 0)]
    assert [x["id"] for x in nodes if x["kept"]] == [2, 3, 6, 7]
    assert r.trace["chosen_path"] == [2, 7]  # .7 beats .4: subtrees compete only at the end


# ---- MCTS ----------------------------------------------------------------------------


def check_mcts(result, simulations):
    nodes = {x["id"]: x for x in result.trace["nodes"]}
    sims = result.trace["simulations"]
    assert len(sims) == simulations and nodes[0]["visits"] == simulations
    assert sum(x.get("visits", 0) for x in nodes.values() if x["parent"] == 0) == simulations
    for node_id, node in nodes.items():
        through = [s["return"] for s in sims if node_id == 0 or node_id in s["path"]]
        assert node.get("visits", 0) == len(through)
        if through:  # a node's value is the mean return of the simulations through it
            assert node["q"] == pytest.approx(sum(through) / len(through)) == node["value"]
    return nodes


@pytest.mark.parametrize("selection,answer_by", [("uct", "visits"), ("puct", "value")])
def test_mcts_visits_sum_to_simulations_and_values_are_mean_returns(selection, answer_by):
    scorer = HashScorer()
    config = MCTS(simulations=12, children=2, max_steps=3, step_max_tokens=STEP, seed=0,
                  selection=selection, answer_by=answer_by, c=1.5)
    for r in run(config, scorer, probs=problems(3)):
        nodes = check_mcts(r, 12)
        for node in nodes.values():
            if "return" in node:  # the scorer's rating of the step plus its rollout
                assert node["return"] == scorer.value(response_of(r, node["id"]) + node["rollout"])
        key = "visits" if answer_by == "visits" else "q"
        at = 0
        for chosen in r.trace["chosen_path"]:
            visited = [x for x in nodes.values() if x["parent"] == at and x.get("visits")]
            assert nodes[chosen][key] == max(x[key] for x in visited)
            at = chosen
        assert not any(x.get("visits") for x in nodes.values() if x["parent"] == at)
        best = r.candidates[r.chosen]
        assert best.meta["node"] == at and best.score == nodes[at]["return"]
        assert r.answer == best.answer == last_token(best.text)
        assert r.trace["stopped"] == "simulations"


def test_mcts_visits_the_children_in_turn_then_follows_uct():
    # Returns in the order simulations rate them: 1 -> .2, 2 -> .9, then 2's first child 3 ->
    # .5, 2's second child 4 -> .1; by then UCT at the root prefers 1 again
    # (.2 + sqrt(ln 4 / 1) = 1.38 > .5 + sqrt(ln 4 / 3) = 1.18), which grows 5, 6.
    script = Script([[0.2], [0.9], [0.5], [0.1], [0.4]])
    config = MCTS(simulations=5, children=2, max_steps=4, step_max_tokens=STEP, seed=0, c=1.0)
    [r] = run(config, script, engine=table(MCTS_TABLE), probs=problems(1))
    nodes = check_mcts(r, 5)
    assert not any(nodes[i]["final"] for i in (1, 2, 5))
    assert [s["path"] for s in r.trace["simulations"]] == [[1], [2], [2, 3], [2, 4], [1, 5]]
    assert [s["return"] for s in r.trace["simulations"]] == [0.2, 0.9, 0.5, 0.1, 0.4]
    assert [nodes[i]["visits"] for i in range(7) if "visits" in nodes[i]] == [5, 2, 3, 1, 1, 1]
    assert nodes[2]["q"] == pytest.approx(0.5) and nodes[1]["q"] == pytest.approx(0.3)
    assert "visits" not in nodes[6] and "return" not in nodes[6]
    assert r.trace["chosen_path"] == [2, 3]  # most visited: 2 (3 visits), then 3 (a tie, earlier)


def test_mcts_scores_with_the_full_rating_unless_aggregation_is_last():
    class Steps:
        name = "steps"
        engine = None

        def __init__(self):
            self.asked = []

        def score(self, items):
            self.asked.append("score")
            return [Rating(0.0, (0.2, 0.6)) for _ in items]

        def score_last_step(self, items, states=None):
            self.asked.append("last")
            return [Rating(0.0, (0.2, 0.6)) for _ in items]

    for aggregation, ret, asked in (("last", 0.6, "last"), ("mean", 0.4, "score"),
                                    ("min", 0.2, "score")):
        scorer = Steps()
        config = MCTS(simulations=3, children=2, max_steps=3, step_max_tokens=STEP,
                      aggregation=aggregation)
        [r] = run(config, scorer, probs=problems(1))
        assert [s["return"] for s in r.trace["simulations"]] == [pytest.approx(ret)] * 3
        assert set(scorer.asked) == {asked}


# ---- budgets, stopping, reproducibility ----------------------------------------------


def configs(**kw):
    base = {"step_max_tokens": STEP, "seed": 0, **kw}
    return [BeamSearch(n=4, m=2, max_steps=4, **base),
            Lookahead(n=4, m=2, max_steps=4, lookahead=2, **base),
            DVTS(n=4, m=2, max_steps=4, **base),
            MCTS(simulations=10, children=3, max_steps=4, **base)]


@pytest.mark.parametrize("budget", [12, 20, 35, 60])
def test_budgets_are_never_exceeded(budget):
    # The table engine feeds every request's whole prefix (no cache), so its forward tokens
    # equal a reservation's worst case when every sample runs to its cap: the bound is tight.
    stops = []
    for config in configs(token_budget=budget):
        for r in run(config, HashScorer(), probs=problems(3)):
            assert r.usage.forward_tokens <= budget, config.name
            stops.append((config.name, r.trace["stopped"]))
            if r.trace["stopped"] == "budget" and config.name != "mcts":
                # It stopped because no live beam's next expansion fit in what was left.
                assert budget - r.usage.forward_tokens < next_expansion(r), config.name
    if budget <= 20:
        assert {name for name, why in stops if why == "budget"} == {c.name for c in configs()}


def test_a_budget_too_small_for_the_first_step_answers_nothing():
    for config in configs(token_budget=4):  # the first request: 2 + (3 or 4) x (STEP - 1)
        for r in run(config, HashScorer(), probs=problems(2)):
            assert (r.answer, r.chosen, r.candidates) == (None, None, ()), config.name
            assert r.trace["stopped"] == "budget" and r.trace["chosen_path"] == []
            assert r.usage.forward_tokens == 0 and len(r.trace["nodes"]) == 1


def next_expansion(result, width=2, prompt=2):
    """The cheapest request the beam loop could have sent next: a live beam's prefix (all of
    it, without a cache) and width samples of STEP tokens, the first sampled from its logits."""
    nodes = result.trace["nodes"]
    if len(nodes) == 1:
        return prompt + 4 * (STEP - 1)
    deepest = max(x["depth"] for x in nodes)
    live = [x for x in nodes if x["depth"] == deepest and x["kept"] and not x["final"]]
    path = {x["id"]: x for x in nodes}

    def tokens(x):
        return x["tokens"] + (tokens(path[x["parent"]]) if x["parent"] else 0)

    return min(prompt + tokens(x) + width * (STEP - 1) for x in live)


def test_a_problem_answered_early_stops_spending():
    # Greedy on this table: prompt [3] ends at once (3, EOS); prompt [2] runs on past 3 steps.
    quick, slow = Problem("quick", "q", ""), Problem("slow", "s", "")
    prompts = {"quick": [3], "slow": [2]}
    scorer = HashScorer()
    config = BeamSearch(n=2, m=1, temperature=0.0, max_steps=3, step_max_tokens=STEP)
    a, b = run(config, scorer, engine=TableEngine(vocab_size=5, seed=0), probs=[quick, slow],
               render=lambda p: prompts[p.id])
    assert a.trace["stopped"] == "answered" and max(by_depth(a)) == 1 and a.answer == "3"
    assert b.trace["stopped"] == "max_steps" and max(by_depth(b)) == 3
    assert [x["text"] for x in b.trace["nodes"][1::2]] == ["2 3", "1 0", "3 2"]
    assert a.usage.forward_tokens == 1 + 2 * 1  # the prompt, then one more token per sample
    assert b.usage.forward_tokens == (1 + 2) + (3 + 2) + (5 + 2)  # no cache: prefixes re-fed
    assert (a.usage.scorer_tokens, b.usage.scorer_tokens) == (2, 6)
    assert len(scorer.calls) == 3 and len(scorer.calls[1]) == 2  # quick asks nothing more


@pytest.mark.parametrize("index", range(4))
def test_search_is_reproducible_and_independent_of_batching(index):
    config = configs()[index]
    together = run(config, HashScorer(), probs=problems(3))
    [alone] = run(config, HashScorer(), probs=problems(3)[1:2])
    assert alone.trace == together[1].trace and alone.answer == together[1].answer
    assert alone.usage.forward_tokens == together[1].usage.forward_tokens
    again = run(config, HashScorer(), probs=problems(3))
    assert [r.trace for r in again] == [r.trace for r in together]
    other_seed = run(replace(config, seed=1), HashScorer(), probs=problems(3))
    assert [r.trace["nodes"] for r in other_seed] != [r.trace["nodes"] for r in together]
