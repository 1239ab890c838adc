"""Confidence measures (DeepConf) and the adaptive-SC posterior: pure functions, exact values."""

import math
import random

import numpy as np
import pytest

from ponder.strategies.adaptive_sc import leader_probability
from ponder.strategies.confidence import (
    GroupWindow,
    group_confidences,
    keep_top,
    percentile,
    token_confidence,
    token_confidences,
    trace_score,
)


def test_token_confidence_is_minus_the_mean_top_k_logprob():
    assert token_confidence({5: -0.5, 7: -1.5, 9: -4.0}) == pytest.approx(2.0)
    assert token_confidence([-1.0, -3.0]) == 2.0
    # A peaked distribution (improbable runners-up) is more confident than a flat one.
    assert token_confidence([-0.01, -9.0, -9.5]) > token_confidence([-1.0, -1.1, -1.2])
    assert math.isfinite(token_confidence([-0.1, float("-inf")]))
    with pytest.raises(ValueError, match="top-k"):
        token_confidence({})
    with pytest.raises(ValueError, match="logprobs=k"):
        token_confidences(None)


def test_group_confidences_are_sliding_window_means():
    assert group_confidences([1.0, 2.0, 3.0, 4.0], 2) == [1.5, 2.5, 3.5]
    assert group_confidences([1.0, 2.0, 3.0, 4.0], 4) == [2.5]
    assert group_confidences([1.0, 3.0], 5) == [2.0]  # shorter than the window: one group
    assert group_confidences([], 3) == []
    with pytest.raises(ValueError, match="window"):
        group_confidences([1.0], 0)


def test_group_window_matches_the_offline_groups_exactly():
    rng = random.Random(0)
    values = [rng.uniform(0.5, 20.0) for _ in range(300)]
    for window in (1, 7, 64):
        monitor = GroupWindow(window)
        online = [monitor.push(v) for v in values]
        assert online[: window - 1] == [None] * (window - 1)
        assert online[window - 1:] == group_confidences(values, window)  # bit for bit


def test_trace_scores():
    confs = [5.0, 5.0, 1.0, 1.0, 5.0, 5.0, 9.0, 9.0]
    assert trace_score(confs, "mean") == 5.0
    assert trace_score(confs, "lowest_group", window=2) == 1.0
    assert trace_score(confs, "lowest_group", window=100) == 5.0  # one group: the mean
    assert trace_score(confs, "tail", tail=2) == 9.0
    # 7 groups of 2; the bottom 30% is the lowest 2: (1+1)/2 and (5+1)/2 -> mean 2.0
    assert trace_score(confs, "bottom10", window=2, bottom=0.3) == 2.0
    assert trace_score(confs, "bottom10", window=2) == 1.0  # at least one group
    assert trace_score([], "mean") == -math.inf
    with pytest.raises(ValueError, match="unknown confidence score"):
        trace_score(confs, "max")


def test_percentile_and_keep_top_follow_deepconf_filtering():
    scores = [float(s) for s in range(1, 11)]
    assert percentile(scores, 90) == float(np.percentile(scores, 90)) == pytest.approx(9.1)
    assert keep_top(scores, 10) == [9]  # DeepConf-low: the top 10%
    assert keep_top(scores, 90) == list(range(1, 10))  # DeepConf-high: the top 90%
    assert keep_top(scores, 100) == list(range(10))
    assert keep_top([3.0, -math.inf, 3.0], 10) == [0, 2]  # ties kept; empty traces never
    with pytest.raises(ValueError, match="keep_percent"):
        keep_top(scores, 0)


def test_leader_probability_matches_the_closed_form_for_two_answers():
    # Two answers, no "other" slot: p1 ~ Beta(a, b) and, for integers a, b,
    # P(p1 > 1/2) = P(Binomial(a + b - 1, 1/2) < a).
    def exact(a, b):
        n = a + b - 1
        return sum(math.comb(n, k) for k in range(a)) / 2 ** n

    for counts in ([3, 1], [5, 2], [2, 2]):
        p = leader_probability(counts, prior=1.0, other_prior=0.0, draws=20000)
        assert p == pytest.approx(exact(counts[0] + 1, counts[1] + 1), abs=0.015)


def test_leader_probability_all_agree_and_edges():
    # Unanimous k votes vs the unseen-answer slot: Beta(k + 1, 1) > 1/2, i.e. 1 - 2^-(k+1).
    assert leader_probability([4]) == pytest.approx(1 - 0.5 ** 5, abs=0.01)
    assert leader_probability([4]) == leader_probability([4])  # a pure function of counts
    assert leader_probability([]) == 0.0
    assert leader_probability([3], other_prior=0.0) == 1.0
    assert leader_probability([6, 1]) > leader_probability([4, 3])
