"""Which of a task's problems to run: shuffled with a seed (or kept in file order), then
the first `limit`. load_task and CodeTask.load take these arguments alike."""

from __future__ import annotations

import random

from ponder.types import Problem


def check_limit(limit: object) -> None:
    """ValueError unless `limit` is a positive integer or None (checked before loading)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit (--limit) must be a whole number >= 1, or none for every "
                         f"problem; got {limit!r}")


def subset(problems: list[Problem], limit: int | None,
           shuffle_seed: int | None) -> list[Problem]:
    """`problems` shuffled in place with `shuffle_seed` (None: not shuffled), then the
    first `limit` of them (None: all)."""
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(problems)
    return problems[:limit] if limit is not None else problems
