import itertools
import math

import numpy as np
import pytest

from ponder.eval.metrics import (
    AccuracyCI,
    Samples,
    accuracy,
    best_of_k,
    default_ks,
    maj_at_k,
    pass_at_k,
    summarize,
    weighted_maj_at_k,
)

# ----------------------------------------------------------------- pass@k


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
        (5, 2, 1, 2 / 5),
        (5, 2, 2, 1 - (3 * 2) / (5 * 4)),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 2, 4, 1.0),  # fewer than 4 wrong samples: any 4 contain a right one
        (10, 0, 10, 0.0),
        (10, 10, 3, 1.0),
        (4, 1, 4, 1.0),
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


@pytest.mark.parametrize("n", [1, 3, 6, 9])
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        ok = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(ok, k))
            brute = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute)


def test_pass_at_k_is_stable_for_large_n():
    value = pass_at_k(10_000, 3, 100)
    exact = 1 - math.comb(9997, 100) / math.comb(10_000, 100)
    assert value == pytest.approx(exact, rel=1e-9)
    assert 0 < pass_at_k(100_000, 1, 1) < 1e-4


@pytest.mark.parametrize("args", [(3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1), (2.5, 1, 1)])
def test_pass_at_k_bad_arguments(args):
    with pytest.raises(ValueError):
        pass_at_k(*args)


# ----------------------------------------------------------------- maj@k


def test_maj_at_n_is_exact_majority():
    assert maj_at_k(["3", "3", "4"], [True, True, False], 3) == 1.0
    assert maj_at_k(["3", "4", "4"], [True, False, False], 3) == 0.0


def test_maj_ties_count_the_fraction_of_tied_answers_that_are_correct():
    assert maj_at_k(["3", "4"], [True, False], 2) == 0.5
    assert maj_at_k(["3", "4", "5"], [True, False, False], 3) == pytest.approx(1 / 3)
    assert maj_at_k(["3", "4", "4", "3", "5"], [True, False, False, True, False], 5) == 0.5
    # tie order must not matter
    assert maj_at_k(["4", "3"], [False, True], 2) == 0.5


def test_maj_pools_equivalent_answers():
    answers = ["\\frac{1}{2}", "0.5", "1/3", "0.25", "1/3"]
    correct = [True, True, False, False, False]
    # Without pooling 1/3 (2 votes) wins; pooled, 1/2 has 2 votes and ties with 1/3.
    assert maj_at_k(answers, correct, 5, key=lambda a: a) == 0.0
    assert maj_at_k(answers, correct, 5) == 0.5
    assert maj_at_k(["1/2", "0.5", "1/3"], [True, True, False], 3) == 1.0


def test_maj_abstentions():
    assert maj_at_k([None, None, "7"], [False, False, True], 3) == 1.0
    assert maj_at_k([None, None], [False, False], 2) == 0.0
    assert maj_at_k(["", "5"], [False, False], 2) == 0.0
    # k=1 over [None, "7"]: half the subsets abstain (wrong), half answer 7 (right)
    assert maj_at_k([None, "7"], [False, True], 1) == 0.5


def test_maj_at_k_averages_all_subsets_when_few():
    answers = ["1", "1", "2", "3"]
    correct = [True, True, False, False]
    # k=2, all 6 pairs by hand: (0,1):1  (0,2):.5  (0,3):.5  (1,2):.5  (1,3):.5  (2,3):0
    assert maj_at_k(answers, correct, 2) == pytest.approx(0.5)
    # k=1 equals the per-sample accuracy
    assert maj_at_k(answers, correct, 1) == pytest.approx(0.5)
    # k=3: (0,1,2):1 (0,1,3):1 (0,2,3):1/3 (1,2,3):1/3 -> (2 + 2/3)/4
    assert maj_at_k(answers, correct, 3) == pytest.approx((2 + 2 / 3) / 4)


def test_maj_at_k_sampled_subsets_are_seeded_and_close_to_exact():
    rng = np.random.default_rng(1)
    answers = [str(x) for x in rng.integers(0, 4, size=24)]
    correct = [a == "0" for a in answers]
    exact = maj_at_k(answers, correct, 5, max_subsets=10**6)  # C(24,5)=42504: enumerated
    a = maj_at_k(answers, correct, 5, max_subsets=2000, seed=3)
    b = maj_at_k(answers, correct, 5, max_subsets=2000, seed=3)
    c = maj_at_k(answers, correct, 5, max_subsets=2000, seed=4)
    assert a == b
    assert a != c
    assert abs(a - exact) < 0.05 and abs(c - exact) < 0.05


def test_maj_bad_k():
    with pytest.raises(ValueError, match="k must be"):
        maj_at_k(["1", "2"], [True, False], 3)
    with pytest.raises(ValueError, match="k must be"):
        maj_at_k(["1", "2"], [True, False], 0)
    with pytest.raises(ValueError):
        maj_at_k(["1"], [True, False], 1)


# ----------------------------------------------------------------- weighted and best-of


