"""Tree of Thoughts (Yao et al., 2023, "Deliberate Problem Solving with Large Language
Models"): a solution grows one thought (a step, up to the separator) at a time, every state
(a partial solution) is valued, and search decides which states to grow.

- search="bfs" (the paper's Algorithm 1): every kept state proposes `n` next steps, every
  new state is valued, and the best `breadth` (b) are kept for the next depth. It is the
  shared beam loop (search/beams.py) with one subtree keeping b states that each grow n
  ways: one engine call per depth for every state of every problem, one valuation call.
- search="dfs" (Algorithm 2): grow the current state `n` ways, value the children, and go
  on from the most valuable; children valued below `value_threshold` are pruned. A state
  with nothing left to explore (every child pruned, or max_steps reached without an answer)
  sends the search back to the best state still waiting on the way up (backtracking). It
  stops at the first final step (an answer, or EOS) that passes the threshold, when nothing
  is left (exhausted), after `max_expansions` expansions, or when the budget has no room.
  Each problem's walk is sequential; the walks of all problems expand together (one engine
  call and one valuation call per round).

The value of a state: valuer="self" asks the policy itself "Sure / Likely / Impossible?"
about it (scorers/value_prompt.py; 1.0 / 0.5 / 0.0, expected under the words' probabilities
or, with value_samples=k, the mean of k sampled verdicts), counted as scorer tokens;
valuer="scorer" uses the scorer given (a PRM, the judge, a trained verifier). Either way the
state's value is its path's step values aggregated (`aggregation`, "last" by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ponder.scorers.value_prompt import VERDICT_TOKENS, ValuePromptScorer
from ponder.strategies.base import default_render
from ponder.strategies.cost import TEMPLATE_TOKENS, Cost
from ponder.strategies.search.beams import run_beams, score_steps
from ponder.strategies.search.ops import Expansion, expand
from ponder.strategies.search.results import candidate, finish
from ponder.strategies.search.tree import Node, SearchConfig, Tree, start
from ponder.tasks.extract import extract_answer

SEARCHES = ("bfs", "dfs")
VALUERS = ("self", "scorer")


@dataclass(frozen=True)
class TreeOfThoughts(SearchConfig):
    search: str = "bfs"
    breadth: int = 2  # b: states kept per depth (bfs)
    n: int = 3  # candidate steps proposed per state
    value_threshold: float = 0.25  # dfs: children valued below it are pruned
    value_samples: int = 0  # self valuer: 0 reads the words' probabilities, k samples k
    valuer: str = "self"  # or "scorer"
    max_expansions: int = 20  # dfs: states expanded at most, per problem
    name: str = "tot"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {self.search!r}")
        if self.valuer not in VALUERS:
            raise ValueError(f"valuer must be one of {VALUERS}, got {self.valuer!r}")
        if self.breadth < 1 or self.n < 1 or self.max_expansions < 1:
            raise ValueError("breadth, n and max_expansions must be >= 1")
        if self.value_samples < 0:
            raise ValueError("value_samples must be >= 0 (0: read the words' probabilities)")

    def worst_case(self, prompt_tokens: int) -> Cost:
        """Every proposed step charged as a search request: its state at the longest path
        and a step generated. Its valuation: with a scorer, the search family's (the scorer
        reading the longest path and its template); the self valuer reads the longest path
        and its question (bounded by TEMPLATE_TOKENS) three times, once per word of at most
        VERDICT_TOKENS (the exact path), or once with k sampled verdicts."""
        expansions = self.max_steps * self.breadth if self.search == "bfs" else self.max_expansions
        steps = expansions * self.n
        cost = self.search_cost(prompt_tokens, steps)
        options = ("n", "breadth" if self.search == "bfs" else "max_expansions", "max_steps",
                   "max_tokens")
        if self.valuer == "scorer":
            return replace(cost, options=options)
        asked = cost.longest + TEMPLATE_TOKENS
        if self.value_samples:
            per_state = asked + self.value_samples * VERDICT_TOKENS
            options += ("value_samples",)
        else:
            per_state = 3 * (asked + VERDICT_TOKENS)
        return Cost(steps * (cost.longest + self.step_max_tokens + per_state),
                    asked + VERDICT_TOKENS, options)

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        valuer = self.valuer_for(engine, scorer)
        if self.search == "bfs":
            results = run_beams(problems, engine, valuer, extract, render, self, self.name,
                                groups=1, keep=self.breadth, width=self.n, first_width=self.n)
        else:
            results = run_dfs(problems, engine, valuer, extract, render, self)
        for r in results:
            r.trace.update(search=self.search, valuer=self.valuer)
        return results

    def valuer_for(self, engine, scorer):
        """What values the states: the policy's own verdicts, or the scorer given."""
        if self.valuer == "scorer":
            if scorer is None:
                raise ValueError("tot with valuer=scorer needs a scorer (e.g. --scorer judge, "
                                 "a PRM); valuer=self needs none")
            return scorer
        if scorer is not None:
            raise ValueError("tot with valuer=self values states with the policy itself and "
                             "uses no scorer: drop the scorer or set valuer=scorer")
        return ValuePromptScorer(engine, self.separator, self.value_samples, self.seed)


