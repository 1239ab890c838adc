"""Self-valuation as in Tree of Thoughts (Yao et al., 2023): the model is asked whether its
partial solution can still reach a correct final answer and answers "Sure", "Likely" or
"Impossible", worth 1.0, 0.5 and 0.0. It needs no extra model: the policy values itself.

The question is a follow-up turn after the response, asked exactly as the judge asks its
Yes/No question (judge.py: the same context, the same state path that appends the question's
tokens to the response's own KV state, the same exact fallback). Two ways to read it:

- samples=0 (the default): the expected value under the model's probabilities of the three
  words as replies, normalized over the three. Exactly, each word is scored (all its tokens)
  with engine.score after the question. When every word is one token, the state path reads
  them from one greedy token's top log-probabilities instead, and a row where one falls
  outside the top-k is scored exactly; otherwise (SmolLM2 splits "Likely" and "Impossible")
  every row is scored exactly, re-reading the prompt and the response.
- samples=k: k verdicts sampled at temperature 1 (VERDICT_TOKENS each), each read for the
  first of the three words (case-insensitive, whole words); the value is their mean, as the
  paper sums sampled votes, and 0.5 when no verdict names one.

Every token it reads or generates is counted in Usage.scorer_tokens.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence

from ponder.scorers.base import Rating
from ponder.scorers.judge import JudgeScorer, _as_scorer
from ponder.types import GenerateRequest, SamplingParams, ScoreRequest, SequenceState, Usage

VALUE_QUESTION = ("Can the solution so far still reach a correct final answer? "
                  "Answer Sure, Likely or Impossible.")
WORDS = ("Sure", "Likely", "Impossible")
VALUES = (1.0, 0.5, 0.0)
VERDICT_TOKENS = 4  # a sampled verdict's length: the word and a little slack
UNREAD = 0.5  # the value when no sampled verdict names a word


class ValuePromptScorer(JudgeScorer):
    """The value of each response's newest state from `engine` (see the module).

    samples: 0 reads the three words' probabilities; k >= 1 samples k verdicts.
    seed: the sampled verdicts' seed (each state's own, so batching changes nothing).
    """

    def __init__(self, engine, separator: str = "\n\n", samples: int = 0, seed: int | None = 0,
                 aggregation: str = "last", top_k: int = 20, question: str = VALUE_QUESTION,
                 words: Sequence[str] = WORDS, values: Sequence[float] = VALUES):
        if len(words) != len(values) or len(words) < 2:
            raise ValueError("give one value per verdict word (at least two words)")
        if samples < 0:
            raise ValueError(f"samples must be >= 0 (0: read the probabilities), got {samples}")
        if top_k < len(words):
            raise ValueError(f"top_k must be >= {len(words)} (it must hold every word)")
        super().__init__(engine, "step", separator, aggregation, words[0], words[1], top_k,
                         step_question=question)
        self.words, self.values = tuple(words), tuple(float(v) for v in values)
        self.samples, self.seed = samples, seed
        self.name = "value_prompt"
        self._pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in self.words) + r")\b",
                                   re.IGNORECASE)

    # ---- reading a verdict -------------------------------------------------------------

    def expected(self, logprobs: Sequence[float]) -> float:
        """The value under the words' probabilities normalized over the words."""
        top = max(logprobs)
        if top == float("-inf"):
            return UNREAD
        weights = [math.exp(x - top) for x in logprobs]
        return sum(w * v for w, v in zip(weights, self.values, strict=True)) / sum(weights)

    def read(self, verdict: str) -> float | None:
        """The value a sampled verdict names (its first word among the words), or None."""
        found = self._pattern.search(verdict)
        if found is None:
            return None
        return self.values[[w.lower() for w in self.words].index(found.group(1).lower())]

    def mean_verdict(self, verdicts: Sequence[str]) -> float:
        read = [v for v in map(self.read, verdicts) if v is not None]
        return sum(read) / len(read) if read else UNREAD

    # ---- the judge's two paths, reading three words instead of two ---------------------

    def _from_states(self, items, states) -> list[Rating | None]:
        if not self.samples and any(len(w) > 1 for chat in {_is_chat(it.prompt) for it in items}
                                    for w in self._word_tokens(chat)):
            return [None] * len(items)  # a word of several tokens: only the exact path reads it
        requests = []
        for it, state in zip(items, states, strict=True):
            requests.append(GenerateRequest(state=self._asking(state, _is_chat(it.prompt)),
                                            params=self._params(it.response)))
        out: list[Rating | None] = []
        for it, gen in zip(items, self.engine.generate(requests), strict=True):
            usage = _as_scorer(gen.usage)
            if self.samples:
                out.append(self._rating(self.mean_verdict([c.text for c in gen.completions]),
                                        usage))
                continue
            top = gen.completions[0].top_logprobs[0]
            ids = [w[0] for w in self._word_tokens(_is_chat(it.prompt))]
            if any(i not in top for i in ids):
                out.append(None)  # the exact fallback
                continue
            out.append(self._rating(self.expected([top[i] for i in ids]), usage))
        return out

    def _exact(self, jobs: list[tuple]) -> tuple[list[float], list[Usage]]:
        """Each (prompt, response, target)'s value from the question asked after the text:
        the words scored with engine.score, or (samples > 0) verdicts sampled."""
        if self.samples:
            requests = [GenerateRequest(self._context(p, r, t), self._params(r))
                        for p, r, t in jobs]
            gens = self.engine.generate(requests) if requests else []
            return ([self.mean_verdict([c.text for c in g.completions]) for g in gens],
                    [_as_scorer(g.usage) for g in gens])
        requests = []
        for prompt, response, target in jobs:
            context = self._context(prompt, response, target)
            requests += [ScoreRequest(context, list(w)) for w in self._word_tokens(_is_chat(prompt))]
        scored = self.engine.score(requests) if requests else []
        k = len(self.words)
        values, usages = [], []
        for j in range(0, len(scored), k):
            rows = scored[j:j + k]
            values.append(self.expected([s.sum_logprob for s in rows]))
            usages.append(_as_scorer(Usage.sum(s.usage for s in rows)))
        return values, usages

    def _asking(self, state: SequenceState, chat: bool) -> SequenceState:
        """`state` followed by the question's tokens (the judge's suffix)."""
        suffix = self._suffix(chat, "step")
        if state.token_ids and state.token_ids[-1] == suffix[0]:
            suffix = suffix[1:]  # the response already ends with the turn's end (its EOS)
        return state.extend(suffix)

    def _params(self, response: str) -> SamplingParams:
        if not self.samples:
            return SamplingParams(temperature=0.0, max_tokens=1, logprobs=self.top_k)
        seed = None if self.seed is None else zlib.crc32(f"{self.seed}:{response}".encode())
        return SamplingParams(n=self.samples, temperature=1.0, max_tokens=VERDICT_TOKENS,
                              seed=seed)

    def _word_tokens(self, chat: bool) -> tuple[tuple[int, ...], ...]:
        """Each word's tokens as a reply (chat: the reply starts with it; text: " Sure")."""
        if chat not in self._words:
            space = "" if chat else " "
            words = tuple(tuple(self._bare(f"{space}{w}")) for w in self.words)
            if not all(words) or len(set(words)) < len(words):
                raise ValueError(f"cannot tokenize the words {self.words} apart")
            self._words[chat] = words
        return self._words[chat]


def _is_chat(prompt) -> bool:
    return not isinstance(prompt, str)
