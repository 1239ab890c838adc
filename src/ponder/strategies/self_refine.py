"""Self-refinement (Madaan et al., 2023, "Self-Refine"): draft an answer, ask the model to
critique it, ask it to revise given the critique, and repeat. A revision replaces the current
answer only when its score improves; the default score is the mean token log-probability of
the answer under the model given the original prompt, so no extra model is needed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ponder.scorers.base import ScoreItem
from ponder.scorers.likelihood import LikelihoodScorer
from ponder.strategies.base import check_problems, default_render, result, sample_all, sampling_for
from ponder.strategies.cost import TEMPLATE_TOKENS, Cost
from ponder.tasks.extract import extract_answer
from ponder.types import Candidate, GenerateRequest, SamplingParams

CRITIQUE_PROMPT = (
    "Here is a question and a proposed answer.\n\nQuestion: {question}\n\n"
    "Proposed answer:\n{answer}\n\n"
    "Check the proposed answer step by step. Point out every mistake in its reasoning or "
    "arithmetic. If it is correct, say that it is correct."
)
REVISE_PROMPT = (
    "Question: {question}\n\nPrevious answer:\n{answer}\n\nFeedback on it:\n{critique}\n\n"
    "Write an improved answer that fixes the problems the feedback found. Explain step by "
    "step and put the final answer within \\boxed{{}}."
)


@dataclass(frozen=True)
class SelfRefine:
    iterations: int = 2
    params: SamplingParams = field(
        default_factory=lambda: SamplingParams(temperature=0.7, max_tokens=512))
    critique_tokens: int = 256
    name: str = "self_refine"

    def worst_case(self, prompt_tokens: int) -> Cost:
        """A draft, then per iteration a critique and a revision, each prompt holding the
        question and the answers before it (the templates add at most TEMPLATE_TOKENS); the
        likelihood scorer reads the draft and every revision with its prompt."""
        t, c = self.params.max_tokens, self.critique_tokens
        ask = prompt_tokens + t + c + TEMPLATE_TOKENS  # the longest critique or revise prompt
        rounds = 1 + self.iterations
        tokens = (prompt_tokens + t + self.iterations * (2 * ask + c + t)
                  + rounds * (prompt_tokens + t))
        return Cost(tokens, ask + max(t, c), ("iterations", "max_tokens"))

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError("self_refine needs iterations >= 1")

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        problems = check_problems(problems)
        scorer = scorer or LikelihoodScorer(engine, "mean")
        one = replace(self.params, n=1)
        drafts = sample_all(problems, engine, one, render, salt="draft")
        usage = [g.usage for g in drafts]
        current = [g.completions[0].text for g in drafts]
        history = [[{"step": "draft", "text": t}] for t in current]
        scores, rate_usage = self._rate(problems, current, scorer, render)
        usage = [u + r for u, r in zip(usage, rate_usage, strict=True)]
        candidates = [[Candidate(t, extract(t), s, len(g.completions[0].token_ids),
                                 {"step": "draft", "kept": True})]
                      for t, s, g in zip(current, scores, drafts, strict=True)]
        chosen = [0] * len(problems)  # the draft, until a revision scores higher
        for it in range(self.iterations):
            critiques = self._ask(engine, problems, CRITIQUE_PROMPT, current, None,
                                  replace(one, max_tokens=self.critique_tokens), f"critique{it}")
            revisions = self._ask(engine, problems, REVISE_PROMPT, current,
                                  [g.completions[0].text for g in critiques], one, f"revise{it}")
            texts = [g.completions[0].text for g in revisions]
            new_scores, rate_usage = self._rate(problems, texts, scorer, render)
            for i in range(len(problems)):
                usage[i] = usage[i] + critiques[i].usage + revisions[i].usage + rate_usage[i]
                kept = new_scores[i] > scores[i]
                history[i].append({"step": f"critique {it + 1}",
                                   "text": critiques[i].completions[0].text})
                history[i].append({"step": f"revision {it + 1}", "text": texts[i],
                                   "score": new_scores[i], "kept": kept})
                candidates[i].append(Candidate(
                    texts[i], extract(texts[i]), new_scores[i],
                    len(revisions[i].completions[0].token_ids),
                    {"step": f"revision {it + 1}", "kept": kept}))
                if kept:
                    current[i], scores[i] = texts[i], new_scores[i]
                    chosen[i] = len(candidates[i]) - 1
        return [result(p, extract(current[i]), tuple(candidates[i]), usage[i], chosen=chosen[i],
                       history=history[i], final_score=scores[i])
                for i, p in enumerate(problems)]

    @staticmethod
    def _ask(engine, problems, template, answers, critiques, params, salt):
        requests = []
        for i, p in enumerate(problems):
            text = template.format(question=p.question, answer=answers[i],
                                   critique=critiques[i] if critiques else "")
            requests.append(GenerateRequest([{"role": "user", "content": text}],
                                            sampling_for(params, p, salt)))
        return engine.generate(requests)

    @staticmethod
    def _rate(problems, texts, scorer, render):
        ratings = scorer.score([ScoreItem(p.question, render(p), t)
                                for p, t in zip(problems, texts, strict=True)])
        return [r.score for r in ratings], [r.usage for r in ratings]
