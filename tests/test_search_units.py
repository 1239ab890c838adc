"""The step-search algorithms on small synthetic trees, no engine: the tree's budget
arithmetic, UCT/PUCT selection, MCTS backup and answer, the beam loop's planning and
selection, the scorer probe, and the trace every search writes. Every expected pick and
value below is worked out by hand from the formula it tests."""

from collections import defaultdict

import pytest

from ponder.scorers.base import Rating, ScoreItem
from ponder.strategies.mcts import (
    Stats,
    _share_prefix,
    answer_node,
    backup,
    pick,
    puct_pick,
    uct_pick,
)
from ponder.strategies.search.beams import Beams, Mark, plan, select
from ponder.strategies.search.ops import Expansion, last_score, path_value, rate
from ponder.strategies.search.results import candidate, finish, node_trace
from ponder.strategies.search.tree import Node, SearchConfig, Tree, join_steps
from ponder.tasks.datasets import Problem
from ponder.types import SequenceState, Usage


def make_tree(prompt_tokens=10, **config) -> Tree:
    config = SearchConfig(**{"step_max_tokens": 8, **config})
    extract = lambda text: text.split()[-1] if text.split() else None  # noqa: E731
    return Tree(Problem("p", "question?", "42"), "the prompt", prompt_tokens, config, extract)


def grow(tree: Tree, parent: Node, text="x", *, finish="stop", final=False, tokens=1,
         mean_logprob=0.0, state=None, value=None) -> Node:
    node = Node(len(tree.nodes), parent, parent.depth + 1, text, finish, final, tokens,
                mean_logprob, state, value=value)
    parent.children.append(node)
    tree.nodes.append(node)
    return node


def visit(stats, node: Node, visits: int, value_sum: float) -> None:
    stats[node.id].visits, stats[node.id].value_sum = visits, value_sum


# ---- the tree and its budget ---------------------------------------------------------


def test_join_steps_puts_the_separator_only_after_steps_that_stopped_at_it():
    assert join_steps([("a", "stop"), ("b", "length"), ("c", "stop"), ("d", "stop")], "|") == \
        "a|bc|d"
    assert join_steps([], "|") == ""
    tree = make_tree()
    a = grow(tree, tree.root, "a")
    b = grow(tree, a, "b", finish="eos", tokens=3)
    assert b.path() == [a, b] and tree.root.path() == []
    assert b.response("\n\n") == "a\n\nb" and b.path_tokens() == 4


def test_prefill_counts_what_the_state_cache_does_not_cover():
    tree = make_tree(prompt_tokens=10)
    assert tree.prefill(tree.root) == 10  # the prompt
    bare = grow(tree, tree.root, state=SequenceState(tuple(range(14))))
    assert tree.prefill(bare) == 14  # no cache: everything is fed again
    cached = grow(tree, tree.root, state=SequenceState(tuple(range(14)), object(), 12))
    assert tree.prefill(cached) == 2
    full = grow(tree, tree.root, state=SequenceState(tuple(range(14)), object(), 14))
    assert tree.prefill(full) == 1  # the last token is always re-fed to get its logits


def test_reserve_holds_worst_cases_and_room_is_the_largest_request_that_fits():
    tree = make_tree(prompt_tokens=10, token_budget=60)
    # The root: the prompt plus n x (max_tokens - 1) decoded tokens.
    assert tree.reserve(tree.root, 4, 8) and tree.planned == 10 + 4 * 7
    assert tree.room(tree.root) == 60 - 38 - 10 + 1
    assert not tree.reserve(tree.root, 1, 14) and tree.planned == 38  # one token over
    assert tree.reserve(tree.root, 1, 13) and tree.planned == 60
    assert tree.room(tree.root) == 0 and not tree.reserve(tree.root, 0, 1)
    tree.planned = 0  # the call ran: what it spent counts instead
    tree.spend(Usage(forward_tokens=50))
    assert tree.room(tree.root) == 1 and not tree.reserve(tree.root, 1, 2)
    unlimited = make_tree()
    assert unlimited.reserve(unlimited.root, 1000, 1000) and unlimited.room(unlimited.root) > 1e9


