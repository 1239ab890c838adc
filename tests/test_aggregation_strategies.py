"""GenSelect and recursive self-aggregation: selection and aggregation prompts, the
selector's choice, tournaments, populations and what they cost.

Most tests run on RuleEngine, a real Engine (the protocol in ponder.engines.base) written
for these tests: it reads prompts as words and answers by fixed rules instead of a model,
so a selector can be deterministic and unambiguous. One test runs the bundled model."""

from __future__ import annotations

import re
from itertools import permutations

import pytest

from ponder.engines.base import Capabilities
from ponder.server.errors import LimitError
from ponder.server.limits import Limits
from ponder.server.schemas import parse_chat
from ponder.strategies.candidate_prompts import (
    aggregation_prompt,
    format_candidates,
    parse_choice,
    selection_prompt,
)
from ponder.strategies.cost import cost_options
from ponder.strategies.genselect import GenSelect
from ponder.strategies.registry import make_strategy
from ponder.strategies.rsa import RSA
from ponder.tasks.extract import extract_answer
from ponder.types import Completion, Generation, Problem, SamplingParams, SequenceState, Usage

SHOWN = re.compile(r"^Solution (\d+):\n(.*?)(?=\n\nSolution \d+:\n|\n\n[A-Z][a-z]+ the |\Z)",
                   re.MULTILINE | re.DOTALL)


class RuleEngine:
    """An Engine whose "model" is a set of rules, for deterministic strategy tests.

    Tokens are whitespace-separated words (a chat message adds two). A problem prompt's
    sample j is script[j]; a selection prompt ("... numbered 1 to N ...") is answered
    "Best: i" naming the shown solution with the largest answer (`selector="max"`), or with
    a reply naming none (`selector="mute"`); an aggregation prompt is answered with a
    solution whose answer is the largest answer shown plus `step_up`. A prompt plus
    max_tokens longer than max_positions is refused, as a real engine's context would."""

    name = "rule"
    model_name = "rule"
    capabilities = Capabilities(logprobs=False, sampling_logprobs=False, score=False)
    max_batch_size = 64

    def __init__(self, script, max_positions=1 << 20, selector="max", step_up=0):
        self.script, self.max_positions = list(script), max_positions
        self.selector, self.step_up = selector, step_up
        self.vocab: dict[str, int] = {}
        self.generations: list[Generation] = []
        self.prompts: list[str] = []
        self.requests: list = []

    def _text(self, prompt) -> str:
        return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)

    def tokenize(self, prompt) -> list[int]:
        words = self._text(prompt).split()
        if not isinstance(prompt, str):
            words += ["<msg>", "</msg>"] * len(prompt)
        return [self.vocab.setdefault(w, len(self.vocab)) for w in words]

    def detokenize(self, token_ids) -> str:
        words = {i: w for w, i in self.vocab.items()}
        return " ".join(words[i] for i in token_ids)

    def _reply(self, text: str, j: int) -> str:
        shown = {int(m.group(1)): extract_answer(m.group(2)) for m in SHOWN.finditer(text)}
        if "numbered 1 to" in text:
            if self.selector == "mute":
                return "They all look fine to me."
            best = max(shown, key=lambda i: _number(shown[i]))
            return f"Solution {best} checks out.\nBest: {best}"
        if text.startswith("Below is a problem and"):
            top = max(_number(a) for a in (shown.values() or [extract_answer(text)]))
            if top == float("-inf"):
                return "None of them finishes."
            return f"Combining them gives \\boxed{{{int(top) + self.step_up}}}"
        return self.script[j % len(self.script)]

    def generate(self, requests, on_token=None, follow_up=None, admit=None):
        out = []
        for request in requests:
            text, ids = self._text(request.prompt), self.tokenize(request.prompt)
            if len(ids) + request.params.max_tokens > self.max_positions:
                raise ValueError(f"{len(ids)} + {request.params.max_tokens} tokens do not fit "
                                 f"the context of {self.max_positions}")
            self.prompts.append(text)
            self.requests.append(request)
            completions = []
            for j in range(request.params.n):
                reply = self._reply(text, j)
                tokens = self.tokenize(reply)[:request.params.max_tokens]
                completions.append(Completion(
                    self.detokenize(tokens), tuple(tokens), (0.0,) * len(tokens),
                    (0.0,) * len(tokens), "eos", Usage(generated_tokens=len(tokens),
                                                       forward_tokens=len(tokens)),
                    SequenceState(tuple(ids) + tuple(tokens))))
            generated = sum(len(c.token_ids) for c in completions)
            gen = Generation(tuple(completions), Usage(len(ids), generated, len(ids) + generated,
                                                       calls=1), tuple(ids))
            self.generations.append(gen)
            out.append(gen)
        return out

    def score(self, requests):
        raise ValueError("the rule engine does not score")

    def close(self) -> None:
        pass

    def spent(self) -> Usage:
        return Usage.sum(g.usage for g in self.generations)


