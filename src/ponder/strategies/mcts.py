"""Monte Carlo tree search over reasoning steps (UCT: Kocsis & Szepesvari, 2006; PUCT:
Silver et al., 2017; applied to LLM steps as in rStar and ReST-MCTS*). Each simulation
selects a path by UCT or PUCT (exploration constant c), expands the leaf into k child steps,
rolls one child out to an answer, scores the rollout with the scorer (PRM, ORM or judge)
and backs the value up every node on the path. The answer follows the most visited (or
highest-valued) children from the root. Simulation s of every problem runs together: one
expansion call, one rollout call, one scorer call.

MCTS keeps its statistics in its own state (`Stats` per node id), apart from the shared
search tree; selection, backup and the answer's path are small functions of that state.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from ponder.scorers.base import aggregate
from ponder.strategies.base import default_render
from ponder.strategies.cost import Cost
from ponder.strategies.search.ops import Expansion, expand, last_score, rate, rollout_to_end
from ponder.strategies.search.results import candidate, finish
from ponder.strategies.search.tree import Node, SearchConfig, Tree, start
from ponder.tasks.extract import extract_answer
from ponder.types import SequenceState


@dataclass(frozen=True)
class MCTS(SearchConfig):
    simulations: int = 16
    children: int = 3  # k child steps per expansion
    c: float = 1.0  # exploration constant
    selection: str = "uct"  # or "puct" (prior: the policy's step likelihoods)
    answer_by: str = "visits"  # or "value" (mean backed-up value)
    rollout_temperature: float = 0.0
    name: str = "mcts"

    def worst_case(self, prompt_tokens: int) -> Cost:
        # Each simulation: k child steps, then a rollout of up to max_steps more steps.
        cost = self.search_cost(prompt_tokens,
                                self.simulations * (self.children + self.max_steps))
        return replace(cost, options=("n", "children", "max_steps", "max_tokens"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.simulations < 1 or self.children < 1:
            raise ValueError("simulations and children must be >= 1")
        if self.selection not in ("uct", "puct"):
            raise ValueError(f"selection must be 'uct' or 'puct', got {self.selection!r}")
        if self.answer_by not in ("visits", "value"):
            raise ValueError(f"answer_by must be 'visits' or 'value', got {self.answer_by!r}")
        if not self.c >= 0 or not self.rollout_temperature >= 0:
            raise ValueError("c and rollout_temperature must be >= 0")

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        if scorer is None:
            raise ValueError("mcts needs a scorer (e.g. --scorer judge, or a PRM)")
        searches = [MCTSState(t) for t in start(problems, engine, render, self, extract, self.name)]
        for s in range(self.simulations):
            picks = [(m, self._descend(m)) for m in searches if not m.tree.stopped]
            targets = self._expand(engine, picks, s)
            self._simulate(engine, scorer, targets, s)
        return [self._result(m) for m in searches]

    # ---- one simulation, batched across problems -----------------------------------------

    def _descend(self, search: MCTSState) -> Node:
        """Follow the selection rule down to a node seen for the first time, or a leaf."""
        node = search.tree.root
        while node.children:
            node = pick(node, search.stats, self.selection, self.c)
            if search.stats[node.id].visits == 0:
                break
        return node

    def _expand(self, engine, picks: list[tuple[MCTSState, Node]],
                s: int) -> list[tuple[MCTSState, Node]]:
        """Expand the leaves that need it (one engine call); return each problem's target:
        the node whose value this simulation backs up."""
        jobs, owners, targets = [], [], []
        for search, node in picks:
            terminal = node.final or node.depth >= self.max_steps
            if search.stats[node.id].visits == 0 and node.parent is not None or terminal:
                targets.append((search, node))  # first visit (rolled out) or a known return
            elif search.tree.reserve(node, self.children, self.step_max_tokens):
                jobs.append(Expansion(search.tree, node, self.children, f"s{s}:n{node.id}"))
                owners.append(search)
            else:
                search.tree.stopped = "budget"
        for search, job, kids in zip(owners, jobs, expand(engine, jobs, self.name), strict=True):
            _share_prefix(job.node, kids)
            targets.append((search, pick(job.node, search.stats, self.selection, self.c)))
        return targets

    def _simulate(self, engine, scorer, targets: list[tuple[MCTSState, Node]], s: int) -> None:
        """Roll out and rate each target seen for the first time, then back up its return."""
        fresh = [(m, n) for m, n in targets if m.stats[n.id].ret is None]
        roll = [(m.tree, n) for m, n in fresh if not n.final and n.depth < self.max_steps]
        rollouts = dict(zip((id(n) for _, n in roll),
                            rollout_to_end(engine, roll, self.rollout_temperature, self.name,
                                           f"s{s}"), strict=True))
        jobs = []
        for search, node in fresh:
            out = rollouts.get(id(node))
            if out is None and id(node) in rollouts:
                search.tree.stopped = "budget"  # no room to roll out: judge the partial path
            sep = self.separator if node.finish == "stop" else ""
            stats = search.stats[node.id]
            stats.rollout = sep + out.text if out is not None else ""
            stats.rollout_tokens = len(out.token_ids) if out is not None else 0
            jobs.append((search.tree, node.response(self.separator) + stats.rollout,
                         out.state if out is not None else node.state))
        last_only = self.aggregation == "last"
        ratings = rate(scorer, engine, jobs, last_only)
        for (search, node), r in zip(fresh, ratings, strict=True):
            search.stats[node.id].ret = last_score(r) if last_only else _full(r, self.aggregation)
        for search, node in targets:
            value = search.stats[node.id].ret
            backup(search.stats, [search.tree.root, *node.path()], value)
            search.sims.append({"path": [n.id for n in node.path()], "return": value})

    # ---- the answer --------------------------------------------------------------------

    def _result(self, search: MCTSState):
        tree, stats = search.tree, search.stats
        node = answer_node(tree.root, stats, self.answer_by)
        for n in tree.nodes:
            n.state = None
            if stats[n.id].visits:
                n.value = stats[n.id].q
        rolled = [n for n in tree.nodes if stats[n.id].ret is not None]
        candidates = tuple(candidate(tree, n, stats[n.id].rollout, stats[n.id].ret,
                                     stats[n.id].rollout_tokens) for n in rolled)
        chosen = None if node is tree.root else node
        answer = None
        if chosen is not None:
            answer = tree.extract(chosen.response(self.separator) + stats[chosen.id].rollout)
        tree.stopped = tree.stopped or "simulations"
        extras = {n.id: stats[n.id].trace() for n in tree.nodes}
        return finish(tree, answer, candidates, chosen, extras, simulations=search.sims)


@dataclass
class Stats:
    """MCTS's statistics of one node. A node's return is the scorer's rating of its path and
    rollout, set on its first visit; every simulation through it adds its return to value_sum."""

    visits: int = 0
    value_sum: float = 0.0
    rollout: str = ""  # the text rolled out after the node's path (with its separator)
    rollout_tokens: int = 0
    ret: float | None = None  # None until the node is rolled out and rated

    @property
    def q(self) -> float:
        """The mean backed-up value (visited nodes only)."""
        return self.value_sum / self.visits

    def trace(self) -> dict:
        out: dict = {}
        if self.visits:
            out.update(visits=self.visits, q=self.q)
        if self.ret is not None:
            out.update(rollout=self.rollout, rollout_tokens=self.rollout_tokens)
            out["return"] = self.ret
        return out


@dataclass(eq=False)
class MCTSState:
    """One problem's MCTS: the shared tree, the statistics of its nodes by id, and a record
    of every simulation (the path it backed up and the return)."""

    tree: Tree
    stats: defaultdict[int, Stats] = field(default_factory=lambda: defaultdict(Stats))
    sims: list[dict] = field(default_factory=list)


def pick(node: Node, stats: Mapping[int, Stats], selection: str, c: float) -> Node:
    """The child of `node` the selection rule ("uct" or "puct") descends to; ties go to
    the earlier child."""
    if selection == "uct":
        return uct_pick(node, stats, c)
    return puct_pick(node, stats, c)


def uct_pick(node: Node, stats: Mapping[int, Stats], c: float) -> Node:
    """UCT: the first unvisited child (its bonus is infinite), else the child with the
    highest q + c * sqrt(ln N / n)."""
    kids = node.children
    fresh = [k for k in kids if stats[k.id].visits == 0]
    if fresh:
        return fresh[0]
    log_n = math.log(stats[node.id].visits)

    def uct(k: Node) -> tuple[float, int]:
        s = stats[k.id]
        return s.q + c * math.sqrt(log_n / s.visits), -k.id

    return max(kids, key=uct)


def puct_pick(node: Node, stats: Mapping[int, Stats], c: float) -> Node:
    """PUCT: q + c * prior * sqrt(N) / (1 + n), the prior from the policy's per-token
    likelihood of each step, normalized over the children; an unvisited child's q is its
    parent's (first-play urgency)."""
    kids = node.children
    top = max(k.mean_logprob for k in kids)
    weights = [math.exp(k.mean_logprob - top) for k in kids]
    total = sum(weights)
    parent = stats[node.id]
    parent_q = parent.q if parent.visits else 0.0
    root_n = math.sqrt(max(1, parent.visits))

    def puct(i: int) -> tuple[float, int]:
        s = stats[kids[i].id]
        q = s.q if s.visits else parent_q
        return q + c * weights[i] / total * root_n / (1 + s.visits), -kids[i].id

    return kids[max(range(len(kids)), key=puct)]