def test_weighted_vote_sums_scores():
    answers = ["a", "b", "b"]
    correct = [True, False, False]
    assert weighted_maj_at_k(answers, correct, [0.9, 0.4, 0.4], 3) == 1.0  # .9 > .8
    assert weighted_maj_at_k(answers, correct, [0.7, 0.4, 0.4], 3) == 0.0  # .7 < .8
    assert weighted_maj_at_k(answers, correct, [0.8, 0.4, 0.4], 3) == 0.5  # tie
    # float sums in another order still tie: 0.1 + 0.2 vs 0.3
    assert weighted_maj_at_k(["a", "a", "b"], [True, True, False], [0.1, 0.2, 0.3], 3) == 0.5


def test_weighted_vote_with_negative_scores():
    # log-probabilities: an answer nobody gave (total 0) must not win
    answers = ["a", "b", "b"]
    correct = [False, True, True]
    assert weighted_maj_at_k(answers, correct, [-5.0, -1.0, -1.0], 3) == 1.0
    assert weighted_maj_at_k(answers, correct, [-1.0, -3.0, -3.0], 3) == 0.0


def test_best_of_k():
    correct = [True, False, True]
    assert best_of_k(correct, [0.1, 0.9, 0.2], 3) == 0.0
    assert best_of_k(correct, [0.1, 0.5, 0.9], 3) == 1.0
    assert best_of_k(correct, [0.1, 0.9, 0.9], 3) == 0.5  # tie: fraction correct
    # k=1 is the plain accuracy whatever the scores
    assert best_of_k(correct, [0.3, 0.2, 0.1], 1) == pytest.approx(2 / 3)
    # k=2 by hand: (0,1)->1 F  (0,2)->0 T  (1,2)->1 F
    assert best_of_k(correct, [0.5, 0.9, 0.1], 2) == pytest.approx(1 / 3)


def test_scores_must_match_and_be_finite():
    with pytest.raises(ValueError, match="one score per sample"):
        best_of_k([True, False], [0.1], 1)
    with pytest.raises(ValueError, match="finite"):
        weighted_maj_at_k(["a", "b"], [True, False], [0.1, float("nan")], 2)


# ----------------------------------------------------------------- accuracy and summaries


def test_accuracy_bootstrap():
    ci = accuracy([1, 0, 1, 1], n_boot=2000, seed=0)
    assert isinstance(ci, AccuracyCI)
    assert ci.mean == 0.75 and ci.n == 4
    assert 0 <= ci.low <= ci.mean <= ci.high <= 1
    assert accuracy([1, 0, 1, 1], seed=0) == accuracy([1, 0, 1, 1], seed=0)
    assert accuracy([True] * 10) == AccuracyCI(1.0, 1.0, 1.0, 10)
    wide = accuracy([1, 0] * 10, seed=1)
    narrow = accuracy([1, 0] * 1000, seed=1)
    assert (narrow.high - narrow.low) < (wide.high - wide.low)
    # the normal approximation for n=2000, p=.5: half-width ~ 1.96 * sqrt(.25/2000) = .0219
    assert narrow.high - narrow.low == pytest.approx(2 * 0.0219, abs=0.006)
    with pytest.raises(ValueError):
        accuracy([])


def test_default_ks():
    assert default_ks(1) == [1]
    assert default_ks(8) == [1, 2, 4, 8]
    assert default_ks(6) == [1, 2, 4, 6]
    with pytest.raises(ValueError):
        default_ks(0)


def test_summarize_hand_computed():
    problems = [
        # maj@4: "1" twice vs "2","3" -> right. scores: best is "3" (wrong).
        Samples(["1", "2", "1", "3"], [True, False, True, False], [0.1, 0.2, 0.3, 0.4]),
        # all wrong
        Samples(["5", "5", None, "6"], [False, False, False, False], [0.9, 0.9, 0.1, 0.0]),
    ]
    m = summarize(problems)
    assert set(m) == {
        "acc@1",
        *(f"{name}@{k}" for name in ("pass", "maj", "rm", "weighted") for k in (1, 2, 4)),
    }
    assert m["acc@1"] == pytest.approx((0.5 + 0) / 2)
    assert m["pass@1"] == pytest.approx(0.25)
    assert m["pass@2"] == pytest.approx((1 - 1 / 6) / 2)
    assert m["pass@4"] == pytest.approx(0.5)
    assert m["maj@4"] == pytest.approx(0.5)
    assert m["maj@2"] == pytest.approx(0.5 / 2)  # problem 1: 3/6 as above
    assert m["rm@4"] == 0.0
    assert m["weighted@4"] == pytest.approx(0.25)  # "1": .4 ties "3": .4 -> .5


def test_summarize_without_scores_and_bad_k():
    m = summarize([Samples(["1", "2"], [True, False])], ks=[1, 2])
    assert "rm@2" not in m and m["maj@2"] == 0.5
    with pytest.raises(ValueError, match="k must be in"):
        summarize([Samples(["1", "2"], [True, False])], ks=[4])
    with pytest.raises(ValueError):
        Samples(["1"], [True, False])
    with pytest.raises(ValueError):
        summarize([])
