"""What every strategy shares: the run() signature, per-problem seeds, and Result building.

A strategy is a frozen config dataclass with a `name` and a
`run(problems, engine, scorer=None, extract=..., render=...) -> list[Result]` method. It never
imports an engine, a dataset or a grader: it gets an Engine, maybe a Scorer, a function that
turns a problem into a prompt and one that extracts an answer from text.

Strategies batch across problems: one engine call covers every problem's samples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import field
from typing import Any, Protocol

from ponder.tasks.extract import extract_answer
from ponder.tasks.prompts import build_prompt
from ponder.types import Candidate, Completion, Problem, Prompt, Result, SamplingParams, Usage

Extract = Callable[[str], str | None]
Render = Callable[[Problem], Prompt]


def internal(default: Any):
    """A config field that is not a strategy option: the registry, CLI and server leave it
    at its default (an implementation switch, or a cost a request must not set)."""
    return field(default=default, metadata={"option": False})


def default_render(problem: Problem) -> Prompt:
    """Chat messages asking for a boxed final answer."""
    return build_prompt(problem, "boxed", chat=True)


class Strategy(Protocol):
    name: str

    def run(self, problems: Sequence[Problem], engine, scorer=None,
            extract: Extract = extract_answer, render: Render = default_render) -> list[Result]: ...


def problem_seed(seed: int | None, problem_id: str, salt: str = "") -> int | None:
    """A per-problem seed that depends only on the run seed and the problem id, so a resumed
    or re-chunked run samples exactly what an uninterrupted one would."""
    if seed is None:
        return None
    digest = hashlib.sha256(f"{seed}\x00{problem_id}\x00{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def sampling_for(params: SamplingParams, problem: Problem, salt: str = "", **changes) -> SamplingParams:
    """`params` with the problem's own seed (and any other changes)."""
    from dataclasses import replace

    return replace(params, seed=problem_seed(params.seed, problem.id, salt), **changes)


def candidates_from(completions: Sequence[Completion], extract: Extract,
                    scores: Sequence[float | None] | None = None) -> tuple[Candidate, ...]:
    scores = scores if scores is not None else [None] * len(completions)
    return tuple(
        Candidate(text=c.text, answer=extract(c.text), score=s, tokens=len(c.token_ids),
                  meta={"finish_reason": c.finish_reason, "sum_logprob": c.sum_logprob,
                        "mean_logprob": c.mean_logprob, **confidence_meta(c.entropies)})
        for c, s in zip(completions, scores, strict=True)
    )


def confidence_meta(entropies) -> dict[str, float]:
    """{"confidence": mean negative entropy of the model's next-token distributions} (the
    confidence of Karan & Du's Figure 4), when the engine reported entropies."""
    if not entropies:
        return {}
    return {"confidence": -sum(entropies) / len(entropies)}


def check_problems(problems: Sequence[Any]) -> list[Problem]:
    problems = list(problems)
    for p in problems:
        if not isinstance(p, Problem):
            raise ValueError(f"strategies take ponder.tasks.Problem objects, got {type(p).__name__}")
    return problems


def result(problem: Problem, answer: str | None, candidates: tuple[Candidate, ...],
           usage: Usage, *, chosen: int | None, **trace: Any) -> Result:
    """A Result; `chosen` (required, so no strategy forgets it) is the index of the candidate
    the answer comes from, or None."""
    return Result(problem_id=problem.id, answer=answer, candidates=candidates, usage=usage,
                  trace=trace, chosen=chosen)


def sample_all(problems: Sequence[Problem], engine, params: SamplingParams, render: Render,
               salt: str = ""):
    """One batched engine call: `params.n` samples for every problem, each with its own seed."""
    from ponder.types import GenerateRequest

    return engine.generate([GenerateRequest(render(p), sampling_for(params, p, salt))
                            for p in problems])
