"""Voting over extracted answers, shared by self-consistency and weighted best-of-N.

Answers are pooled by `normalize_answer` first, so "1/2", "\\frac{1}{2}" and "0.5" vote
together. Samples with no extractable answer do not vote.

Tie rule (deterministic): among answers with the same total, the one whose first vote came
earliest (lowest sample index) wins. The chosen answer is that first voter's own string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ponder.tasks.grade import normalize_answer


@dataclass(frozen=True)
class Tally:
    key: str  # the pooled (normalized) answer
    answer: str  # the first voter's answer as extracted
    votes: int
    weight: float
    first_index: int


def tally(answers: Sequence[str | None], weights: Sequence[float] | None = None) -> list[Tally]:
    """Group answers by their normalized form; order: most weight, then earliest first vote."""
    weights = list(weights) if weights is not None else [1.0] * len(answers)
    if len(weights) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(weights)} weights")
    groups: dict[str, list] = {}
    for i, (answer, w) in enumerate(zip(answers, weights, strict=True)):
        if answer is None:
            continue
        key = normalize_answer(answer) or answer.strip()
        if not key:
            continue
        if key not in groups:
            groups[key] = [answer, 0, 0.0, i]
        groups[key][1] += 1
        groups[key][2] += float(w)
    tallies = [Tally(k, a, n, w, i) for k, (a, n, w, i) in groups.items()]
    return sorted(tallies, key=lambda t: (-t.weight, t.first_index))


def majority(answers: Sequence[str | None], weights: Sequence[float] | None = None) -> str | None:
    """The winning answer (see the module's tie rule), or None when nobody answered."""
    ranked = tally(answers, weights)
    return ranked[0].answer if ranked else None


def vote(answers: Sequence[str | None],
         weights: Sequence[float] | None = None) -> tuple[str | None, int | None]:
    """The winning answer and the index of its first voter (the candidate it came from), or
    (None, None) when nobody answered."""
    ranked = tally(answers, weights)
    return (ranked[0].answer, ranked[0].first_index) if ranked else (None, None)


def vote_table(answers: Sequence[str | None], weights: Sequence[float] | None = None) -> list[dict]:
    return [{"answer": t.answer, "votes": t.votes, "weight": round(t.weight, 6)}
            for t in tally(answers, weights)]
