"""A step search's answer: candidates, the trace of every node, and the Result.

The trace format is shared by every search (the HTML report and tests read it): one entry
per node with the keys of `node_trace`, plus what the search adds per node (MCTS: visits,
q, rollout, rollout_tokens, return; lookahead: its rollout steps), the path answered from
(`chosen_path`, node ids) and why the search stopped (`stopped`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ponder.strategies.base import result
from ponder.strategies.search.tree import Node, Tree
from ponder.types import Candidate


def candidate(tree: Tree, node: Node, extra: str = "", score: float | None = None,
              extra_tokens: int = 0) -> Candidate:
    """The solution ending at `node` (plus `extra`, e.g. an MCTS rollout) as a Candidate."""
    text = node.response(tree.config.separator) + extra
    return Candidate(text=text, answer=tree.extract(text),
                     score=node.value if score is None else score,
                     tokens=node.path_tokens() + extra_tokens,
                     meta={"node": node.id, "final": node.final})


def node_trace(node: Node, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One node's trace entry. "kept" and "group" are the beam loop's (it passes them in
    `extra`); every entry carries them, None and 0 elsewhere, so one reader serves all."""
    out = {"id": node.id, "parent": node.parent.id if node.parent else None,
           "depth": node.depth, "text": node.text, "tokens": node.tokens,
           "finish": node.finish, "final": node.final, "score": node.score,
           "value": node.value, "kept": None, "group": 0}
    return out | dict(extra or {})


def finish(tree: Tree, answer: str | None, candidates: tuple[Candidate, ...],
           chosen: Node | None, extras: Mapping[int, Mapping[str, Any]] | None = None,
           **trace):
    """The Result: `chosen` is the candidate ending at the chosen node, and the trace holds
    the whole tree (each node's entry plus `extras[node.id]`, the search's own keys), the
    path answered from (`chosen_path`, node ids) and why it stopped."""
    extras = extras or {}
    index = next((i for i, c in enumerate(candidates)
                  if chosen is not None and c.meta["node"] == chosen.id), None)
    return result(tree.problem, answer, candidates, tree.usage, chosen=index,
                  nodes=[node_trace(n, extras.get(n.id)) for n in tree.nodes],
                  chosen_path=[n.id for n in chosen.path()] if chosen else [],
                  stopped=tree.stopped, **trace)