def test_a_step_ends_the_solution_at_eos_or_an_answer():
    from types import SimpleNamespace as Step

    boxed, answer = make_tree(), make_tree(final="answer")
    for tree in (boxed, answer):
        assert tree.is_final(Step(text="", finish_reason="eos"))
        assert not tree.is_final(Step(text="", finish_reason="stop"))
    assert boxed.is_final(Step(text="so \\boxed{4}.", finish_reason="stop"))
    assert not boxed.is_final(Step(text="so \\boxed{4", finish_reason="length"))
    assert not boxed.is_final(Step(text="the answer is 4", finish_reason="stop"))
    # "answer": whatever the run's extract function finds (here: any last word).
    assert answer.is_final(Step(text="the answer is 4", finish_reason="stop"))
    assert not answer.is_final(Step(text="  ", finish_reason="stop"))


# ---- UCT and PUCT --------------------------------------------------------------------


def fan(k: int, logprobs=None) -> tuple[Tree, list[Node]]:
    tree = make_tree()
    kids = [grow(tree, tree.root, f"k{i}", mean_logprob=(logprobs or [0.0] * k)[i])
            for i in range(k)]
    return tree, kids


def test_uct_tries_every_child_once_in_order_before_comparing_them():
    tree, (a, b, c) = fan(3)
    stats = defaultdict(Stats)
    assert uct_pick(tree.root, stats, 1.0) is a
    backup(stats, [tree.root, a], 0.9)
    assert uct_pick(tree.root, stats, 1.0) is b
    backup(stats, [tree.root, b], 0.1)
    assert uct_pick(tree.root, stats, 100.0) is c  # however large c, unvisited comes first


def test_uct_trades_mean_value_against_the_exploration_bonus():
    tree, (a, b, c) = fan(3)
    stats = defaultdict(Stats)
    visit(stats, tree.root, 10, 5.7)
    visit(stats, a, 6, 4.2)  # q 0.7
    visit(stats, b, 1, 0.4)  # q 0.4
    visit(stats, c, 3, 1.5)  # q 0.5
    # q + c * sqrt(ln 10 / n): c=0 -> .7/.4/.5; c=0.1 -> .762/.552/.588; c=1 -> 1.32/1.92/1.38
    assert uct_pick(tree.root, stats, 0.0) is a
    assert uct_pick(tree.root, stats, 0.1) is a
    assert uct_pick(tree.root, stats, 1.0) is b
    assert pick(tree.root, stats, "uct", 1.0) is b


def test_uct_ties_go_to_the_earlier_child():
    tree, (a, b) = fan(2)
    stats = defaultdict(Stats)
    visit(stats, tree.root, 4, 2.0)
    visit(stats, a, 2, 1.0)
    visit(stats, b, 2, 1.0)
    assert uct_pick(tree.root, stats, 1.0) is a


def test_puct_starts_from_the_policy_prior():
    import math

    tree, (a, b, c) = fan(3, [math.log(0.1), math.log(0.6), math.log(0.3)])
    stats = defaultdict(Stats)
    assert puct_pick(tree.root, stats, 1.0) is b  # all unvisited: the largest prior
    assert pick(tree.root, stats, "puct", 1.0) is b


def test_puct_unvisited_children_inherit_the_parent_value():
    import math

    # Priors .6, .3, .1 (softmax of the mean log-likelihoods), N = 4, sqrt(N) = 2.
    tree, (a, b, c) = fan(3, [math.log(0.6), math.log(0.3), math.log(0.1)])
    stats = defaultdict(Stats)
    visit(stats, tree.root, 4, 2.0)  # q .5: c's value until it is visited (first-play urgency)
    visit(stats, a, 3, 0.6)  # q .2
    visit(stats, b, 1, 0.3)  # q .3
    # c=0: .2, .3, .5 -> c;  c=5: .2+5*.6*2/4=1.7, .3+5*.3*2/2=1.8, .5+5*.1*2/1=1.5 -> b
    assert puct_pick(tree.root, stats, 0.0) is c
    assert puct_pick(tree.root, stats, 5.0) is b
    # c=1.5: .65, .75, .8 -> c (with unnormalized priors 1, .5, .17 it would be b)
    assert puct_pick(tree.root, stats, 1.5) is c
    # The prior only matters relative to the siblings': shifting every log-likelihood is a no-op.
    for k in (a, b, c):
        k.mean_logprob -= 7.0
    assert puct_pick(tree.root, stats, 5.0) is b


