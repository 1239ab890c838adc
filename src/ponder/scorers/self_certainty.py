"""Self-certainty (Kang et al., 2025, "Scalable Best-of-N Selection for Large Language Models
via Self-Certainty"): how far each next-token distribution is from uniform.

A token's self-certainty is KL(U || p_i) = -log V - (1/V) sum_v log p_i(v), in nats: 0 for a
uniform distribution, larger the more peaked. A response scores the mean over its tokens
(or, with `tail`, over its last `tail` tokens). Higher means more certain.

Where the values come from, cheapest first:
- `Completion.self_certainties`: the native, llama.cpp and table engines compute them in the
  sampling pass from the full distribution (no extra forward pass).
- an approximation from the top-k log-probabilities an engine returned (vLLM, OpenAI
  servers): the k known log-probabilities plus the remaining mass 1 - sum_j p_j spread evenly
  over the V - k other tokens. It is exact when the rest of the vocabulary is flat, and for a
  large V it tends to -log(remaining mass); it reads no model, so it costs nothing either.
- for text alone (what `best_of_n`, search and the other strategies hand a scorer), the
  engine's scoring pass over the response, counted as scorer tokens. Engines whose scoring
  pass does not report self-certainty (vLLM, OpenAI, llama.cpp) are refused with a message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

from ponder.sampling import CERTAINTY_LOGPROB_FLOOR
from ponder.scorers.base import Rating, ScoreItem
from ponder.types import Completion, ScoreRequest


def self_certainty_of(logprobs: Sequence[float]) -> float:
    """KL(uniform || p) of one full distribution given as log-probabilities (nats)."""
    if len(logprobs) == 0:
        raise ValueError("self-certainty needs a distribution over at least one token")
    floored = [max(v, CERTAINTY_LOGPROB_FLOOR) for v in logprobs]
    return -sum(floored) / len(floored) - math.log(len(floored))


def topk_self_certainty(top_logprobs: Mapping[int, float] | Sequence[float],
                        vocab_size: int | None = None) -> float:
    """Self-certainty from a step's top-k log-probabilities only: the rest of the
    probability mass is taken as spread evenly over the other vocab_size - k tokens. With no
    vocab_size, the large-vocabulary limit, -log(remaining mass)."""
    values = list(top_logprobs.values()) if isinstance(top_logprobs, Mapping) else list(top_logprobs)
    if not values:
        raise ValueError("the top-k approximation needs the step's top-k log-probabilities")
    rest = max(1.0 - sum(math.exp(v) for v in values), math.exp(CERTAINTY_LOGPROB_FLOOR))
    if vocab_size is None or vocab_size <= len(values):
        return -math.log(rest)
    others = vocab_size - len(values)
    known = sum(max(v, CERTAINTY_LOGPROB_FLOOR) for v in values)
    each = max(math.log(rest / others), CERTAINTY_LOGPROB_FLOOR)
    return -(known + others * each) / vocab_size - math.log(vocab_size)


def token_self_certainties(completion: Completion,
                           vocab_size: int | None = None) -> list[float] | None:
    """A completion's per-token self-certainty: exact when the engine reported it, else
    the top-k approximation, else None (the engine reported neither)."""
    if completion.self_certainties is not None:
        return list(completion.self_certainties)
    if completion.top_logprobs is not None:
        return [topk_self_certainty(step, vocab_size) for step in completion.top_logprobs]
    return None


def mean_certainty(values: Sequence[float], tail: int = 0) -> float:
    """The mean over every token, or over the last `tail` (tail > 0); -inf for none."""
    if tail < 0:
        raise ValueError(f"tail must be >= 0 tokens (0: every token), got {tail}")
    values = list(values)[-tail:] if tail else list(values)
    return sum(values) / len(values) if values else -math.inf


def engine_vocab_size(engine) -> int | None:
    """The engine's vocabulary size where it says (for the top-k approximation)."""
    size = getattr(engine, "vocab_size", None)
    if size is None:
        size = getattr(getattr(getattr(engine, "model", None), "config", None), "vocab_size", None)
    return size if isinstance(size, int) and size > 0 else None


class SelfCertaintyScorer:
    """Mean self-certainty of a response, over every token or the last `tail` of them.

    `rate(completions)` reads what the engine returned with each completion (no model
    call); `score(items)` reads text through the engine's scoring pass.
    """

    name = "self_certainty"

    def __init__(self, engine=None, tail: int = 0):
        if isinstance(tail, bool) or not isinstance(tail, int) or tail < 0:
            raise ValueError(f"tail must be an integer >= 0 (0: every token), got {tail!r}")
        self.engine, self.tail = engine, tail

    def rate(self, completions: Sequence[Completion]) -> list[Rating]:
        vocab = engine_vocab_size(self.engine)
        out = []
        for c in completions:
            values = token_self_certainties(c, vocab)
            if values is None:
                raise ValueError(
                    "this completion has neither self-certainties nor top-k log-probabilities:"
                    " sample with SamplingParams(logprobs=k) on an engine with top_logprobs")
            out.append(Rating(mean_certainty(values, self.tail)))
        return out

    def score(self, items: Sequence[ScoreItem]) -> list[Rating]:
        if self.engine is None:
            raise ValueError("the self_certainty scorer reads text through an engine: "
                             "make_scorer('self_certainty', engine)")
        ratings: list[Rating] = [Rating(-math.inf)] * len(items)  # nothing to read: the worst
        scorable = [i for i, it in enumerate(items) if it.response.strip()]
        scored = self.engine.score([ScoreRequest(items[i].prompt, items[i].response)
                                    for i in scorable])
        for i, s in zip(scorable, scored, strict=True):
            if s.self_certainties is None:
                raise ValueError(
                    f"the {self.engine.name!r} engine's scoring pass does not report "
                    "self-certainty; use the native engine (--engine hf), or the "
                    "self_certainty strategy, which reads it from the sampled tokens")
            usage = replace(s.usage, prompt_tokens=0, forward_tokens=0,
                            scorer_tokens=s.usage.forward_tokens)
            ratings[i] = Rating(mean_certainty(s.self_certainties, self.tail), usage=usage)
        return ratings
