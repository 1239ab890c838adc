"""The beam loop beam search, lookahead and DVTS share.

Per problem: `groups` subtrees, each keeping its top `keep` candidates per step and growing
each kept beam `width` ways (the root: `first_width` per subtree). A kept final step
completes its beam; a problem stops when groups x keep beams have completed, when none is
live, at max_steps, or when the budget has no room for another expansion. Each step is one
engine call for every beam of every problem and one scorer call for every new step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ponder.strategies.search.ops import (
    Expansion,
    expand,
    last_score,
    path_value,
    rate,
    rollout_steps,
)
from ponder.strategies.search.results import candidate, finish
from ponder.strategies.search.tree import Node, SearchConfig, Tree, join_steps, start


@dataclass
class Mark:
    """The beam loop's record of one node: its subtree (DVTS), whether it was kept, and the
    greedy steps it was scored through (lookahead; None without lookahead)."""

    group: int
    kept: bool | None = None
    lookahead: list[str] | None = None

    def trace(self) -> dict:
        out = {"kept": self.kept, "group": self.group}
        if self.lookahead is not None:
            out["lookahead"] = self.lookahead
        return out


@dataclass(eq=False)
class Beams:
    """One problem's beam search: its tree, live and completed beams, and every node's mark."""

    tree: Tree
    live: list[Node] = field(default_factory=list)
    completed: list[Node] = field(default_factory=list)
    marks: dict[int, Mark] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.live = self.live or [self.tree.root]
        self.marks.setdefault(self.tree.root.id, Mark(0))


def run_beams(problems, engine, scorer, extract, render, config: SearchConfig, name: str, *,
              groups: int, keep: int, width: int, first_width: int,
              lookahead: int = 0) -> list:
    """Run the beam loop (see the module) over every problem; one Result each."""
    if scorer is None:
        raise ValueError(f"{name} needs a scorer (e.g. --scorer judge, or a PRM)")
    searches = [Beams(t) for t in start(problems, engine, render, config, extract, name)]
    owner = {id(b.tree): b for b in searches}
    for depth in range(1, config.max_steps + 1):
        jobs, assign = [], []
        for b in searches:
            if b.tree.stopped:
                continue
            planned = plan(b, depth, groups, width, first_width)
            if not planned:
                b.tree.stopped = "budget"
            for job, assignment in planned:
                jobs.append(job)
                assign.append(assignment)
        if not jobs:
            break
        new = []
        for job, kids, assignment in zip(jobs, expand(engine, jobs, name), assign, strict=True):
            job.node.state = None  # its children carry the prefix's cache now
            for c, group in zip(kids, assignment, strict=True):
                owner[id(job.tree)].marks[c.id] = Mark(group)
                new.append((job.tree, c))
        rolled = score_steps(engine, scorer, new, lookahead, name)
        if lookahead:
            for (tree, c), texts in zip(new, rolled, strict=True):
                owner[id(tree)].marks[c.id].lookahead = texts
        for b in searches:
            if b.tree.stopped:
                continue
            b.live = select([c for t, c in new if t is b.tree], b.marks, keep, b.completed)
            if len(b.completed) >= groups * keep or not b.live:
                b.tree.stopped = "answered"
            elif depth == config.max_steps:
                b.tree.stopped = "max_steps"
    return [_result(b) for b in searches]


def plan(beams: Beams, depth: int, groups: int, width: int,
         first_width: int) -> list[tuple[Expansion, list[int]]]:
    """This step's expansions for one problem, best beams first while the budget allows,
    each with the subtree of every child it will grow."""
    tree = beams.tree
    if depth == 1:
        n = groups * first_width
        if not tree.reserve(tree.root, n, tree.config.step_max_tokens):
            return []
        return [(Expansion(tree, tree.root, n, "d1"), [j // first_width for j in range(n)])]
    out = []
    for beam in sorted(beams.live, key=lambda b: (-b.value, b.id)):
        if tree.reserve(beam, width, tree.config.step_max_tokens):
            group = beams.marks[beam.id].group
            out.append((Expansion(tree, beam, width, f"d{depth}:n{beam.id}"), [group] * width))
    return out


def score_steps(engine, scorer, new: list[tuple[Tree, Node]], lookahead: int,
                name: str) -> list[list[str]]:
    """Score every new step (after a greedy lookahead of `lookahead` steps, if asked): its
    score and its path's value. Returns each step's lookahead texts."""
    extra_parts: list[list[tuple[str, str]]] = [[] for _ in new]
    states = [c.state for _, c in new]
    if lookahead:
        extra_parts, states = rollout_steps(engine, new, lookahead, name)
    jobs = []
    for (tree, c), parts, state in zip(new, extra_parts, states, strict=True):
        steps = [(n.text, n.finish) for n in c.path()] + parts
        jobs.append((tree, join_steps(steps, tree.config.separator), state))
    for (tree, c), r in zip(new, rate(scorer, engine, jobs), strict=True):
        c.score = last_score(r)
        c.value = path_value(c, tree.config.aggregation)
    return [[text for text, _ in parts] for parts in extra_parts]


def select(fresh: list[Node], marks: dict[int, Mark], keep: int,
           completed: list[Node]) -> list[Node]:
    """Keep each subtree's top `keep` new steps by value (ties: the earlier node); kept final
    steps complete their beams (appended to `completed`). Returns the live beams."""
    live = []
    for group in sorted({marks[c.id].group for c in fresh}):
        ranked = sorted((c for c in fresh if marks[c.id].group == group),
                        key=lambda c: (-c.value, c.id))
        for i, c in enumerate(ranked):
            kept = marks[c.id].kept = i < keep
            if not kept:
                c.state = None
            elif c.final:
                completed.append(c)
                c.state = None
            else:
                live.append(c)
    return live


def _result(beams: Beams):
    tree, completed = beams.tree, beams.completed
    live = [n for n in beams.live if n.parent is not None]  # the root: nothing was grown
    pool = completed or live
    best = min(pool, key=lambda n: (-n.value, n.id)) if pool else None
    candidates = tuple(candidate(tree, n) for n in [*completed, *live])
    answer = tree.extract(best.response(tree.config.separator)) if best else None
    for n in live:
        n.state = None
    extras = {n.id: beams.marks[n.id].trace() for n in tree.nodes}
    return finish(tree, answer, candidates, best, extras, completed=[n.id for n in completed])