def _number(answer: str | None) -> float:
    return float(answer) if answer is not None else float("-inf")


SCRIPT = ["Adding up gives \\boxed{12}", "So it is \\boxed{15}", "I get \\boxed{12}",
          "That makes \\boxed{9}", "Clearly \\boxed{31}", "Maybe \\boxed{9}"]
PROBLEMS = [Problem("p1", "What is the total?", "31"), Problem("p2", "And this one?", "31")]


def charged(usage: Usage) -> int:
    return usage.prompt_tokens + usage.generated_tokens


# ---- prompts and the selector's choice ---------------------------------------------------

@pytest.mark.parametrize("reply, count, position", [
    ("Best: 3", 4, 2), ("The best solution is #2.", 4, 1), ("\\boxed{3}", 4, 2),
    ("2", 4, 1), ("Judgment: 4", 4, 3), ("Best: **1**", 4, 0),
    ("Solution 4 is right; its answer is 7.", 4, 3),
    ("The best is solution 3, but no. Best: 1", 4, 0), ("Best: 5", 4, None),
    ("Best: 9\n\\boxed{2}", 4, 1), ("nothing useful", 4, None), ("", 4, None), (None, 4, None),
    ("Solution 1 and Solution 2 differ.", 4, None), ("Selected: solution 2", 3, 1),
])
def test_the_selectors_choice_is_read_robustly(reply, count, position):
    assert parse_choice(reply, count) == position


def test_prompts_number_the_candidates_in_the_order_given():
    messages = selection_prompt("What is 2 + 3?", ["gives 5", "gives 6"])
    assert [m["role"] for m in messages] == ["user"]
    body = messages[0]["content"]
    assert "What is 2 + 3?" in body and "numbered 1 to 2" in body and "Best: N" in body
    assert body.index("Solution 1:\ngives 5") < body.index("Solution 2:\ngives 6")
    assert format_candidates([" a ", "b"]) == "Solution 1:\na\n\nSolution 2:\nb"
    both = aggregation_prompt("Q?", ["x = 1", "x = 2"])[0]["content"]
    assert "Solution 2:\nx = 2" in both and "\\boxed{}" in both
    one = aggregation_prompt("Q?", ["x = 1"])[0]["content"]
    assert "Solution:\nx = 1" in one and "Solution 1:" not in one
    with pytest.raises(ValueError):
        selection_prompt("Q?", [])


# ---- GenSelect ---------------------------------------------------------------------------

def test_genselect_returns_the_selectors_candidate_and_counts_every_token():
    engine = RuleEngine(SCRIPT)
    strategy = GenSelect(SamplingParams(n=6, max_tokens=20, seed=3), passes=3, select_tokens=12)
    results = strategy.run(PROBLEMS, engine)
    assert len(engine.generations) == 2 + 2 * 3  # the candidates, then 3 passes a problem
    for r in results:
        assert r.answer == "31" and r.candidates[r.chosen].answer == "31"
        assert [c.text for c in r.candidates] == SCRIPT
        (selection,) = r.trace["selections"]
        assert selection["picks"] == [4, 4, 4] and selection["fallback"] is None
        assert r.trace["rounds"] == 1 and not r.trace["tournament"]
    assert Usage.sum(r.usage for r in results) == engine.spent()
    # each pass showed its own order (position bias), and every candidate each time
    orders = [re.findall(r"Solution \d+:\n(.*)", p) for p in engine.prompts[2:5]]
    assert all(sorted(o) == sorted(SCRIPT) for o in orders)
    assert len({tuple(o) for o in orders}) > 1
    assert charged(results[0].usage) <= strategy.worst_case(len(engine.tokenize(
        [{"role": "user", "content": PROBLEMS[0].question + " x " * 20}]))).tokens


@pytest.mark.parametrize("order", list(permutations(range(4)))[::5])
def test_genselect_is_invariant_to_candidate_order(order):
    """A deterministic, unambiguous selector picks the same candidate whatever the order
    the candidates were sampled in (and whatever order each pass shows them in)."""
    script = [SCRIPT[i] for i in order]
    (r,) = GenSelect(SamplingParams(n=4, max_tokens=20, seed=0), passes=2).run(
        PROBLEMS[:1], RuleEngine(script))
    assert r.candidates[r.chosen].text == "So it is \\boxed{15}" and r.answer == "15"
    assert r.chosen == script.index("So it is \\boxed{15}")


