"""The sequential Monte Carlo core shared by the particle methods: `smc` (p^alpha, Power-SMC),
`particle_filter` and `particle_gibbs` (a reward model's potential over reasoning steps).

A Population holds N particles (whatever a method grows: a token block's state, a search
node) and their log-weights. A method extends its live particles one step, adds each one's
incremental log-weight (the potential's change), and calls `step_done`, which records the step
and resamples when the effective sample size falls below `threshold` * N. A resampled copy is
a fork of its parent that shares the parent's KV state (the engine continues from it without
re-reading the prefix), so copies cost nothing until they generate.

Resampling schemes (each particle's expected number of copies is N times its weight, so all
three are unbiased; they differ in variance, multinomial having the most):
- multinomial: N independent draws from the weights;
- systematic: one uniform u, points (u + k) / N;
- stratified: one uniform per stratum, points (k + u_k) / N.
After resampling every weight is the mean of the old ones, so the population's evidence
estimate (the mean weight) is unchanged.

Conditional resampling (particle Gibbs): particle `keep` is the reference trajectory and keeps
itself; the other N - 1 draw their parents multinomially from all N (the reference included).
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

RESAMPLING = ("multinomial", "systematic", "stratified")

T = TypeVar("T")


def logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def normalize(log_weights: Sequence[float]) -> list[float]:
    norm = logsumexp(log_weights)
    if norm == -math.inf:  # every particle has weight 0: none is preferred
        return [1.0 / len(log_weights)] * len(log_weights)
    return [math.exp(w - norm) for w in log_weights]


def effective_sample_size(log_weights: Sequence[float]) -> float:
    return 1.0 / sum(w * w for w in normalize(log_weights))


def check_scheme(scheme: str) -> None:
    if scheme not in RESAMPLING:
        raise ValueError(f"unknown resampling scheme {scheme!r}; use one of {RESAMPLING}")


def resample(weights: Sequence[float], rng: random.Random, scheme: str) -> list[int]:
    """N ancestor indices drawn in proportion to the (normalized) weights."""
    check_scheme(scheme)
    n = len(weights)
    if scheme == "multinomial":
        cdf = _cdf(weights)
        return [min(bisect.bisect_right(cdf, rng.random() * cdf[-1]), n - 1) for _ in range(n)]
    if scheme == "systematic":
        start = rng.random() / n
        points = [start + k / n for k in range(n)]
    else:
        points = [(k + rng.random()) / n for k in range(n)]
    return _walk(points, weights)


def conditional_resample(weights: Sequence[float], rng: random.Random, keep: int) -> list[int]:
    """Ancestors with particle `keep` fixed to itself and the others multinomial."""
    cdf = _cdf(weights)
    n = len(weights)
    return [keep if i == keep else min(bisect.bisect_right(cdf, rng.random() * cdf[-1]), n - 1)
            for i in range(n)]


def _cdf(weights: Sequence[float]) -> list[float]:
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


def _walk(points: Sequence[float], weights: Sequence[float]) -> list[int]:
    """The index whose CDF interval holds each (increasing) point."""
    picks, cumulative, i, n = [], weights[0], 0, len(weights)
    for point in points:
        while point > cumulative and i < n - 1:
            i += 1
            cumulative += weights[i]
        picks.append(i)
    return picks


@dataclass(eq=False)
class Population(Generic[T]):
    """N particles and their log-weights; `fork` copies a particle for a resampled child."""

    particles: list[T]
    rng: random.Random
    fork: Callable[[T], T] = lambda particle: particle
    scheme: str = "systematic"
    threshold: float = 0.5
    log_weights: list[float] = field(default_factory=list)
    resamples: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_scheme(self.scheme)
        if not self.log_weights:
            self.log_weights = [0.0] * len(self.particles)

    def __len__(self) -> int:
        return len(self.particles)

    def weights(self) -> list[float]:
        return normalize(self.log_weights)

    def ess(self) -> float:
        return effective_sample_size(self.log_weights)

    def step_done(self, may_resample: bool = True, reference: int | None = None) -> float:
        """Record the step (weights, ESS, ancestors if resampled) and resample when the ESS
        is below threshold * N; returns the ESS before resampling."""
        ess = self.ess()
        record: dict[str, Any] = {"ess": round(ess, 3),
                                  "weights": [round(w, 4) for w in self.weights()],
                                  "ancestors": None}
        if may_resample and ess < self.threshold * len(self):
            record["ancestors"] = self.resample(reference)
        self.history.append(record)
        return ess

    def resample(self, reference: int | None = None) -> list[int]:
        weights = self.weights()
        ancestors = (resample(weights, self.rng, self.scheme) if reference is None
                     else conditional_resample(weights, self.rng, reference))
        mean = logsumexp(self.log_weights) - math.log(len(self))
        old = self.particles
        self.particles = [old[a] if i == reference else self.fork(old[a])
                          for i, a in enumerate(ancestors)]
        self.log_weights = [mean] * len(self)
        self.resamples += 1
        return ancestors
