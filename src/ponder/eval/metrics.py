"""Metrics over sampled answers: pure functions, deterministic for a seed.

Per problem, with n samples (answers[i], correct[i], optional scores[i]):

    pass_at_k(n, c, k)        unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)
    maj_at_k(...)             majority vote over k samples
    weighted_maj_at_k(...)    vote where each sample adds its score to its answer
    best_of_k(...)            rm@k: the top-scored sample of the k
    accuracy(correct)         mean with a seeded bootstrap 95% CI, over problems

Rules shared by the voting metrics:

- Answers are pooled by an equivalence key (ponder.tasks.grade.normalize_answer by
  default), so "1/2", "\\frac{1}{2}" and "0.5" are one answer. A pooled answer is as
  correct as its earliest sample.
- A sample without an answer (None or "") abstains from a vote; if every sample abstains
  the vote is wrong. best_of_k still picks the top-scored sample, answer or not.
- Ties count as the fraction of tied candidates that are correct: the expected accuracy
  of breaking the tie uniformly at random, so no tie rule favours the order of samples.
- For k < n the metric is averaged over k-subsets of the n samples: all of them when
  there are at most `max_subsets`, otherwise `max_subsets` random ones drawn with `seed`.
  For k = n there is one subset, so the value is exact.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Key = Callable[[str], str]


@dataclass(frozen=True)
class AccuracyCI:
    """Mean accuracy over n problems and its bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float = 0.95


def accuracy(
    correct: Sequence[bool | float],
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> AccuracyCI:
    """Mean of per-problem correctness (bools or fractions in [0, 1]) with a percentile
    bootstrap interval: problems are resampled with replacement n_boot times."""
    values = np.asarray(correct, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("accuracy needs at least one problem's correctness")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    mean = float(values.mean())
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, values.size, size=(n_boot, values.size))
    means = values[picks].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return AccuracyCI(mean, float(low), float(high), int(values.size), confidence)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c of
    them correct) is correct; computed as a product so large n does not overflow."""
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=float)))


def maj_at_k(
    answers: Sequence[str | None],
    correct: Sequence[bool],
    k: int,
    *,
    key: Key | None = None,
    max_subsets: int = 1000,
    seed: int = 0,
) -> float:
    """Majority vote over k of the samples: expected correctness of the winning answer."""
    groups, group_correct = _pool(answers, correct, key)
    weights = (groups >= 0).astype(float)
    return _vote(groups, group_correct, weights, k, max_subsets, seed)


def weighted_maj_at_k(
    answers: Sequence[str | None],
    correct: Sequence[bool],
    scores: Sequence[float],
    k: int,
    *,
    key: Key | None = None,
    max_subsets: int = 1000,
    seed: int = 0,
) -> float:
    """Vote where each sample adds its score to its answer; the largest total wins."""
    groups, group_correct = _pool(answers, correct, key)
    weights = _scores(scores, len(groups))
    return _vote(groups, group_correct, weights, k, max_subsets, seed)


def best_of_k(
    correct: Sequence[bool],
    scores: Sequence[float],
    k: int,
    *,
    max_subsets: int = 1000,
    seed: int = 0,
) -> float:
    """rm@k: correctness of the top-scored sample among k (ties: fraction correct)."""
    ok = np.asarray(correct, dtype=float)
    weights = _scores(scores, len(ok))
    subsets = _subsets(len(ok), k, max_subsets, seed)
    s = weights[subsets]
    top = s == s.max(axis=1, keepdims=True)
    picked = (top * ok[subsets]).sum(axis=1) / top.sum(axis=1)
    return float(picked.mean())


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, plus n itself."""
    if n < 1:
        raise ValueError(f"need at least one sample, got n={n}")
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else [*ks, n]


def mean_pass_at_k(graded: Sequence[Sequence[Any]],
              ks: Sequence[int] | None = None) -> dict[str, float]:
    """Mean unbiased pass@k over problems (Chen et al., 2021), from each problem's n
    graded samples (booleans, or outcomes with a `passed` flag, as code grading gives);
    ks default to 1, 2, 4, ... up to the fewest n."""
    if not graded or any(len(samples) == 0 for samples in graded):
        raise ValueError("pass@k needs at least one problem, each with at least one sample")
    fewest = min(len(samples) for samples in graded)
    ks = list(default_ks(fewest) if ks is None else ks)
    if any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= fewest for k in ks):
        raise ValueError(f"every k must be an integer in [1, {fewest}] (the fewest samples), "
                         f"got {ks}")
    correct = [sum(bool(getattr(s, "passed", s)) for s in samples)
               for samples in graded]
    return {f"pass@{k}": sum(pass_at_k(len(samples), c, k)
                             for samples, c in zip(graded, correct, strict=True)) / len(graded)
            for k in ks}


@dataclass(frozen=True)
class Samples:
    """One problem's samples: extracted answers, their correctness, optional scores."""

    answers: Sequence[str | None]
    correct: Sequence[bool]
    scores: Sequence[float] | None = None

    def __post_init__(self) -> None:
        if len(self.answers) != len(self.correct) or not self.answers:
            raise ValueError(
                f"need as many answers as correctness flags (at least one), got "
                f"{len(self.answers)} and {len(self.correct)}"
            )
        if self.scores is not None and len(self.scores) != len(self.answers):
            raise ValueError(f"got {len(self.scores)} scores for {len(self.answers)} answers")


