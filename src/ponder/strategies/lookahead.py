"""Lookahead search (Snell et al., 2024, section 5): beam search whose candidate steps are
each rolled out k more steps greedily (temperature 0) before scoring, and keep the score of
the rollout's last step, so a step is judged by where it leads. The rollouts are discarded
(the kept step is re-expanded by sampling); each rollout step is one batched engine call
over every candidate of every problem, continuing from the candidate's KV state.
"""

from __future__ import annotations

from dataclasses import dataclass

from ponder.strategies.beam_search import BeamSearch


@dataclass(frozen=True)
class Lookahead(BeamSearch):
    lookahead: int = 2
    name: str = "lookahead"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lookahead < 1:
            raise ValueError("lookahead search needs lookahead >= 1 (0 is plain beam search)")
