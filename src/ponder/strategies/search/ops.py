"""The costly operations of step search, each one batched call across problems:

- `expand`: one engine call grows every requested node of every problem, each continuing
  from its parent's state (KV reuse: only the parent's last token is re-fed, not the prefix);
- `rollout_steps` / `rollout_to_end`: greedy (or sampled) continuations for lookahead/MCTS;
- `rate`: one scorer call for every new node. Search needs only the newest step's score
  (ancestors keep theirs), so scorers with `score_last_step` (the judge) rate just that,
  continuing the policy's own states when the scorer shares the policy's engine.

Every request is reserved against its tree's budget first (Tree.reserve); usage goes to the
tree it was spent for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ponder.scorers.base import Rating, ScoreItem, StepScorer, aggregate
from ponder.strategies.base import problem_seed
from ponder.strategies.search.tree import Node, Tree
from ponder.types import GenerateRequest, SamplingParams, SequenceState


@dataclass(frozen=True)
class Expansion:
    """Grow `node` by `n` sampled steps (temperature: the search's unless given; 0 is greedy)."""

    tree: Tree
    node: Node
    n: int
    salt: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    stop: bool = True  # stop at the separator (False: to EOS, for MCTS rollouts)

    def request(self, name: str) -> GenerateRequest:
        c = self.tree.config
        temperature = c.temperature if self.temperature is None else self.temperature
        params = SamplingParams(
            n=self.n, temperature=temperature, top_p=c.top_p,
            max_tokens=self.max_tokens or c.step_max_tokens,
            stop=(c.separator,) if self.stop else (),
            seed=None if temperature == 0 else problem_seed(c.seed, self.tree.problem.id,
                                                            f"{name}:{self.salt}"))
        if self.node.parent is None:
            return GenerateRequest(self.tree.prompt, params, keep_state=True)
        return GenerateRequest(state=self.node.state, params=params, keep_state=True)


def generate(engine, jobs: Sequence[Expansion], name: str) -> list[list]:
    """One batched engine call for all jobs; returns each job's completions. Usage goes to
    each job's tree, and the budget reservations are released."""
    if not jobs:
        return []
    generations = engine.generate([job.request(name) for job in jobs])
    for tree in {id(j.tree): j.tree for j in jobs}.values():
        tree.planned = 0
    out = []
    for job, gen in zip(jobs, generations, strict=True):
        job.tree.spend(gen.usage)
        out.append(list(gen.completions))
    return out


def expand(engine, jobs: Sequence[Expansion], name: str) -> list[list[Node]]:
    """Grow every job's node (one engine call); returns each job's new children."""
    return [[job.tree.add(job.node, c) for c in completions]
            for job, completions in zip(jobs, generate(engine, jobs, name), strict=True)]


def rollout_steps(engine, targets: Sequence[tuple[Tree, Node]], steps: int, name: str):
    """Up to `steps` greedy steps after each target node, batched step by step across all
    targets (lookahead). Stops early at a final step or when the budget has no room.
    Returns per target: the rollout's (text, finish) steps and its last state."""
    parts: list[list[tuple[str, str]]] = [[] for _ in targets]
    states = [node.state for _, node in targets]
    open_ = [not node.final for _, node in targets]
    for _ in range(steps):
        jobs, which = [], []
        for i, (tree, node) in enumerate(targets):
            if open_[i] and tree.reserve(_at(node, states[i]), 1, tree.config.step_max_tokens):
                jobs.append(Expansion(tree, _at(node, states[i]), 1, temperature=0.0))
                which.append(i)
            else:
                open_[i] = False
        for i, [c] in zip(which, generate(engine, jobs, name), strict=True):
            tree = targets[i][0]
            parts[i].append((c.text, c.finish_reason))
            states[i] = c.state
            open_[i] = not tree.is_final(c)
    return parts, states


def rollout_to_end(engine, targets: Sequence[tuple[Tree, Node]], temperature: float,
                   name: str, salt: str = "") -> list:
    """One completion per target from its state to EOS (no step separator), capped at the
    steps left times step_max_tokens and at the budget's room; None where nothing fits."""
    jobs, which = [], []
    for i, (tree, node) in enumerate(targets):
        c = tree.config
        cap = min((c.max_steps - node.depth) * c.step_max_tokens, tree.room(node))
        if cap >= 1 and tree.reserve(node, 1, cap):
            jobs.append(Expansion(tree, node, 1, f"{salt}:n{node.id}", temperature=temperature,
                                  max_tokens=cap, stop=False))
            which.append(i)
    out: list = [None] * len(targets)
    for i, [c] in zip(which, generate(engine, jobs, name), strict=True):
        out[i] = c
    return out


def _at(node: Node, state: SequenceState | None) -> Node:
    """A stand-in node at `state` (a rollout position), for requests and budget checks."""
    if state is node.state:
        return node
    return Node(node.id, node.parent, node.depth, state=state)


def rate(scorer, engine, jobs: Sequence[tuple[Tree, str, SequenceState | None]],
         last_only: bool = True) -> list[Rating]:
    """One scorer call for (tree, response, state) jobs; usage goes to each tree.

    last_only: only the newest step's score is needed, so a scorer that can rate just that
    (score_last_step) does, reading the policy's states when it shares the policy's engine.
    """
    if not jobs:
        return []
    items = [ScoreItem(t.problem.question, t.prompt, response) for t, response, _ in jobs]
    if last_only and isinstance(scorer, StepScorer):
        same = scorer.engine is engine
        ratings = scorer.score_last_step(items, [s if same else None for _, _, s in jobs])
    else:
        ratings = scorer.score(items)
    for (tree, _, _), r in zip(jobs, ratings, strict=True):
        tree.spend(r.usage)
    return ratings


def last_score(rating: Rating) -> float:
    """The newest step's score (a process scorer), else the response's (an outcome one)."""
    return rating.step_scores[-1] if rating.step_scores else rating.score


def path_value(node: Node, how: str) -> float:
    """The path's step scores aggregated (min, prod, last, mean): what beams rank by."""
    return aggregate([n.score for n in node.path()], how)
