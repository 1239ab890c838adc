"""Answer probing (probe_exit): which traces stop, what the probes see, what it all costs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from ponder.engines.base import Capabilities
from ponder.engines.core.collect import JobRecord, SampleRecord, collect_generations
from ponder.strategies.probe_exit import ProbeExit, _closed_boxed
from ponder.strategies.registry import make_strategy
from ponder.types import GenerateRequest, Generation, Problem, SamplingParams, StepView

EOS = 256
STEP = "#"  # one reasoning token of a scripted trace


class ScriptedEngine:
    """A real, deterministic implementation of the Engine protocol for these tests: one
    character per token (EOS = 256), no KV cache, every sequence's next token a function
    of its text. After the prompt (which ends at its last ">"), sample j of a fresh request
    writes the letter "a" + j (naming the trace), then `length` reasoning tokens "#", then
    EOS. A sequence holding "\\boxed{" is a probe: the model writes answers(trace, m) + "}"
    then EOS, where m counts the trace's reasoning tokens before the probe; an answer of
    None writes an unclosed "??". With `chatter`, a probe writes that many "." after its
    box before EOS. With `early_stop`, a request's should_stop hook is called after every
    token, as the native engine does. Every request's text is kept in `seen`."""

    name = "scripted"
    model_name = "scripted"
    max_batch_size = 8
    max_positions = 1 << 20
    def __init__(self, answers: Callable[[int, int], str | None], length: int = 200,
                 chatter: int = 0, early_stop: bool = False):
        self.answers, self.length, self.chatter = answers, length, chatter
        self.capabilities = Capabilities(states=True, early_stop=early_stop)
        self.seen: list[str] = []

    def tokenize(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            return [min(ord(ch), 255) for ch in prompt]
        return list(prompt)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return "".join(chr(t) for t in token_ids if t != EOS)

    def score(self, requests):
        raise ValueError("the scripted engine does not score")

    def close(self) -> None:
        pass

    def _next(self, ids: list[int], sample: int) -> int:
        text = self.detokenize(ids)
        trace = text[text.index(">") + 1:]
        if not trace:
            return ord("a") + sample
        if "\\boxed{" in trace:
            body, written = trace.split("\\boxed{", 1)
            answer = self.answers(ord(body[0]) - ord("a"), body.count(STEP))
            target = "??" if answer is None else answer + "}" + "." * self.chatter
            return ord(target[len(written)]) if len(written) < len(target) else EOS
        return ord(STEP) if trace.count(STEP) < self.length else EOS

    def generate(self, requests: Sequence[GenerateRequest], on_token=None, follow_up=None,
                 admit=None) -> list[Generation]:
        jobs = []
        for index, request in enumerate(requests):
            ids = (list(request.state.token_ids) if request.state is not None
                   else self.tokenize(request.prompt))
            self.seen.append(self.detokenize(ids))
            job = JobRecord(index, request, request.params, ids, 0, prefill_tokens=len(ids))
            jobs.append(job)
            for j in range(request.params.n):
                tokens, reason = [], "length"
                while len(tokens) < request.params.max_tokens:
                    tokens.append(self._next(ids + tokens, j))
                    if tokens[-1] == EOS:
                        reason = "eos"
                        break
                    stop = request.should_stop
                    if stop is not None and stop(j, StepView(tokens[-1], 0.0, 0.0, None,
                                                             len(tokens))):
                        reason = "stopped"
                        break
                SampleRecord(job, j, None, self.detokenize(tokens), tokens, [0.0] * len(tokens),
                             [0.0] * len(tokens), forward_tokens=len(tokens),
                             finish_reason=reason)
        return collect_generations(jobs, 0.0)


PROBLEM = Problem("p1", "What is 2 + 3?", "5")


def plain(problem: Problem) -> str:
    return f"Q: {problem.question} A>"


def thinking(problem: Problem) -> str:
    return f"Q: {problem.question} <think>"


def run(answers, n=2, every=10, agree=3, max_tokens=400, render=plain, length=200, **engine):
    engine = ScriptedEngine(answers, length, **engine)
    strategy = ProbeExit(params=SamplingParams(n=n, temperature=0.7, max_tokens=max_tokens),
                         probe_every=every, agree=agree)
    return strategy, engine, strategy.run([PROBLEM], engine, render=render)[0]


def test_probes_that_agree_stop_the_trace_and_probes_that_disagree_never_do():
    # Trace a always probes 5; trace b flips between 5 and 6 every block.
    strategy, engine, r = run(lambda trace, m: "5" if trace == 0 else "56"[(m // 10) % 2])
    a, b = r.candidates
    assert a.meta["finish_reason"] == "probed" and a.answer == "5"
    assert [p["answer"] for p in a.meta["probes"]] == ["5", "5", "5"]
    assert a.tokens == 30  # three blocks of 10: the letter and 29 steps
    assert b.meta["finish_reason"] == "eos"  # ran to its own end
    assert b.tokens == 1 + 200 + 1
    flips = [p["answer"] for p in b.meta["probes"]]
    assert len(flips) == 20 and all(x != y for x, y in zip(flips, flips[1:], strict=False))
    assert r.answer == "5" and r.chosen == 0 and r.trace["stopped"] == 1
    # Every token counted: both traces' blocks and each probe's "5}" + EOS.
    assert r.trace["probes"] == 23 and r.trace["probe_tokens"] == 23 * 3
    assert r.usage.generated_tokens == 30 + 202 + 23 * 3 == r.trace["tokens"]
    assert r.trace["trace_tokens"] == 232


def test_a_trace_stops_only_after_agree_probes_in_a_row_and_never_on_empty_ones():
    script = {0: ["5", "6", "6", "6"], 1: [None] * 40}
    _, _, r = run(lambda trace, m: script[trace][min(m // 10, len(script[trace]) - 1)])
    a, b = r.candidates
    assert a.meta["finish_reason"] == "probed" and a.answer == "6" and a.tokens == 40
    assert b.meta["finish_reason"] == "eos"  # unclosed probes never agree
    assert all(p["answer"] is None for p in b.meta["probes"])
    _, _, r = run(lambda trace, m: "7", n=1, agree=1)
    assert r.candidates[0].tokens == 10 and r.answer == "7"


def test_probes_continue_the_trace_and_close_an_open_think_first():
    strategy, engine, _ = run(lambda trace, m: "5", n=1, render=thinking)
    probes = [s for s in engine.seen if "\\boxed{" in s]
    assert len(probes) == 3
    for text in probes:
        head, probe = text.split("\n</think>\n\n", 1)
        assert head.startswith("Q: What is 2 + 3? <think>a") and probe == strategy.probe
    strategy, engine, _ = run(lambda trace, m: "5", n=1)
    probes = [s for s in engine.seen if "\\boxed{" in s]
    assert probes and all("</think>" not in s and s.endswith(strategy.probe) for s in probes)
    # The next block continues the trace itself, not the probe.
    blocks = [s for s in engine.seen if "\\boxed{" not in s]
    assert [s.count(STEP) for s in blocks] == [0, 9, 19]


def test_a_probe_ends_at_the_token_that_closes_its_box_where_the_engine_can_stop_it():
    # The model writes "12}" and then chatter; probe_tokens (12) caps what is paid for.
    _, _, read_all = run(lambda trace, m: "12", n=1, chatter=20)
    _, _, cut = run(lambda trace, m: "12", n=1, chatter=20, early_stop=True)
    assert read_all.answer == cut.answer == "12"
    assert read_all.trace["probes"] == cut.trace["probes"] == 3
    assert read_all.trace["probe_tokens"] == 3 * 12  # the cap, chatter included
    assert cut.trace["probe_tokens"] == 3 * 3  # "1", "2", "}"
    assert cut.usage.generated_tokens == cut.trace["trace_tokens"] + 9
    # A nested brace does not end the probe; the box's own closing brace does.
    _, _, nested = run(lambda trace, m: "\\frac{1}{2}", n=1, chatter=20, early_stop=True)
    assert nested.answer == "\\frac{1}{2}"
    assert nested.trace["probe_tokens"] == 3 * len("\\frac{1}{2}}")


def test_max_tokens_caps_every_trace_and_the_worst_case_bounds_the_run():
    strategy, engine, r = run(lambda trace, m: "56"[(m // 10) % 2], n=3, max_tokens=45)
    assert all(c.tokens == 45 and c.meta["finish_reason"] == "length" for c in r.candidates)
    prompt = len(plain(PROBLEM))
    cost = strategy.worst_case(prompt)
    assert r.usage.prompt_tokens + r.usage.generated_tokens <= cost.tokens
    assert max(len(s) for s in engine.seen) + strategy.probe_tokens <= cost.longest
    assert set(cost.options) == {"n", "max_tokens", "probe_every"}
    # More blocks (a smaller probe_every) or more traces cost more.
    assert ProbeExit(probe_every=8).worst_case(50).tokens > ProbeExit().worst_case(50).tokens


def test_options_are_checked():
    with pytest.raises(ValueError, match="agree"):
        ProbeExit(agree=0)
    with pytest.raises(ValueError, match="boxed"):
        ProbeExit(probe="The answer is")
    assert _closed_boxed("12}") == "12" and _closed_boxed("\\frac{1}{2}} x") == "\\frac{1}{2}"
    assert _closed_boxed("12") is None and _closed_boxed("}") is None


def test_on_the_bundled_model(engine):
    from ponder.tasks.datasets import load_task

    problems = load_task("arith:1", limit=2)
    strategy = make_strategy("probe_exit", n=2, max_tokens=48, temperature=0.7, seed=0,
                             probe_every=16, agree=2)
    results = strategy.run(problems, engine)
    for r in results:
        assert len(r.candidates) == 2
        probes = sum(len(c.meta["probes"]) for c in r.candidates)
        assert r.trace["probes"] == probes >= 1
        assert r.usage.generated_tokens == r.trace["trace_tokens"] + r.trace["probe_tokens"]
        assert r.trace["probe_tokens"] <= probes * strategy.probe_tokens
        for c in r.candidates:
            assert c.tokens <= 48
            if c.meta["finish_reason"] == "probed":
                assert len({p["answer"] for p in c.meta["probes"][-2:]}) == 1
