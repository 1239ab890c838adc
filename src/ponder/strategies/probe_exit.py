"""Answer probing (Dynasor-CoT; Fu et al., 2025, "Efficiently Serving LLM Reasoning Programs
with Certaindex"): stop a reasoning trace once its answer has settled.

Each of params.n traces grows in blocks of `probe_every` tokens, continuing its own KV state.
After each block every live trace is probed: its state is continued with a short greedy
request, `probe` appended (a thinking model still inside <think> gets `think_close` first),
that reads the answer it would give now from up to `probe_tokens` tokens (on engines with
per-token stop hooks, early_stop, the probe ends at the token that closes its box). The probe's
tokens are discarded; the trace goes on from where it was. A trace stops once its last
`agree` probes gave the same answer (none of them empty or unclosed); the answer is that
probed one. Traces that end by themselves answer as usual. The final answer is the majority
vote over the traces' answers.

Every token of the blocks and the probes is counted in the Usage; `Result.trace` reports
the probes of each trace and the tokens probing cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ponder.engines.base import require
from ponder.strategies.base import (
    check_problems,
    default_render,
    internal,
    result,
    sampling_for,
)
from ponder.strategies.cost import TEMPLATE_TOKENS, Cost, blocks
from ponder.strategies.voting import vote, vote_table
from ponder.tasks.extract import extract_answer
from ponder.tasks.normalize import normalize_answer
from ponder.types import Candidate, GenerateRequest, SamplingParams, SequenceState, Usage

BOXED = "\\boxed{"


@dataclass(frozen=True)
class ProbeExit:
    params: SamplingParams = field(
        default_factory=lambda: SamplingParams(n=4, temperature=0.7, max_tokens=512))
    probe_every: int = 32  # k: tokens generated between probes
    agree: int = 3  # w: stop once this many probes in a row agree
    probe_tokens: int = 12  # the longest probed answer read
    # Fed at every probe, so kept short: the longer "... I now know the final answer. The
    # final answer is" cost 8 more tokens a probe for no gain measured on the bundled model.
    probe: str = internal("\n\nThe final answer is \\boxed{")
    think_open: str = internal("<think>")
    think_close: str = internal("\n</think>\n\n")
    name: str = "probe_exit"

    def __post_init__(self) -> None:
        for option in ("probe_every", "agree", "probe_tokens"):
            value = getattr(self, option)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be an integer >= 1, got {value!r}")
        if not self.probe.endswith(BOXED):
            raise ValueError(f"the probe must end with {BOXED!r}, where the answer goes")

    def worst_case(self, prompt_tokens: int) -> Cost:
        """Per trace: up to B = ceil(max_tokens / probe_every) blocks, each call charged its
        state (at most prompt + b blocks); a probe after each block, charged its state plus
        the probe words and answer; the first block's prompt shared by the n traces."""
        n, k = self.params.n, self.probe_every
        b = blocks(self.params.max_tokens, k)
        extra = TEMPLATE_TOKENS + self.probe_tokens
        per_trace = 2 * b * prompt_tokens + k * b * (b + 1) + b * extra + k
        return Cost(prompt_tokens + n * per_trace,
                    prompt_tokens + self.params.max_tokens + extra,
                    ("n", "max_tokens", "probe_every"))

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        require(engine, self.name, "states")
        problems = check_problems(problems)
        probe_ids, close_ids = _ids(engine, self.probe), _ids(engine, self.think_close)
        if len(probe_ids) + len(close_ids) > TEMPLATE_TOKENS:
            raise ValueError(f"the probe is {len(probe_ids) + len(close_ids)} tokens, over "
                             f"the {TEMPLATE_TOKENS} its budget allows")
        early_stop = engine.capabilities.early_stop
        books = [_Book() for _ in problems]
        traces = self._first_block(problems, engine, render, books)
        prompt_texts = {b: engine.detokenize(t.state.token_ids[: t.prompt_len])
                        for b, t in {t.book: t for t in traces}.items()}
        block = 1
        while live := [t for t in traces if t.finish is None]:
            requests = []
            for t in live:
                text = prompt_texts[t.book] + engine.detokenize(t.generated)
                closing = close_ids if _thinking(text, self.think_open,
                                                 self.think_close.strip()) else []
                requests.append(GenerateRequest(
                    state=t.state.extend([*closing, *probe_ids]),
                    params=SamplingParams(temperature=0.0, max_tokens=self.probe_tokens),
                    should_stop=_until_box_closes(engine) if early_stop else None))
            for t, gen in zip(live, engine.generate(requests), strict=True):
                books[t.book].usage += gen.usage
                books[t.book].probe_tokens += gen.usage.generated_tokens
                self._take_probe(t, gen.completions[0].text, extract)
            block += 1
            going = [t for t in live if t.finish is None]
            requests = [GenerateRequest(state=t.state, params=sampling_for(
                self.params, problems[t.book], f"probe_exit-{block}-{t.index}", n=1,
                max_tokens=min(self.probe_every, self.params.max_tokens - len(t.generated))),
                keep_state=True) for t in going]
            for t, gen in zip(going, engine.generate(requests) if requests else [], strict=True):
                books[t.book].usage += gen.usage
                self._take_block(t, gen.completions[0])
        return [self._result(p, books[i], [t for t in traces if t.book == i], engine, extract)
                for i, p in enumerate(problems)]

    def _first_block(self, problems, engine, render, books) -> list[_Trace]:
        """One request per problem: n traces share the prompt's prefill."""
        first = min(self.probe_every, self.params.max_tokens)
        gens = engine.generate([GenerateRequest(render(p), sampling_for(
            self.params, p, "probe_exit-1", max_tokens=first), keep_state=True)
            for p in problems])
        traces = []
        for i, gen in enumerate(gens):
            books[i].usage += gen.usage
            for j, c in enumerate(gen.completions):
                t = _Trace(i, j, SequenceState(gen.prompt_token_ids), len(gen.prompt_token_ids))
                self._take_block(t, c)
                traces.append(t)
        return traces

    def _take_block(self, t: _Trace, c) -> None:
        asked = min(self.probe_every, self.params.max_tokens - len(t.generated))
        t.generated += c.token_ids
        t.state = c.state
        ended = c.finish_reason in ("eos", "stop", "stopped") or (
            c.finish_reason == "length" and len(c.token_ids) < asked)  # the context is full
        if ended or len(t.generated) >= self.params.max_tokens:
            t.finish = c.finish_reason if ended else "length"

    def _take_probe(self, t: _Trace, text: str, extract) -> None:
        inside = _closed_boxed(text)
        answer = extract(f"{BOXED}{inside}}}") if inside else None
        t.probes.append({"at": len(t.generated), "answer": answer})
        last = [p["answer"] for p in t.probes[-self.agree:]]
        if len(last) == self.agree and all(a is not None for a in last) and \
                len({normalize_answer(a) or a.strip() for a in last}) == 1:
            t.finish, t.answer = "probed", last[-1]

    def _result(self, problem, book: _Book, traces: list[_Trace], engine, extract):
        candidates = []
        for t in traces:
            text = engine.detokenize(t.generated)
            answer = t.answer if t.finish == "probed" else extract(text)
            candidates.append(Candidate(text, answer, None, len(t.generated), {
                "finish_reason": t.finish, "probes": list(t.probes)}))
        answers = [c.answer for c in candidates]
        answer, chosen = vote(answers)
        trace_tokens = sum(len(t.generated) for t in traces)
        return result(problem, answer, tuple(candidates), book.usage, chosen=chosen,
                      votes=vote_table(answers), probe_every=self.probe_every,
                      agree=self.agree, stopped=sum(t.finish == "probed" for t in traces),
                      probes=sum(len(t.probes) for t in traces), trace_tokens=trace_tokens,
                      probe_tokens=book.probe_tokens,
                      tokens=book.usage.generated_tokens)


