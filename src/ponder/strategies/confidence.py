"""Token, group and trace confidence from top-k log-probabilities (DeepConf; Fu et al., 2025).

Token confidence C_i = -(1/k) * sum_j log P_i(j) over the model's top-k tokens at step i: large
when the model is sure (its runners-up are improbable), small when it hesitates. A group
confidence is the mean of C over a sliding window of tokens. A trace is scored by its mean
confidence, its lowest group, the mean of its bottom 10% of groups, or the mean of its tail.
Pure functions over floats; `GroupWindow` is the same sliding mean, one token at a time.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np

SCORES = ("mean", "lowest_group", "bottom10", "tail")

# A masked token has log-probability -inf; clamp it so one step cannot make a trace's
# confidence infinite (a log-probability of -100 is already "impossible" in practice).
LOGPROB_FLOOR = -100.0


def token_confidence(top_logprobs: Mapping[int, float] | Sequence[float]) -> float:
    """-mean of the top-k log-probabilities at one step (a {token_id: logprob} or a list)."""
    values = list(top_logprobs.values()) if isinstance(top_logprobs, Mapping) else list(top_logprobs)
    if not values:
        raise ValueError("token confidence needs the step's top-k log-probabilities "
                         "(sample with SamplingParams(logprobs=k), k >= 1)")
    return -sum(max(v, LOGPROB_FLOOR) for v in values) / len(values)


def token_confidences(steps: Sequence[Mapping[int, float] | Sequence[float]] | None) -> list[float]:
    """Per-token confidences of a trace from its per-step top-k log-probabilities."""
    if steps is None:
        raise ValueError("the completion has no top-k log-probabilities: sample with "
                         "SamplingParams(logprobs=k) on an engine with top_logprobs")
    return [token_confidence(s) for s in steps]


def group_confidences(confidences: Sequence[float], window: int) -> list[float]:
    """Means over every full window of `window` consecutive tokens, in order.

    A trace shorter than the window is one group: the mean of all its tokens. Computed from
    running sums in sequence order, exactly as GroupWindow does, so the two agree to the bit.
    """
    _check_window(window)
    values = np.asarray(confidences, dtype=float)
    if values.size == 0:
        return []
    prefix = np.concatenate([[0.0], np.cumsum(values)])
    if values.size < window:
        return [float(prefix[-1] / values.size)]
    return ((prefix[window:] - prefix[:-window]) / window).tolist()


def trace_score(confidences: Sequence[float], method: str = "lowest_group", window: int = 64,
                tail: int = 2048, bottom: float = 0.1) -> float:
    """One number per trace; higher means more confident.

    mean: the mean token confidence. lowest_group: the lowest sliding-window mean.
    bottom10: the mean of the lowest `bottom` fraction of window means (at least one).
    tail: the mean over the last `tail` tokens (where the answer is).
    An empty trace scores -inf, so it is ranked last.
    """
    if method not in SCORES:
        raise ValueError(f"unknown confidence score {method!r}: choose one of {', '.join(SCORES)}")
    if len(confidences) == 0:
        return -math.inf
    if method == "mean":
        return float(np.mean(confidences))
    if method == "tail":
        if tail < 1:
            raise ValueError(f"tail must be >= 1 token, got {tail}")
        return float(np.mean(confidences[-tail:]))
    groups = group_confidences(confidences, window)
    if method == "lowest_group":
        return min(groups)
    if not 0 < bottom <= 1:
        raise ValueError(f"bottom must be a fraction in (0, 1], got {bottom}")
    lowest = sorted(groups)[: max(1, int(len(groups) * bottom))]
    return float(np.mean(lowest))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between order statistics."""
    if len(values) == 0:
        raise ValueError("a percentile needs at least one value")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    return float(np.percentile(np.asarray(values, dtype=float), q))


def keep_top(scores: Sequence[float], keep_percent: float) -> list[int]:
    """Indices of the traces in the top `keep_percent`% by score: those at or above the
    (100 - keep_percent)-th percentile, as DeepConf filters (ties may keep a few more)."""
    if not 0 < keep_percent <= 100:
        raise ValueError(f"keep_percent must be in (0, 100], got {keep_percent}")
    if len(scores) == 0:
        return []
    finite = [s for s in scores if math.isfinite(s)]
    if not finite:
        return []
    cut = percentile(finite, 100 - keep_percent)
    return [i for i, s in enumerate(scores) if math.isfinite(s) and s >= cut]


class GroupWindow:
    """The sliding-window mean of token confidences, one token at a time (online stopping).

    push() returns the mean of the last `window` confidences once that many were pushed,
    else None. Kept as running sums so the values equal group_confidences' exactly.
    """

    def __init__(self, window: int):
        _check_window(window)
        self.window = window
        self.total = 0.0
        self.prefix: deque[float] = deque([0.0], maxlen=window + 1)

    def push(self, confidence: float) -> float | None:
        self.total += confidence
        self.prefix.append(self.total)
        if len(self.prefix) <= self.window:
            return None
        return (self.prefix[-1] - self.prefix[0]) / self.window


def _check_window(window: int) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an integer >= 1 token, got {window!r}")