def test_genselect_runs_a_knockout_tournament_when_the_candidates_do_not_fit():
    engine = RuleEngine(SCRIPT, max_positions=100)
    strategy = GenSelect(SamplingParams(n=6, max_tokens=10, seed=1), passes=2, select_tokens=8)
    results = strategy.run(PROBLEMS, engine)
    for r in results:
        assert r.answer == "31" and r.trace["tournament"] and r.trace["rounds"] >= 2
        first = [s for s in r.trace["selections"] if s["round"] == 0]
        assert len(first) >= 2 and all(len(s["group"]) < 6 for s in first)
        assert sorted(i for s in first for i in s["group"]) == list(range(6))
        last = r.trace["selections"][-1]
        assert last["winner"] == r.chosen == 4
        assert charged(r.usage) <= strategy.worst_case(8).tokens
    # no prompt ran past the context (the engine refuses those), and every prompt counted
    assert Usage.sum(r.usage for r in results) == engine.spent()
    # group_size forces a tournament even where everything fits
    (r,) = GenSelect(SamplingParams(n=6, max_tokens=10), passes=1, group_size=2).run(
        PROBLEMS[:1], RuleEngine(SCRIPT))
    assert r.answer == "31" and r.trace["rounds"] == 3
    assert all(len(s["group"]) <= 2 for s in r.trace["selections"])


def test_genselect_falls_back_to_the_majority_when_no_pass_names_a_candidate():
    engine = RuleEngine(SCRIPT, selector="mute")
    (r,) = GenSelect(SamplingParams(n=6, max_tokens=20), passes=2).run(PROBLEMS[:1], engine)
    assert r.answer == "12" and r.chosen == 0  # 12 and 9 tie: the earlier first vote wins
    assert r.trace["fallback"] and r.trace["selections"][0]["picks"] == [None, None]
    assert r.trace["selections"][0]["fallback"].startswith("majority")
    assert r.usage == engine.spent()  # the failed passes still cost their tokens
    # candidates too long to compare even two at a time: majority, no selection call
    tight = RuleEngine(SCRIPT, max_positions=60)
    (r,) = GenSelect(SamplingParams(n=6, max_tokens=10), passes=2, select_tokens=30).run(
        PROBLEMS[:1], tight)
    assert r.answer == "12" and len(tight.generations) == 1
    assert "fit" in r.trace["selections"][0]["fallback"]


def test_genselect_skips_selection_when_every_candidate_agrees():
    engine = RuleEngine(["so \\boxed{4}", "it is \\boxed{4}"])
    (r,) = GenSelect(SamplingParams(n=4, max_tokens=10)).run(PROBLEMS[:1], engine)
    assert r.answer == "4" and r.chosen == 0 and r.trace["unanimous"]
    assert len(engine.generations) == 1 and r.trace["selections"] == []
    (r,) = GenSelect(SamplingParams(n=1, max_tokens=10)).run(PROBLEMS[:1], RuleEngine(SCRIPT))
    assert r.chosen == 0 and r.answer == "12"


# ---- recursive self-aggregation ----------------------------------------------------------

def test_rsa_populations_and_steps():
    engine = RuleEngine(SCRIPT)
    strategy = RSA(SamplingParams(n=6, max_tokens=20, seed=2), k=3, steps=4)
    results = strategy.run(PROBLEMS, engine)
    # one batched call per step: the first samples n per problem, later ones n requests each
    assert len(engine.generations) == 2 + 3 * 2 * 6
    for r in results:
        assert len(r.candidates) == 6 * 4
        steps = [c.meta["step"] for c in r.candidates]
        assert steps == [s for s in range(1, 5) for _ in range(6)]
        assert [p["step"] for p in r.trace["populations"]] == [1, 2, 3, 4]
        assert all(len(p["answers"]) == 6 for p in r.trace["populations"])
        for c in r.candidates:
            parents = c.meta["parents"]
            if c.meta["step"] == 1:
                assert parents == []
                continue
            # k distinct parents, all from the population before
            assert len(set(parents)) == 3
            assert all(r.candidates[p].meta["step"] == c.meta["step"] - 1 for p in parents)
            assert float(c.answer) == max(float(r.candidates[p].answer) for p in parents)
        assert r.chosen >= 18 and r.candidates[r.chosen].answer == r.answer
        assert r.answer == r.trace["votes"][0]["answer"]
        assert charged(r.usage) <= strategy.worst_case(8).tokens
    assert Usage.sum(r.usage for r in results) == engine.spent()