def backup(stats: Mapping[int, Stats], path: Sequence[Node], value: float) -> None:
    """Count one visit with return `value` on every node of `path` (root included)."""
    for n in path:
        stats[n.id].visits += 1
        stats[n.id].value_sum += value


def answer_node(root: Node, stats: Mapping[int, Stats], answer_by: str) -> Node:
    """Follow the most visited children from the root (ties: higher q, then the earlier
    node), or with answer_by="value" the highest q (ties: more visits); the root if none
    was visited."""
    node = root
    while any(stats[k.id].visits for k in node.children):
        visited = [k for k in node.children if stats[k.id].visits]
        if answer_by == "visits":
            node = max(visited, key=lambda k: (stats[k.id].visits, stats[k.id].q, -k.id))
        else:
            node = max(visited, key=lambda k: (stats[k.id].q, stats[k.id].visits, -k.id))
    return node


def _share_prefix(node: Node, kids: list[Node]) -> None:
    """Keep one KV cache per expanded node instead of one per child: every child continues
    from the node's cache (taken from its first child) plus its own step's tokens, which are
    re-fed (a few tokens) when it is first rolled out or expanded."""
    if not kids or kids[0].state is None or kids[0].state.cache is None:
        node.state = None
        return
    prefix = len(kids[0].state) - kids[0].tokens
    shared = kids[0].state.truncate(prefix)
    for k in kids[1:]:
        k.state = SequenceState(shared.token_ids + k.state.token_ids[prefix:], shared.cache,
                                shared.cached)
    node.state = None


def _full(rating, how: str) -> float:
    """A rating aggregated over its step scores (an outcome scorer's: its score)."""
    return aggregate(rating.step_scores, how) if rating.step_scores is not None else rating.score