def test_puct_ties_go_to_the_earlier_child():
    tree, (a, b) = fan(2)
    stats = defaultdict(Stats)
    assert puct_pick(tree.root, stats, 1.0) is a


# ---- MCTS backup, answer and trace ---------------------------------------------------


def test_backup_counts_a_visit_and_the_return_on_every_node_of_the_path():
    tree, (a, b) = fan(2)
    a1 = grow(tree, a)
    stats = defaultdict(Stats)
    backup(stats, [tree.root, a, a1], 0.5)
    backup(stats, [tree.root, b], 0.25)
    backup(stats, [tree.root, a], 1.0)
    assert [stats[n.id].visits for n in (tree.root, a, b, a1)] == [3, 2, 1, 1]
    assert stats[tree.root.id].q == pytest.approx(1.75 / 3)
    assert stats[a.id].q == 0.75 and stats[b.id].q == 0.25 and stats[a1.id].q == 0.5


def test_the_answer_follows_the_most_visited_or_the_best_valued_children():
    tree, (a, b, c) = fan(3)
    a1, a2 = grow(tree, a), grow(tree, a)
    b1 = grow(tree, b)
    stats = defaultdict(Stats)
    visit(stats, a, 4, 0.8)  # q .2
    visit(stats, b, 3, 1.5)  # q .5
    visit(stats, a1, 2, 0.4)
    visit(stats, a2, 2, 0.4)  # a tie with a1: the earlier node
    visit(stats, b1, 1, 0.5)
    assert answer_node(tree.root, stats, "visits") is a1
    assert answer_node(tree.root, stats, "value") is b1
    visit(stats, c, 4, 1.2)  # as many visits as a, but q .3 > .2
    assert answer_node(tree.root, stats, "visits") is c
    assert answer_node(tree.root, defaultdict(Stats), "visits") is tree.root  # none visited


def test_mcts_stats_trace_only_what_happened():
    assert Stats().trace() == {}
    assert Stats(visits=2, value_sum=1.0).trace() == {"visits": 2, "q": 0.5}
    rolled = Stats(visits=1, value_sum=0.3, rollout=" then 4", rollout_tokens=3, ret=0.3)
    assert list(rolled.trace().items()) == [("visits", 1), ("q", 0.3), ("rollout", " then 4"),
                                            ("rollout_tokens", 3), ("return", 0.3)]


def test_expanded_children_share_their_parent_cache():
    tree = make_tree()
    parent = grow(tree, tree.root, state=SequenceState((1, 2, 3), "parent-cache", 3))
    cache = object()
    kids = [grow(tree, parent, tokens=2, state=SequenceState((1, 2, 3, 4, t), cache, 4))
            for t in (5, 6, 7)]
    kids[1].state = SequenceState((1, 2, 3, 8, 9), object(), 5)  # a cache of its own
    _share_prefix(parent, kids)
    assert parent.state is None
    assert [k.state.token_ids for k in kids] == [(1, 2, 3, 4, 5), (1, 2, 3, 8, 9), (1, 2, 3, 4, 7)]
    assert kids[1].state.cache is cache and kids[1].state.cached == 3  # the prefix, not more
    assert kids[0].state.cached == 4  # the first child keeps its own
    bare = [grow(tree, kids[0], state=SequenceState((1, 2)))]
    _share_prefix(kids[0], bare)  # no cache to share: nothing changes but the parent's drop
    assert kids[0].state is None and bare[0].state.token_ids == (1, 2)


# ---- the beam loop's planning and selection ------------------------------------------


def test_the_first_step_splits_the_root_samples_into_subtrees():
    tree = make_tree(prompt_tokens=10)
    [(job, groups)] = plan(Beams(tree), 1, groups=3, width=2, first_width=2)
    assert (job.node, job.n, job.salt) == (tree.root, 6, "d1")
    assert groups == [0, 0, 1, 1, 2, 2]
    assert tree.planned == 10 + 6 * 7
    tight = make_tree(prompt_tokens=10, token_budget=10 + 6 * 7 - 1)
    assert plan(Beams(tight), 1, groups=3, width=2, first_width=2) == []


