"""Best-of-N and weighted voting by the model's own certainty, with no verifier.

`by="self_certainty"` (Kang et al., 2025): each trace scores the mean over its tokens of
KL(uniform || next-token distribution) (scorers.self_certainty). `by="tail_confidence"`
(DeepConf's tail score, Fu et al., 2025): the mean token confidence (-mean of the top-k
log-probabilities) over the trace's last `tail` tokens, where the answer is.

Both are read from what the engine returned with the samples: no scorer, no extra forward
pass. Engines that compute self-certainty in their sampling pass (native, llama.cpp, table)
give it exactly; on engines with top-k log-probabilities only (vLLM, OpenAI servers) it is
approximated from them (scorers.self_certainty.topk_self_certainty); an engine with neither
is refused. `weighted=True` votes instead of picking the top trace: Kang et al.'s Borda vote,
where the trace ranked r-th (1 = most certain) of N adds (N - r + 1) ** borda_power to its
answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ponder.engines.base import require
from ponder.scorers.self_certainty import (
    engine_vocab_size,
    mean_certainty,
    token_self_certainties,
)
from ponder.strategies.base import (
    candidates_from,
    check_problems,
    default_render,
    result,
    sample_all,
)
from ponder.strategies.confidence import token_confidences, trace_score
from ponder.strategies.cost import Cost, sampling_cost
from ponder.strategies.voting import vote, vote_table
from ponder.tasks.extract import extract_answer
from ponder.types import Completion, SamplingParams

MEASURES = ("self_certainty", "tail_confidence")


@dataclass(frozen=True)
class SelfCertainty:
    params: SamplingParams = field(
        default_factory=lambda: SamplingParams(n=8, temperature=0.7, max_tokens=512))
    by: str = "self_certainty"
    weighted: bool = False
    borda_power: float = 0.5  # Kang et al. find p in [0.3, 1.2] works; 0: plain majority
    tail: int = 256  # tail_confidence: the last this many tokens (DeepConf uses 2048)
    top_logprobs: int = 5  # k, for tail confidence and the top-k approximation
    name: str = "self_certainty"

    def __post_init__(self) -> None:
        if self.by not in MEASURES:
            raise ValueError(f"unknown measure by={self.by!r}: choose one of {', '.join(MEASURES)}")
        if self.tail < 1:
            raise ValueError(f"tail must be >= 1 token, got {self.tail}")
        if self.top_logprobs < 1:
            raise ValueError(f"top_logprobs must be >= 1, got {self.top_logprobs}")
        if not self.borda_power >= 0:
            raise ValueError(f"borda_power must be >= 0, got {self.borda_power}")

    def worst_case(self, prompt_tokens: int) -> Cost:
        # The measures come with the samples: nothing is read again.
        return sampling_cost(prompt_tokens, self.params.n, self.params.max_tokens)

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        if self.by == "tail_confidence":
            require(engine, f"{self.name} by tail_confidence", "top_logprobs")
        problems = check_problems(problems)
        # Top-k log-probabilities: tail confidence needs them; self-certainty falls back
        # on them where the engine does not compute it exactly.
        wants_top = self.by == "tail_confidence" or engine.capabilities.top_logprobs
        params = replace(self.params, logprobs=self.top_logprobs if wants_top else 0)
        vocab = engine_vocab_size(engine)
        out = []
        for problem, gen in zip(problems, sample_all(problems, engine, params, render),
                                strict=True):
            comps = gen.completions
            scores = [self.measure(c, vocab) for c in comps]
            # `approximate`: self-certainty from the top-k log-probabilities only.
            candidates = tuple(
                replace(c, meta={**c.meta, self.by: s, "approximate": self.by == "self_certainty"
                                 and comp.self_certainties is None})
                for c, s, comp in zip(candidates_from(comps, extract, scores), scores, comps,
                                      strict=True))
            answers = [c.answer for c in candidates]
            rounded = [round(s, 6) for s in scores]
            if self.weighted:
                weights = borda_weights(scores, self.borda_power)
                answer, chosen = vote(answers, weights)
                out.append(result(problem, answer, candidates, gen.usage, chosen=chosen,
                                  by=self.by, scores=rounded,
                                  votes=vote_table(answers, weights)))
            else:
                best = max(range(len(comps)), key=lambda i: (scores[i], -i))
                out.append(result(problem, answers[best], candidates, gen.usage, chosen=best,
                                  by=self.by, scores=rounded))
        return out

    def measure(self, completion: Completion, vocab_size: int | None = None) -> float:
        """The trace's score under `by`; higher is more certain."""
        if self.by == "tail_confidence":
            return trace_score(token_confidences(completion.top_logprobs), "tail",
                               tail=self.tail)
        values = token_self_certainties(completion, vocab_size)
        if values is None:
            raise ValueError("the engine returned neither self-certainties nor top-k "
                             "log-probabilities; use one with top_logprobs (--engine hf)")
        return mean_certainty(values)


def borda_weights(scores: Sequence[float], power: float) -> list[float]:
    """Kang et al.'s Borda weights: rank r (1 = highest score; ties by position) of N
    gets (N - r + 1) ** power."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    weights = [0.0] * len(scores)
    for rank, i in enumerate(order, start=1):
        weights[i] = float(len(scores) - rank + 1) ** power
    return weights