# ---- depth-first search -----------------------------------------------------------------


@dataclass(eq=False)
class Walk:
    """One problem's depth-first walk: its tree, the states waiting (best on top), the
    states expanded in order, and each grown node's mark (kept: passed the threshold)."""

    tree: Tree
    waiting: list[Node] = field(default_factory=list)
    order: list[int] = field(default_factory=list)
    kept: dict[int, bool] = field(default_factory=dict)
    last: int = 0  # the state visited last (expanded, or a dead end)
    backtracks: int = 0
    found: Node | None = None

    def __post_init__(self) -> None:
        self.waiting = [self.tree.root]

    def next_state(self, max_steps: int) -> Node | None:
        """The next state to expand. A final one (it passed the threshold to be waiting)
        ends the walk (`found`); one at max_steps without an answer is a dead end. Moving
        to a state that is not a child of the last one visited is a backtrack. None when
        the walk has ended or nothing is left."""
        while self.waiting and self.found is None:
            node = self.waiting.pop()
            if node.parent is not None and node.parent.id != self.last:
                self.backtracks += 1
            self.last = node.id
            if node.final:
                self.found = node
            elif node.depth < max_steps:
                return node
        return None


def run_dfs(problems, engine, valuer, extract, render, config: TreeOfThoughts) -> list:
    walks = [Walk(t) for t in start(problems, engine, render, config, extract, config.name)]
    for _ in range(config.max_expansions):
        jobs, owners = [], []
        for w in walks:
            if w.tree.stopped:
                continue
            node = w.next_state(config.max_steps)
            if node is None:
                w.tree.stopped = "answered" if w.found else "exhausted"
            elif not w.tree.reserve(node, config.n, config.step_max_tokens):
                w.waiting.append(node)
                w.tree.stopped = "budget"
            else:
                w.order.append(node.id)
                jobs.append(Expansion(w.tree, node, config.n, f"e{len(w.order)}:n{node.id}"))
                owners.append(w)
        if not jobs:
            break
        grown = expand(engine, jobs, config.name)
        new = [(job.tree, c) for job, kids in zip(jobs, grown, strict=True) for c in kids]
        score_steps(engine, valuer, new, 0, config.name)
        for w, job, kids in zip(owners, jobs, grown, strict=True):
            job.node.state = None  # its children carry the prefix's cache now
            ranked = sorted(kids, key=lambda c: (-c.value, c.id))
            for c in ranked:
                w.kept[c.id] = c.value >= config.value_threshold
                if not w.kept[c.id]:
                    c.state = None  # pruned: never grown
            w.waiting += [c for c in reversed(ranked) if w.kept[c.id]]
    for w in walks:
        if not w.tree.stopped:  # out of expansions: a final step waiting on top still counts
            if w.waiting and w.waiting[-1].final:
                w.next_state(config.max_steps)
            w.tree.stopped = "answered" if w.found else "max_expansions"
    return [_dfs_result(w) for w in walks]


def _dfs_result(walk: Walk):
    """The answer: the final step the walk found; else the most valuable final step grown
    (pruned or not); else the deepest state grown, the most valuable of those (ties: the
    earlier node)."""
    tree = walk.tree
    grown = tree.nodes[1:]
    finals = [n for n in grown if n.final]
    best = walk.found
    if best is None and finals:
        best = min(finals, key=lambda n: (-n.value, n.id))
    elif best is None and grown:
        best = min(grown, key=lambda n: (-n.depth, -n.value, n.id))
    pool = finals if best is None or best.final else [*finals, best]
    candidates = tuple(candidate(tree, n) for n in pool)
    answer = tree.extract(best.response(tree.config.separator)) if best else None
    for n in tree.nodes:
        n.state = None
    order = {node_id: i for i, node_id in enumerate(walk.order)}
    extras = {n.id: {"kept": walk.kept.get(n.id), "expanded": order.get(n.id)}
              for n in tree.nodes}
    return finish(tree, answer, candidates, best, extras, dfs_order=walk.order,
                  backtracks=walk.backtracks)