def test_later_steps_grow_the_best_beams_first_while_the_budget_lasts():
    tree = make_tree(prompt_tokens=10, token_budget=3 * 5 + 2 * (1 + 3 * 7))
    beams = Beams(tree)
    state = SequenceState(tuple(range(5)), object(), 4)  # prefill: one token
    nodes = [grow(tree, tree.root, value=v, state=state) for v in (0.2, 0.9, 0.5, 0.9)]
    beams.live = nodes
    beams.marks.update({n.id: Mark(g) for n, g in zip(nodes, (0, 1, 0, 2), strict=True)})
    tree.spend(Usage(forward_tokens=15))
    planned = plan(beams, 4, groups=3, width=3, first_width=1)
    # Best first (ties: the earlier node); two expansions of 1 + 3 x 7 tokens fit, not three.
    assert [(job.node.id, job.n, job.salt, groups) for job, groups in planned] == [
        (2, 3, "d4:n2", [1, 1, 1]), (4, 3, "d4:n4", [2, 2, 2])]
    assert tree.planned == 2 * 22


def fresh_steps(tree, beams, spec):
    """(group, value, final) per new node, children of the root."""
    state = SequenceState((1, 2))
    nodes = []
    for group, value, final in spec:
        n = grow(tree, tree.root, final=final, value=value, state=state)
        beams.marks[n.id] = Mark(group)
        nodes.append(n)
    return nodes


def test_select_keeps_the_top_steps_of_each_subtree():
    tree = make_tree()
    beams = Beams(tree)
    spec = [(0, 0.5, False), (0, 0.7, False), (0, 0.5, False), (0, 0.1, False),
            (1, 0.3, True), (1, 0.2, False), (1, 0.9, False)]
    n1, n2, n3, n4, n5, n6, n7 = fresh_steps(tree, beams, spec)
    completed = []
    live = select([n1, n2, n3, n4, n5, n6, n7], beams.marks, 2, completed)
    # Group 0: .7 and the earlier of the two .5s; group 1: .9 and the final .3 (completed).
    assert live == [n2, n1, n7] and completed == [n5]
    assert [beams.marks[n.id].kept for n in (n1, n2, n3, n4, n5, n6, n7)] == \
        [True, True, False, False, True, False, True]
    # Dropped and completed steps let go of their states; live beams keep them.
    assert [n.state is None for n in (n1, n2, n3, n4, n5, n6, n7)] == \
        [False, False, True, True, True, True, False]


def test_select_with_one_kept_step_per_subtree_is_dvts():
    tree = make_tree()
    beams = Beams(tree)
    spec = [(0, 0.3, False), (0, 0.6, False), (1, 0.9, False), (1, 0.2, False)]
    n1, n2, n3, n4 = fresh_steps(tree, beams, spec)
    assert select([n1, n2, n3, n4], beams.marks, 1, []) == [n2, n3]


# ---- scoring and results -------------------------------------------------------------


class Scorer:
    """Scores a response by its length; records how it was called."""

    name = "fake"

    def __init__(self, engine=None, last_step=True):
        self.engine, self.calls = engine, []
        if not last_step:
            self.score_last_step = None

    def score(self, items):
        self.calls.append(("score", [it.response for it in items], None))
        return [Rating(len(it.response) / 10, (0.5, len(it.response) / 10), Usage(calls=1))
                for it in items]

    def score_last_step(self, items, states=None):
        self.calls.append(("last", [it.response for it in items], states))
        return [Rating(len(it.response) / 100, None, Usage(scorer_tokens=2)) for it in items]


def test_rate_asks_for_the_last_step_only_and_passes_states_to_the_policy_engine_only():
    t1, t2 = make_tree(), make_tree()
    s1, s2 = SequenceState((1,)), SequenceState((2,))
    jobs = [(t1, "ab", s1), (t2, "abcd", s2)]
    policy = object()
    shared = Scorer(engine=policy)
    assert [r.score for r in rate(shared, policy, jobs)] == [0.02, 0.04]
    assert shared.calls == [("last", ["ab", "abcd"], [s1, s2])]
    assert t1.usage.scorer_tokens == 2 and t2.usage.scorer_tokens == 2
    other = Scorer(engine=object())
    rate(other, policy, jobs)
    assert other.calls == [("last", ["ab", "abcd"], [None, None])]
    full = Scorer(engine=policy)
    assert [r.score for r in rate(full, policy, jobs, last_only=False)] == [0.2, 0.4]
    assert full.calls == [("score", ["ab", "abcd"], None)]
    outcome = Scorer(engine=policy, last_step=False)  # no score_last_step: score()
    rate(outcome, policy, jobs)
    assert outcome.calls[0][0] == "score" and t1.usage.calls == 2
    assert rate(shared, policy, []) == []