@dataclass(eq=False)
class _Trace:
    book: int  # the problem's index
    index: int  # the trace's index within its problem
    state: SequenceState
    prompt_len: int
    generated: list[int] = field(default_factory=list)
    probes: list[dict] = field(default_factory=list)
    finish: str | None = None  # eos, stop, length, or probed
    answer: str | None = None  # the agreed probe answer, when probed


@dataclass(eq=False)
class _Book:
    usage: Usage = field(default_factory=Usage)
    probe_tokens: int = 0


def _box_end(text: str) -> int | None:
    """The index of the brace that closes the \\boxed{ the probe opened; None if unclosed."""
    depth = 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            if depth == 0:
                return i
            depth -= 1
    return None


def _closed_boxed(text: str) -> str | None:
    """What the probe wrote inside the \\boxed{ it opened, if it closed it; else None."""
    end = _box_end(text)
    return None if end is None else text[:end].strip() or None


def _until_box_closes(engine):
    """A should_stop hook for one probe: end it at the token that closes its box. The answer
    is read by then; the probe_tokens cap would pay for tokens that are thrown away."""
    ids: list[int] = []

    def closed(_sample: int, step) -> bool:
        ids.append(step.token_id)
        return _box_end(engine.detokenize(ids)) is not None

    return closed


def _thinking(text: str, opened: str, closed: str) -> bool:
    """True when `text` is inside an open thinking block."""
    start = text.rfind(opened)
    return start >= 0 and text.rfind(closed) < start


def _ids(engine, text: str) -> list[int]:
    """`text` as token ids to append to a sequence (any BOS the tokenizer adds dropped)."""
    bare = list(engine.tokenize(""))
    ids = list(engine.tokenize(text))
    return ids[len(bare):] if ids[: len(bare)] == bare else ids
