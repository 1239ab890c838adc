"""LLM-as-judge with any Engine: the probability that the model answers "Yes" to "Is this
step correct?" (per step) or "Is the final answer correct?" (per response), normalized over
"Yes" and "No" (Zheng et al., 2023, judging; Zhang et al., 2024, generative verifiers read
P(Yes) the same way). It needs no extra model: the policy can judge itself.

The question is asked as a follow-up turn after the response: chat prompts get the response
as the assistant's turn and the question as the next user turn; raw-text prompts get
"\\n\\n<question>\\nAnswer:" and " Yes"/" No". Two ways to read P(Yes):

- `score`: exact, with engine.score on "Yes" and on "No" (any engine with scoring).
- `score_last_step(items, states)`: when the judge's engine made the response, the
  question's tokens are appended to the response's own state, so an engine with KV reuse
  pays only for those few tokens, and one greedy token with top log-probabilities gives
  both; rows where "Yes" or "No" falls outside the top-k fall back to the exact path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ponder.engines.base import require
from ponder.scorers.base import Rating, ScoreItem, aggregate
from ponder.scorers.hf_prm import split_steps
from ponder.types import GenerateRequest, SamplingParams, ScoreRequest, SequenceState, Usage

STEP_QUESTION = "Is the last step of your solution correct? Answer Yes or No."
ANSWER_QUESTION = "Is the final answer of your solution correct? Answer Yes or No."
TARGETS = ("step", "answer")


class JudgeScorer:
    """P(Yes) from `engine` as a process (target="step") or outcome (target="answer") score.

    aggregation: how per-step P(Yes) becomes Rating.score in `score` (step target).
    top_k: log-probabilities read per row on the state path.
    """

    def __init__(self, engine, target: str = "step", separator: str = "\n\n",
                 aggregation: str = "min", yes: str = "Yes", no: str = "No", top_k: int = 20,
                 step_question: str = STEP_QUESTION, answer_question: str = ANSWER_QUESTION):
        if target not in TARGETS:
            raise ValueError(f"judge target must be one of {TARGETS}, got {target!r}")
        aggregate([], aggregation)
        if top_k < 2:
            raise ValueError("top_k must be >= 2 (it must be able to hold Yes and No)")
        self.engine, self.target, self.separator = engine, target, separator
        self.aggregation, self.yes, self.no, self.top_k = aggregation, yes, no, top_k
        self.questions = {"step": step_question, "answer": answer_question}
        self.name = "judge" if target == "step" else "judge_answer"
        self._suffixes: dict[tuple[bool, str], list[int]] = {}
        self._words: dict[bool, tuple[int, int]] = {}

    # ---- the Scorer protocol: exact, text only -------------------------------------------

    def score(self, items: Sequence[ScoreItem]) -> list[Rating]:
        """step target: P(Yes) for every step of every response, in one engine.score call;
        answer target: one P(Yes) per response."""
        self._check_engine()
        jobs = []  # (item index, prompt, response so far)
        for i, it in enumerate(items):
            if self.target == "answer":
                jobs.append((i, it.prompt, it.response.strip()))
                continue
            steps = split_steps(it.response, self.separator)
            jobs += [(i, it.prompt, self.separator.join(steps[: k + 1])) for k in range(len(steps))]
        probs, usages = self._exact([(p, r, self.target) for _, p, r in jobs])
        per_item: list[list[float]] = [[] for _ in items]
        usage = [Usage() for _ in items]
        for (i, _, _), p, u in zip(jobs, probs, usages, strict=True):
            per_item[i].append(p)
            usage[i] = usage[i] + u
        if self.target == "answer":
            return [Rating(p[0], usage=u) for p, u in zip(per_item, usage, strict=True)]
        return [Rating(aggregate(p, self.aggregation), tuple(p), u)
                for p, u in zip(per_item, usage, strict=True)]

    # ---- the fast path search uses -----------------------------------------------------

    def score_last_step(self, items: Sequence[ScoreItem],
                        states: Sequence[SequenceState | None] | None = None) -> list[Rating]:
        """Rate only each response's last step (or, answer target, the answer). `states`, if
        given, are this judge's engine's sequences ending with each response; the question is
        appended to them instead of re-reading the prompt and response."""
        self._check_engine()
        states = list(states) if states is not None else [None] * len(items)
        if len(states) != len(items):
            raise ValueError("give one state (or None) per item")
        out: list[Rating | None] = [None] * len(items)
        fast = [i for i, s in enumerate(states) if s is not None]
        if fast:
            require(self.engine, "the judge's state path", "states", "top_logprobs")
            found = self._from_states([items[i] for i in fast], [states[i] for i in fast])
            for i, rating in zip(fast, found, strict=True):
                out[i] = rating
        slow = [i for i, r in enumerate(out) if r is None]
        if slow:
            probs, usages = self._exact(
                [(items[i].prompt, items[i].response.strip(), self.target) for i in slow])
            for i, p, u in zip(slow, probs, usages, strict=True):
                out[i] = self._rating(p, u)
        return out

    def _check_engine(self) -> None:
        if self.engine is None:
            raise ValueError("the judge needs an engine to ask: make_scorer('judge', engine)")

    def _rating(self, p: float, usage: Usage) -> Rating:
        return Rating(p, (p,) if self.target == "step" else None, usage)

    def _from_states(self, items, states) -> list[Rating | None]:
        requests = []
        for it, state in zip(items, states, strict=True):
            chat = not isinstance(it.prompt, str)
            suffix = self._suffix(chat, self.target)
            if state.token_ids and state.token_ids[-1] == suffix[0]:
                suffix = suffix[1:]  # the response already ends with the turn's end (its EOS)
            requests.append(GenerateRequest(
                state=state.extend(suffix),
                params=SamplingParams(temperature=0.0, max_tokens=1, logprobs=self.top_k)))
        out = []
        for it, gen in zip(items, self.engine.generate(requests), strict=True):
            top = gen.completions[0].top_logprobs[0]
            yes, no = self._word_ids(not isinstance(it.prompt, str))
            if yes not in top or no not in top:
                out.append(None)  # exact fallback
                continue
            out.append(self._rating(_normalize(top[yes], top[no]), _as_scorer(gen.usage)))
        return out

    # ---- exact P(Yes) with engine.score --------------------------------------------------

    def _exact(self, jobs: list[tuple]) -> tuple[list[float], list[Usage]]:
        requests = []
        for prompt, response, target in jobs:
            chat = not isinstance(prompt, str)
            context = self._context(prompt, response, target)
            yes, no = self._word_ids(chat)
            requests += [ScoreRequest(context, [yes]), ScoreRequest(context, [no])]
        scored = self.engine.score(requests) if requests else []
        probs, usages = [], []
        for k in range(0, len(scored), 2):
            y, n = scored[k], scored[k + 1]
            probs.append(_normalize(y.logprobs[0], n.logprobs[0]))
            usages.append(_as_scorer(y.usage + n.usage))
        return probs, usages

    def _context(self, prompt, response: str, target: str):
        question = self.questions[target]
        if isinstance(prompt, str):
            return f"{prompt}{response}\n\n{question}\nAnswer:"
        items = list(prompt)
        if items and isinstance(items[0], int):  # token ids: judge them as text
            return f"{self.engine.detokenize(items)}{response}\n\n{question}\nAnswer:"
        return [*items, {"role": "assistant", "content": response},
                {"role": "user", "content": question}]

    # ---- token bookkeeping ------------------------------------------------------------

    def _word_ids(self, chat: bool) -> tuple[int, int]:
        """First token of "Yes"/"No" (chat: the reply starts with them; text: " Yes")."""
        if chat not in self._words:
            space = "" if chat else " "
            ids = [self._bare(f"{space}{w}") for w in (self.yes, self.no)]
            if not ids[0] or not ids[1] or ids[0][0] == ids[1][0]:
                raise ValueError(f"cannot tell {self.yes!r} from {self.no!r} by their first token")
            self._words[chat] = (ids[0][0], ids[1][0])
        return self._words[chat]

    def _bare(self, text: str) -> list[int]:
        """Tokens of `text` without what the tokenizer adds to every text (a BOS)."""
        a, b = self.engine.tokenize("A"), self.engine.tokenize("B")
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        ids = self.engine.tokenize(text)
        return ids[n:] if ids[:n] == a[:n] else ids

    def _suffix(self, chat: bool, target: str) -> list[int]:
        """The tokens between the end of a response and the judge's answer. For chat, the
        common tail of two conversations that differ only in the response: what the
        template puts after an assistant turn, then the question turn."""
        key = (chat, target)
        if key not in self._suffixes:
            question = self.questions[target]
            if chat:
                a, b = (self.engine.tokenize([{"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": word},
                                              {"role": "user", "content": question}])
                        for word in ("A", "B"))
            else:
                a, b = (self.engine.tokenize(f"{word}\n\n{question}\nAnswer:") for word in "AB")
            n = 0
            while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
                n += 1
            if n == 0:
                raise ValueError("cannot find the judge question's tokens in the chat template")
            self._suffixes[key] = a[len(a) - n:]
        return self._suffixes[key]


def _normalize(log_yes: float, log_no: float) -> float:
    """P(Yes) among {Yes, No}: exp(y) / (exp(y) + exp(n)), computed stably."""
    import math

    top = max(log_yes, log_no)
    if top == float("-inf"):
        return 0.5
    y, n = math.exp(log_yes - top), math.exp(log_no - top)
    return y / (y + n)


def _as_scorer(usage: Usage) -> Usage:
    # The engine counts forward tokens; for a scorer they are scorer tokens.
    return replace(usage, prompt_tokens=0, generated_tokens=0, forward_tokens=0,
                   scorer_tokens=usage.forward_tokens)