def test_rsa_aggregates_from_the_previous_population_only():
    engine = RuleEngine(SCRIPT, step_up=1)  # every aggregation adds one to the best answer
    (r,) = RSA(SamplingParams(n=6, max_tokens=20, seed=5), k=6, steps=3).run(
        PROBLEMS[:1], engine)
    assert [p["answers"] for p in r.trace["populations"][1:]] == [["32"] * 6, ["33"] * 6]
    assert r.answer == "33" and r.chosen == 12
    (r,) = RSA(SamplingParams(n=4, max_tokens=20), k=2, steps=1).run(
        PROBLEMS[:1], RuleEngine(SCRIPT))
    assert len(r.candidates) == 4 and r.answer == "12"  # T = 1: self-consistency


def test_rsa_options_are_checked_and_the_context_caps_outputs():
    with pytest.raises(ValueError, match="k <= n"):
        RSA(SamplingParams(n=2), k=3)
    with pytest.raises(ValueError, match="steps >= 1"):
        RSA(steps=0)
    with pytest.raises(ValueError, match="passes >= 1"):
        GenSelect(passes=0)
    with pytest.raises(ValueError, match="group_size"):
        GenSelect(group_size=1)
    engine = RuleEngine(SCRIPT, max_positions=100)  # a prompt of 2 solutions: 80 tokens
    (r,) = RSA(SamplingParams(n=4, max_tokens=30), k=2, steps=2).run(PROBLEMS[:1], engine)
    assert len(r.candidates) == 8  # the outputs were capped to fit, not refused
    assert all(len(engine.tokenize(q.prompt)) + q.params.max_tokens == 100
               for q in engine.requests[1:])
    with pytest.raises(ValueError, match="lower k or max_tokens"):
        RSA(SamplingParams(n=4, max_tokens=30), k=4, steps=2).run(
            PROBLEMS[:1], RuleEngine(SCRIPT, max_positions=85))


# ---- budgets -----------------------------------------------------------------------------

def test_worst_cases_grow_with_their_options_and_the_server_refuses_them():
    base = make_strategy("genselect", n=4, max_tokens=10)
    assert make_strategy("genselect", n=4, max_tokens=10, passes=8).worst_case(5).tokens > \
        base.worst_case(5).tokens
    assert make_strategy("genselect", n=1, max_tokens=10).worst_case(5).tokens == 15
    rsa = make_strategy("rsa", n=4, max_tokens=10, k=2, steps=2)
    assert make_strategy("rsa", n=4, max_tokens=10, k=2, steps=3).worst_case(5).tokens > \
        rsa.worst_case(5).tokens > make_strategy("rsa", n=4, max_tokens=10, k=1,
                                                 steps=2).worst_case(5).tokens
    assert make_strategy("rsa", n=4, max_tokens=10, k=2, steps=1).worst_case(5).tokens == 45
    assert set(cost_options(rsa, rsa.worst_case(5))) == {"n", "max_tokens", "k", "steps"}
    assert set(cost_options(base, base.worst_case(5))) >= {"passes", "select_tokens"}
    limits = Limits(max_n=8, max_tokens=64, default_max_tokens=32, max_request_tokens=600)
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    for model in ("genselect4:smollm2-135m", "rsa4:smollm2-135m"):
        with pytest.raises(LimitError, match="max_request_tokens"):
            parse_chat({"model": model, "messages": messages, "max_tokens": 64},
                       ("smollm2-135m",), limits)


# ---- the bundled model -------------------------------------------------------------------

def test_both_run_the_bundled_model(engine):
    problems = [Problem("a", "What is 12 + 25?", "37", {"task": "arith"})]
    gs = GenSelect(SamplingParams(n=3, temperature=0.7, max_tokens=48, seed=0), passes=2,
                   select_tokens=24, skip_unanimous=False)
    (r,) = gs.run(problems, engine)
    assert r.chosen is not None and r.candidates[r.chosen].answer == r.answer
    assert r.usage.prompt_tokens > 0 and r.usage.calls == 1 + 2
    rsa = RSA(SamplingParams(n=2, temperature=0.7, max_tokens=48, seed=0), k=2, steps=2)
    (r,) = rsa.run(problems, engine)
    assert len(r.candidates) == 4 and r.usage.calls == 1 + 2
    assert charged(r.usage) <= rsa.worst_case(len(engine.tokenize(
        [{"role": "user", "content": problems[0].question}]))).tokens
