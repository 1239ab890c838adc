"""Monte Carlo tree search over reasoning steps (UCT: Kocsis & Szepesvari, 2006; PUCT:
Silver et al., 2017; applied to LLM steps as in rStar and ReST-MCTS*). Each simulation
selects a path by UCT or PUCT (exploration constant c), expands the leaf into k child steps,
rolls one child out to an answer, scores the rollout with the scorer (PRM, ORM or judge)
and backs the value up every node on the path. The answer follows the most visited (or
highest-valued) children from the root. Simulation s of every problem runs together: one
expansion call, one rollout call, one scorer call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ponder.strategies.base import default_render
from ponder.strategies.cost import Cost
from ponder.strategies.step_search import (
    Expansion,
    Node,
    SearchConfig,
    Tree,
    candidate,
    expand,
    finish,
    last_score,
    rate,
    rollout_to_end,
    start,
)
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
        trees = start(problems, engine, render, self, extract, self.name)
        sims: dict[int, list[dict]] = {id(t): [] for t in trees}
        for s in range(self.simulations):
            picks = [(t, self._descend(t.root)) for t in trees if not t.stopped]
            targets = self._expand(engine, picks, s)
            self._simulate(engine, scorer, targets, s, sims)
        return [self._result(t, sims[id(t)]) for t in trees]

    # ---- one simulation, batched across problems -----------------------------------------

    def _descend(self, node: Node) -> Node:
        """Follow the selection rule down to a node seen for the first time, or a leaf."""
        while node.children:
            node = self._pick(node)
            if node.visits == 0:
                break
        return node

    def _pick(self, node: Node) -> Node:
        kids = node.children
        if self.selection == "uct":
            fresh = [k for k in kids if k.visits == 0]
            if fresh:  # UCT's bonus is infinite for an unvisited child
                return fresh[0]
            log_n = math.log(node.visits)
            return max(kids, key=lambda k: (k.value_sum / k.visits
                                            + self.c * math.sqrt(log_n / k.visits), -k.id))
        # PUCT: prior from the policy's per-token likelihood of each step, normalized.
        top = max(k.mean_logprob for k in kids)
        weights = [math.exp(k.mean_logprob - top) for k in kids]
        total = sum(weights)
        parent_q = node.value_sum / node.visits if node.visits else 0.0
        root_n = math.sqrt(max(1, node.visits))

        def puct(i: int) -> tuple[float, int]:
            k = kids[i]
            q = k.value_sum / k.visits if k.visits else parent_q  # first-play urgency
            return q + self.c * weights[i] / total * root_n / (1 + k.visits), -k.id

        return kids[max(range(len(kids)), key=puct)]

    def _expand(self, engine, picks: list[tuple[Tree, Node]], s: int) -> list[tuple[Tree, Node]]:
        """Expand the leaves that need it (one engine call); return each problem's target:
        the node whose value this simulation backs up."""
        jobs, targets = [], []
        for tree, node in picks:
            terminal = node.final or node.depth >= self.max_steps
            if node.visits == 0 and node.parent is not None or terminal:
                targets.append((tree, node))  # first visit (rolled out) or a known return
            elif tree.reserve(node, self.children, self.step_max_tokens):
                jobs.append(Expansion(tree, node, self.children, f"s{s}:n{node.id}"))
            else:
                tree.stopped = "budget"
        for job, kids in zip(jobs, expand(engine, jobs, self.name), strict=True):
            _share_prefix(job.node, kids)
            targets.append((job.tree, self._pick(job.node)))
        return targets

    def _simulate(self, engine, scorer, targets: list[tuple[Tree, Node]], s: int,
                  sims: dict[int, list[dict]]) -> None:
        fresh = [(t, n) for t, n in targets if "return" not in n.meta]
        roll = [(t, n) for t, n in fresh if not n.final and n.depth < self.max_steps]
        rollouts = dict(zip((id(n) for _, n in roll),
                            rollout_to_end(engine, roll, self.rollout_temperature, self.name,
                                           f"s{s}"), strict=True))
        jobs = []
        for tree, node in fresh:
            out = rollouts.get(id(node))
            if out is None and id(node) in rollouts:
                tree.stopped = "budget"  # no room to roll out: judge the partial path
            sep = self.separator if node.finish == "stop" else ""
            tail = sep + out.text if out is not None else ""
            node.meta["rollout"] = tail
            node.meta["rollout_tokens"] = len(out.token_ids) if out is not None else 0
            jobs.append((tree, node.response(self.separator) + tail,
                         out.state if out is not None else node.state))
        last_only = self.aggregation == "last"
        for (_, node), r in zip(fresh, rate(scorer, engine, jobs, last_only), strict=True):
            node.meta["return"] = last_score(r) if last_only else _full(r, self.aggregation)
        for tree, node in targets:
            value = node.meta["return"]
            for n in [tree.root, *node.path()]:
                n.visits += 1
                n.value_sum += value
            sims[id(tree)].append({"path": [n.id for n in node.path()], "return": value})

    # ---- the answer --------------------------------------------------------------------

    def _result(self, tree: Tree, sims: list[dict]):
        node = tree.root
        while any(k.visits for k in node.children):
            visited = [k for k in node.children if k.visits]
            if self.answer_by == "visits":
                node = max(visited, key=lambda k: (k.visits, k.value_sum / k.visits, -k.id))
            else:
                node = max(visited, key=lambda k: (k.value_sum / k.visits, k.visits, -k.id))
        for n in tree.nodes:
            n.state = None
            if n.visits:
                n.value = n.value_sum / n.visits
        rolled = [n for n in tree.nodes if "return" in n.meta]
        candidates = tuple(candidate(tree, n, n.meta["rollout"], n.meta["return"],
                                     n.meta["rollout_tokens"]) for n in rolled)
        chosen = None if node is tree.root else node
        answer = None
        if chosen is not None:
            answer = tree.extract(chosen.response(self.separator) + chosen.meta["rollout"])
        tree.stopped = tree.stopped or "simulations"
        return finish(tree, answer, candidates, chosen, simulations=sims)


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
    from ponder.scorers.base import aggregate

    return aggregate(rating.step_scores, how) if rating.step_scores is not None else rating.score