def test_a_step_score_is_the_newest_step_score_and_values_aggregate_the_path():
    assert last_score(Rating(0.9, (0.1, 0.4))) == 0.4
    assert last_score(Rating(0.9)) == 0.9 and last_score(Rating(0.9, ())) == 0.9
    tree = make_tree()
    a = grow(tree, tree.root)
    b = grow(tree, a)
    a.score, b.score = 0.8, 0.4
    assert [path_value(b, how) for how in ("last", "min", "mean")] == [0.4, 0.4,
                                                                       pytest.approx(0.6)]
    assert path_value(b, "prod") == pytest.approx(0.32)


def test_expansion_requests_continue_from_the_node_state():
    tree = make_tree(temperature=0.7, top_p=0.9, seed=3)
    root_req = Expansion(tree, tree.root, 4, "d1").request("beam")
    assert root_req.prompt == "the prompt" and root_req.state is None and root_req.keep_state
    p = root_req.params
    assert (p.n, p.temperature, p.top_p, p.max_tokens, p.stop) == (4, 0.7, 0.9, 8, ("\n\n",))
    assert p.seed == Expansion(tree, tree.root, 4, "d1").request("beam").params.seed
    assert p.seed != Expansion(tree, tree.root, 4, "d2").request("beam").params.seed
    node = grow(tree, tree.root, state=SequenceState((1, 2, 3)))
    greedy = Expansion(tree, node, 1, temperature=0.0, max_tokens=30, stop=False).request("x")
    assert greedy.state is node.state and greedy.prompt is None
    assert (greedy.params.seed, greedy.params.max_tokens, greedy.params.stop) == (None, 30, ())


def test_the_trace_has_one_entry_per_node_and_the_chosen_path():
    tree = make_tree()
    a = grow(tree, tree.root, "step 1", value=0.4)
    b = grow(tree, a, "then 7", finish="eos", final=True, tokens=2, value=0.6)
    c = grow(tree, tree.root, "other 3", value=0.5)
    a.score, b.score = 0.4, 0.6
    tree.stopped = "answered"
    candidates = (candidate(tree, c), candidate(tree, b))
    assert candidates[1].text == "step 1\n\nthen 7" and candidates[1].answer == "7"
    assert (candidates[1].score, candidates[1].tokens) == (0.6, 3)
    assert candidates[1].meta == {"node": b.id, "final": True}
    extra = candidate(tree, a, " and 9", score=0.1, extra_tokens=4)
    assert (extra.answer, extra.score, extra.tokens) == ("9", 0.1, 5)
    r = finish(tree, "7", candidates, b, {b.id: {"kept": True, "group": 1, "visits": 2}},
               completed=[b.id])
    assert r.chosen == 1 and r.answer == "7" and r.trace["chosen_path"] == [a.id, b.id]
    assert r.trace["stopped"] == "answered" and r.trace["completed"] == [b.id]
    entries = r.trace["nodes"]
    assert [e["id"] for e in entries] == [0, 1, 2, 3]
    assert list(entries[2]) == ["id", "parent", "depth", "text", "tokens", "finish", "final",
                                "score", "value", "kept", "group", "visits"]
    assert entries[2] == node_trace(b, {"kept": True, "group": 1, "visits": 2})
    assert (entries[2]["parent"], entries[2]["kept"], entries[2]["group"]) == (a.id, True, 1)
    assert entries[0]["parent"] is None and entries[0]["kept"] is None
    assert entries[3]["group"] == 0
    none = finish(tree, None, candidates, None)
    assert none.chosen is None and none.trace["chosen_path"] == []


def test_score_item_carries_the_question_and_prompt():
    tree = make_tree()
    seen = []

    class Probe(Scorer):
        def score_last_step(self, items, states=None):
            seen.extend(items)
            return super().score_last_step(items, states)

    rate(Probe(), None, [(tree, "r", None)])
    assert seen == [ScoreItem("question?", "the prompt", "r")]
