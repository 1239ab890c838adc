"""Thinking budgets for reasoning models that think inside <think>...</think> (budget forcing,
Muennighoff et al., 2025, "s1: Simple test-time scaling").

Think with max_tokens = the budget and "</think>" as a stop string. A model still thinking at
the cap is cut there: "\\n</think>\\n\\n" is appended and it answers. With wait_rounds=k, a model
that closes its thinking early has the close replaced by "Wait" and thinks on (at most k times,
within the budget). The cap counts the thinking segment as it stands in the final sequence:
tokens between the prompt and "</think>", injected "Wait"s included; a close that was
replaced was still generated, so it counts in Usage but not against the cap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ponder.engines.base import require
from ponder.strategies.base import check_problems, default_render, internal, result, sampling_for
from ponder.strategies.cost import TEMPLATE_TOKENS, Cost
from ponder.strategies.voting import vote, vote_table
from ponder.tasks.extract import extract_answer
from ponder.types import (
    Candidate,
    Completion,
    GenerateRequest,
    SamplingParams,
    SequenceState,
    Usage,
)


@dataclass
class Thought:
    """One sample: its thinking so far, where to continue from, and finally its answer."""

    problem: int
    sample: int
    prompt_len: int
    state: SequenceState  # prompt + thinking (+ the close, once closed)
    thinking: list[int] = field(default_factory=list)
    waits: int = 0
    forced: bool = False
    closed: bool = False
    usage: Usage = field(default_factory=Usage)
    answer: Completion | None = None

    @property
    def token_ids(self) -> tuple[int, ...]:
        """Everything after the prompt: thinking, close, answer."""
        answer = self.answer.token_ids if self.answer is not None else ()
        return self.state.token_ids[self.prompt_len:] + answer


@dataclass(frozen=True)
class ThinkingBudget:
    """params.n samples per problem; params.max_tokens caps the answer after the thinking."""

    params: SamplingParams = field(
        default_factory=lambda: SamplingParams(n=1, temperature=0.6, max_tokens=512))
    budget: int = 1024  # thinking tokens
    wait_rounds: int = 0
    # The model family's tags: set in Python for another family; not request options, as
    # their length is not in worst_case (a template's share is TEMPLATE_TOKENS).
    close: str = internal("</think>")
    forced_close: str = internal("\n</think>\n\n")
    wait: str = internal("Wait")
    name: str = "thinking_budget"

    def worst_case(self, prompt_tokens: int) -> Cost:
        """Per sample: the thinking (budget tokens) over at most 1 + wait_rounds calls, the
        forced close and the answer, each call charged its whole state."""
        longest = prompt_tokens + self.budget + (self.wait_rounds + 1) * TEMPLATE_TOKENS \
            + self.params.max_tokens
        calls = self.wait_rounds + 2
        tokens = self.params.n * (calls * longest + self.budget + self.params.max_tokens)
        return Cost(tokens, longest, ("n", "budget", "wait_rounds", "max_tokens"))

    def __post_init__(self) -> None:
        if self.budget < 1 or self.wait_rounds < 0:
            raise ValueError(f"need budget >= 1 and wait_rounds >= 0, got {self.budget}, "
                             f"{self.wait_rounds}")
        if self.close not in self.forced_close:
            raise ValueError(f"forced_close {self.forced_close!r} must contain {self.close!r}")

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        problems = check_problems(problems)
        thoughts = self.think(problems, engine, render)
        out = []
        for i, problem in enumerate(problems):
            mine = [t for t in thoughts if t.problem == i]
            candidates = tuple(self._candidate(t, engine, extract) for t in mine)
            answers = [c.answer for c in candidates]
            usage = Usage.sum(t.usage for t in mine)
            answer, chosen = vote(answers)
            out.append(result(
                problem, answer, candidates, usage, chosen=chosen, votes=vote_table(answers),
                budget=self.budget, thinking_tokens=[len(t.thinking) for t in mine],
                forced=sum(t.forced for t in mine), waits=[t.waits for t in mine],
                tokens=usage.generated_tokens, samples_used=len(mine), samples_saved=0,
                # What uncapped thinking would cost is not observed: the cap cut it short.
                baseline_tokens_at_n=None))
        return out

    def think(self, problems: Sequence, engine, render=default_render) -> list[Thought]:
        """Every sample's thinking under the budget, then its answer (batched per phase)."""
        require(engine, self.name, "states")
        forced_ids, wait_ids = _ids(engine, self.forced_close), _ids(engine, self.wait)
        requests = [GenerateRequest(render(p), sampling_for(
            self.params, p, "think", max_tokens=self.budget, stop=(self.close,)),
            keep_state=True) for p in problems]
        thoughts: list[Thought] = []
        pending: list[tuple[Thought, Completion]] = []
        for i, gen in enumerate(engine.generate(requests)):
            start = SequenceState(gen.prompt_token_ids)
            for j, c in enumerate(gen.completions):
                t = Thought(i, j, len(gen.prompt_token_ids), start,
                            usage=gen.usage if j == 0 else Usage())
                thoughts.append(t)
                pending.append((t, c))
        while pending:
            waiting = [t for t, c in pending if self._advance(t, c, engine, forced_ids, wait_ids)]
            requests = [GenerateRequest(state=t.state, params=sampling_for(
                self.params, problems[t.problem], f"think-{t.sample}-wait{t.waits}", n=1,
                max_tokens=self.budget - len(t.thinking), stop=(self.close,)), keep_state=True)
                for t in waiting]
            gens = engine.generate(requests) if requests else []
            for t, gen in zip(waiting, gens, strict=True):
                t.usage += gen.usage
            pending = [(t, gen.completions[0]) for t, gen in zip(waiting, gens, strict=True)]
        answers = engine.generate([GenerateRequest(state=t.state, params=sampling_for(
            self.params, problems[t.problem], f"answer-{t.sample}", n=1)) for t in thoughts])
        for t, gen in zip(thoughts, answers, strict=True):
            t.answer, t.usage = gen.completions[0], t.usage + gen.usage
        return thoughts

    def _advance(self, t: Thought, c: Completion, engine, forced_ids, wait_ids) -> bool:
        """Take one thinking completion; True when the thought should think on (a Wait)."""
        base = len(t.state)
        if c.finish_reason == "stop":  # the model closed its thinking itself
            keep = _before(engine, c.token_ids, c.text, self.close)
            if t.waits < self.wait_rounds and len(t.thinking) + keep + len(wait_ids) < self.budget:
                t.thinking += list(c.token_ids[:keep]) + wait_ids
                t.state = c.state.truncate(base + keep).extend(wait_ids)
                t.waits += 1
                return True
            t.thinking += list(c.token_ids[:keep])
            t.state, t.closed = c.state, True
            return False
        # At the cap, or the model ended (EOS) without closing: close it and make it answer.
        body = c.token_ids[:-1] if c.finish_reason == "eos" else c.token_ids
        t.thinking += list(body)
        t.state = c.state.truncate(base + len(body)).extend(forced_ids) if body else \
            t.state.extend(forced_ids)
        t.forced = t.closed = True
        return False

    def _candidate(self, t: Thought, engine, extract) -> Candidate:
        answer_text = t.answer.text
        thinking_text = engine.detokenize(t.thinking)
        found = extract(answer_text)
        return Candidate(
            text=engine.detokenize(t.token_ids),
            answer=found if found is not None else extract(thinking_text),
            tokens=len(t.thinking) + len(t.answer.token_ids),
            meta={"finish_reason": t.answer.finish_reason, "thinking_tokens": len(t.thinking),
                  "forced": t.forced, "waits": t.waits, "answer_text": answer_text})


def _ids(engine, text: str) -> list[int]:
    """Token ids of `text` as a continuation (without the BOS a tokenizer may add)."""
    bare = list(engine.tokenize(""))
    ids = list(engine.tokenize(text))
    return ids[len(bare):] if ids[: len(bare)] == bare else ids


def _before(engine, ids: Sequence[int], text: str, close: str) -> int:
    """How many of `ids` come before the stop string: the longest prefix whose text neither
    contains it nor runs past `text` (the completion's text, cut where the stop began)."""
    keep = len(ids)
    while keep > 0:
        prefix = engine.detokenize(ids[:keep])
        if close not in prefix and len(prefix) <= len(text):
            break
        keep -= 1
    return keep