def summarize(
    problems: Sequence[Samples],
    ks: Sequence[int] | None = None,
    *,
    key: Key | None = None,
    max_subsets: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Dataset metrics, each the mean over problems: "acc@1" (mean per-sample accuracy),
    "pass@k", "maj@k" and, when every problem has scores, "rm@k" and "weighted@k".
    ks defaults to default_ks(smallest n); every k must be <= every problem's n."""
    if not problems:
        raise ValueError("no problems to summarize")
    smallest = min(len(p.answers) for p in problems)
    ks = list(default_ks(smallest) if ks is None else ks)
    bad = [k for k in ks if not 1 <= k <= smallest]
    if bad:
        raise ValueError(
            f"k must be in [1, {smallest}] (the fewest samples of a problem), got {bad}"
        )
    scored = all(p.scores is not None for p in problems)
    out: dict[str, list[float]] = {"acc@1": []}
    for p in problems:
        out["acc@1"].append(float(np.mean(np.asarray(p.correct, dtype=float))))
        n, c = len(p.correct), int(sum(bool(x) for x in p.correct))
        for k in ks:
            out.setdefault(f"pass@{k}", []).append(pass_at_k(n, c, k))
        for k in ks:
            out.setdefault(f"maj@{k}", []).append(
                maj_at_k(p.answers, p.correct, k, key=key, max_subsets=max_subsets, seed=seed)
            )
        if scored:
            for k in ks:
                out.setdefault(f"rm@{k}", []).append(
                    best_of_k(p.correct, p.scores, k, max_subsets=max_subsets, seed=seed)  # type: ignore[arg-type]
                )
            for k in ks:
                out.setdefault(f"weighted@{k}", []).append(
                    weighted_maj_at_k(
                        p.answers,
                        p.correct,
                        p.scores,
                        k,  # type: ignore[arg-type]
                        key=key,
                        max_subsets=max_subsets,
                        seed=seed,
                    )  # fmt: skip
                )
    return {name: float(np.mean(values)) for name, values in out.items()}


# --------------------------------------------------------------------------- helpers


def _pool(
    answers: Sequence[str | None], correct: Sequence[bool], key: Key | None
) -> tuple[np.ndarray, np.ndarray]:
    """Group index per sample (-1: abstains) and each group's correctness (its earliest
    sample's)."""
    if len(answers) != len(correct):
        raise ValueError(f"got {len(answers)} answers but {len(correct)} correctness flags")
    if not answers:
        raise ValueError("need at least one sample")
    if key is None:
        from ponder.tasks.grade import normalize_answer as key
    index: dict[str, int] = {}
    group_correct: list[float] = []
    groups = np.full(len(answers), -1, dtype=np.int64)
    for i, (answer, ok) in enumerate(zip(answers, correct, strict=True)):
        if answer is None:
            continue
        name = key(answer)
        if not name:
            continue
        if name not in index:
            index[name] = len(group_correct)
            group_correct.append(float(bool(ok)))
        groups[i] = index[name]
    return groups, np.asarray(group_correct, dtype=float)


def _scores(scores: Sequence[float], n: int) -> np.ndarray:
    values = np.asarray(scores, dtype=float)
    if values.shape != (n,):
        raise ValueError(f"need one score per sample ({n}), got {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("scores must be finite numbers")
    return values


def _subsets(n: int, k: int, max_subsets: int, seed: int) -> np.ndarray:
    """Index rows of k-subsets: all C(n, k) when few enough (exact), else seeded samples."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}] (the number of samples), got {k!r}")
    if max_subsets < 1:
        raise ValueError(f"max_subsets must be >= 1, got {max_subsets}")
    if math.comb(n, k) <= max_subsets:
        return np.array(list(itertools.combinations(range(n), k)), dtype=np.int64).reshape(-1, k)
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((max_subsets, n)), axis=1)[:, :k]


def _vote(
    groups: np.ndarray,
    group_correct: np.ndarray,
    weights: np.ndarray,
    k: int,
    max_subsets: int,
    seed: int,
) -> float:
    subsets = _subsets(len(groups), k, max_subsets, seed)
    n_groups = len(group_correct)
    if n_groups == 0:
        return 0.0  # nobody answered
    g = groups[subsets]  # (S, k)
    rows = np.broadcast_to(np.arange(len(subsets))[:, None], g.shape)
    voting = g >= 0
    totals = np.zeros((len(subsets), n_groups))
    members = np.zeros((len(subsets), n_groups))
    np.add.at(totals, (rows[voting], g[voting]), weights[subsets][voting])
    np.add.at(members, (rows[voting], g[voting]), 1.0)
    present = members > 0
    totals = np.where(present, totals, -np.inf)
    best = totals.max(axis=1, keepdims=True)
    # Sums of float scores in different orders differ in the last bits: a tie is a tie.
    slack = np.where(np.isfinite(best), 1e-9 * np.maximum(1.0, np.abs(best)), 0.0)
    winners = present & (totals >= best - slack)
    n_winners = winners.sum(axis=1)
    picked = np.divide(
        (winners * group_correct).sum(axis=1),
        n_winners,
        out=np.zeros(len(subsets)),
        where=n_winners > 0,
    )
    return float(picked.mean())
