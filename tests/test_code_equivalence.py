"""Execution equivalence (probe inputs, signatures, the vote), the code_consistency
strategy, best-of-N on code, and pass@k."""

from __future__ import annotations

import pytest

from ponder.engines.base import Capabilities
from ponder.eval.metrics import mean_pass_at_k
from ponder.scorers.base import Rating
from ponder.strategies.best_of_n import BestOfN
from ponder.strategies.registry import make_strategy
from ponder.tasks.code import CodeTask, load_humaneval
from ponder.tasks.code.equivalence import probe_calls, signatures, vote
from ponder.tasks.code.mutate import mutants
from ponder.tasks.code.sandbox import Limits, Outcome, Sandbox
from ponder.tasks.datasets import load_task
from ponder.types import Completion, Generation, SamplingParams, SequenceState, Usage


@pytest.fixture(scope="module")
def problems():
    return {p.id: p for p in load_humaneval()}


def fenced(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\nHope it helps."


# HumanEval/0 written three ways: two right, one wrong.
CLOSE_SORTED = ("from typing import List\n\n"
                "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
                "    xs = sorted(numbers)\n"
                "    return any(b - a < threshold for a, b in zip(xs, xs[1:]))\n")
CLOSE_WRONG = ("def has_close_elements(numbers, threshold):\n"
               "    return len(numbers) > 1\n")


def test_probe_calls_come_from_the_prompt(problems):
    assert probe_calls(problems["HumanEval/0"]) == [
        "has_close_elements([1.0, 2.0, 3.0], 0.5)",
        "has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)"]
    # "For num = "AB" the output should be 1."
    assert probe_calls(problems["HumanEval/78"])[:2] == ['hex_key("AB")', 'hex_key("1077E")']
    # "Input: [4,2,3]" lines
    assert probe_calls(problems["HumanEval/68"])[:3] == ["pluck([4,2,3])", "pluck([1,2,3])",
                                                         "pluck([])"]
    # examples that call the function by another name
    assert probe_calls(problems["HumanEval/81"])[0] == \
        "numerical_letter_grade([4.0, 3, 1.7, 2, 3.5])"
    # no examples at all: values for the type hint (s: str)
    calls = probe_calls(problems["HumanEval/38"])
    assert calls[0] == "decode_cyclic('')" and len(calls) >= 4
    # bare words in examples are strings: "is_happy(abcd) => True"
    assert probe_calls(problems["HumanEval/80"])[:2] == ["is_happy('a')", "is_happy('aa')"]
    # no examples, no hint, but a name that means an int
    assert probe_calls(problems["HumanEval/83"])[:2] == ["starts_one_ends(0)",
                                                         "starts_one_ends(1)"]
    empty = [pid for pid, p in problems.items() if not probe_calls(p)]
    assert empty == ["HumanEval/115", "HumanEval/160"]  # nothing usable in the prompt


def test_vote_takes_the_largest_group_and_ties_go_first():
    assert vote(["a", None, "b", "b", "a"]) == (0, [{"members": [0, 4], "votes": 2},
                                                   {"members": [2, 3], "votes": 2}])
    assert vote([None, "x", "y", "y"])[0] == 2
    assert vote([None, None]) == (None, [])


def test_equal_behaviour_gives_equal_signatures(problems):
    p = problems["HumanEval/0"]
    sigs = signatures(p, [p.metadata["canonical_solution"], CLOSE_SORTED, CLOSE_WRONG,
                          "def has_close_elements(:\n", None], Sandbox(Limits(timeout=5)))
    canonical, rewritten, wrong, broken, missing = sigs
    assert canonical == rewritten == "[False, True]"
    assert wrong not in (None, canonical)
    assert broken is None and missing is None  # did not load / no code: no vote


def test_signatures_record_exceptions_and_runaway_calls(problems):
    p = problems["HumanEval/0"]
    looping = ("def has_close_elements(numbers, threshold):\n"
               "    if threshold < 0.4:\n        while True:\n            pass\n"
               "    raise ValueError('no')\n")
    [sig] = signatures(p, [looping], Sandbox(Limits(timeout=10)))
    assert sig == "['!ValueError', '!TimeoutError']"


class ScriptedEngine:
    """Returns the given texts, request by request, as completions."""

    name = "scripted"
    capabilities = Capabilities()

    def __init__(self, scripts):
        self.scripts = [list(texts) for texts in scripts]
        self.requests = []

    def generate(self, requests, on_token=None):
        self.requests += list(requests)
        out = []
        for request, texts in zip(requests, self.scripts, strict=True):
            assert request.params.n == len(texts)
            completions = tuple(
                Completion(text=t, token_ids=(1,) * len(t.split()), logprobs=(-1.0,),
                           sampling_logprobs=(-1.0,), finish_reason="stop",
                           usage=Usage(generated_tokens=len(t.split())),
                           state=SequenceState((1,)))
                for t in texts)
            out.append(Generation(completions, Usage.sum(c.usage for c in completions)
                                  + Usage(prompt_tokens=5), ()))
        return out


def test_code_consistency_votes_by_behaviour(problems):
    p0, p2 = problems["HumanEval/0"], problems["HumanEval/2"]
    script0 = [fenced(CLOSE_WRONG), fenced(p0.answer), "I cannot do that.",
               fenced(CLOSE_SORTED), fenced("def has_close_elements(:")]
    # Most samples agree on a wrong answer: the vote follows them (it is not a grader).
    script2 = ["    return int(number)\n", "    return number % 1.0\n",
               "    return float(int(number))\n", "    return int(number) + 0.0\n"]
    engine = ScriptedEngine([script0])
    strategy = make_strategy("code_consistency", n=5, seed=0)
    [r0] = strategy.run([p0], engine)
    assert r0.answer == r0.candidates[1].answer  # first of the two right programs
    assert r0.trace["votes"][0] == {"members": [1, 3], "votes": 2}
    assert r0.candidates[2].answer is None and r0.candidates[2].meta["signature"] is None
    assert r0.candidates[4].meta["signature"] is None  # a syntax error does not vote
    assert r0.usage.generated_tokens == sum(len(t.split()) for t in script0)
    # The chat prompt carried the function to complete.
    assert p0.metadata["prompt"].strip() in engine.requests[0].prompt[0]["content"]

    engine = ScriptedEngine([script2])
    [r2] = make_strategy("code_consistency", n=4, seed=0).run([p2], engine)
    assert r2.answer == "    return int(number)"  # the three int(...) variants agree
    assert r2.trace["votes"][0]["members"] == [0, 2, 3]
    task = CodeTask(limits=Limits(timeout=5))
    assert task.grade_many([(p0, r0.answer), (p2, r2.answer)]) == [True, False]


def test_code_consistency_refuses_problems_without_code():
    [math] = load_task("gsm8k", limit=1)
    with pytest.raises(ValueError, match="not a code problem"):
        make_strategy("code_consistency", n=2).run([math], ScriptedEngine([["x", "y"]]))


class FixedScorer:
    name = "fixed"

    def __init__(self, scores):
        self.scores = list(scores)

    def score(self, items):
        return [Rating(self.scores.pop(0), usage=Usage(scorer_tokens=2)) for _ in items]


def test_best_of_n_works_on_code_with_any_scorer(problems):
    p = problems["HumanEval/0"]
    engine = ScriptedEngine([[fenced(CLOSE_WRONG), fenced(CLOSE_SORTED), "no code"]])
    task = CodeTask(limits=Limits(timeout=5))
    [r] = BestOfN(SamplingParams(n=3, seed=0)).run(
        [p], engine, FixedScorer([0.2, 0.9, 0.5]), extract=task.extract, render=task.render)
    assert r.answer == CLOSE_SORTED and task.grade(p, r.answer)
    assert r.usage.scorer_tokens == 6


def test_pass_at_k_from_graded_samples(problems):
    p = problems["HumanEval/2"]
    task = CodeTask(limits=Limits(timeout=5))
    codes = [p.metadata["canonical_solution"], *mutants(p).values()][:4]
    outcomes = task.outcomes([(p, c) for c in codes])
    assert [o.passed for o in outcomes] == [True, False, False, False]
    metrics = mean_pass_at_k([outcomes, [True, True, False, False]])
    assert metrics == pytest.approx({"pass@1": (0.25 + 0.5) / 2, "pass@2": (0.5 + 5 / 6) / 2,
                                     "pass@4": 1.0})
    with pytest.raises(ValueError, match="k must be"):
        mean_pass_at_k([[True, False]], ks=[3])
    assert mean_pass_at_k([[Outcome("passed")]]) == {"pass@1": 1.0}


@pytest.mark.slow
def test_code_consistency_on_the_bundled_model(engine):
    [problem] = load_task("humaneval", limit=1)
    task = CodeTask(limits=Limits(timeout=5))
    [r] = make_strategy("code_consistency", n=2, max_tokens=8, seed=0).run(
        [problem], engine, render=task.render)
    assert len(r.candidates) == 2 and r.usage.generated_tokens > 0
    assert r.answer is None or r.answer in [c.answer for c in r.candidates]
    assert sum(v["votes"] for v in r.trace["votes"]) == sum(
        c.meta["signature"] is not None for c in r.candidates)
