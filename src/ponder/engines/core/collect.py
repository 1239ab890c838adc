"""Finished samples -> Completions and Generations: the one place an engine builds them.

Every engine records each request as a `JobRecord` and each of its samples as a
`SampleRecord` (the engines that run ponder's decode loop use `decode.DecodeSample`, a
SampleRecord that also samples), then `collect_generations` turns them into Generations with
the same Usage rules everywhere: a request's prefill is counted once, each sample adds the
positions its own decode fed, and wall time is shared out by forward tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ponder.types import (
    Completion,
    GenerateRequest,
    Generation,
    SamplingParams,
    SequenceState,
    Usage,
)


@dataclass(eq=False)
class JobRecord:
    """One request while an engine runs it. `ids`: the prompt's tokens; `seed`: the request
    seed its samples' seeds derive from; `prefill_tokens`: prompt positions the model
    computed for it (past any cache); `calls`: backend calls it took."""

    index: int
    request: GenerateRequest
    params: SamplingParams
    ids: list[int]
    seed: int
    prefill_tokens: int = 0
    calls: int = 1
    samples: list[SampleRecord] = field(default_factory=list)


@dataclass(eq=False)
class SampleRecord:
    """One sample of a job. `forward_tokens`: positions its decode fed through the model
    (the prefill is the job's); `state`: what a later request continues from (None: the
    prompt and the tokens, nothing cached); `entropies`, `self_certainties`: None where the
    engine has none."""

    job: Any
    index: int
    seed: int | None = None
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    sampling_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    entropies: list[float] | None = None
    self_certainties: list[float] | None = None
    forward_tokens: int = 0
    finish_reason: str | None = None
    state: SequenceState | None = None

    def __post_init__(self) -> None:
        self.job.samples.append(self)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


def wall_share(jobs, started: float) -> float:
    """Seconds per forward token since `started`: batched work is shared out by tokens fed."""
    total = sum(j.prefill_tokens + sum(s.forward_tokens for s in j.samples) for j in jobs)
    return (time.perf_counter() - started) / (total or 1)


def collect_generations(jobs, share: float) -> list[Generation]:
    """Each job's Generation: its samples as Completions, in sample order, and its Usage
    (prefill once + every sample's decode), wall time shared out at `share` seconds per
    forward token."""
    out = []
    for job in jobs:
        completions = []
        for s in sorted(job.samples, key=lambda s: s.index):
            usage = Usage(generated_tokens=len(s.token_ids), forward_tokens=s.forward_tokens,
                          wall_seconds=s.forward_tokens * share)
            completions.append(Completion(
                text=s.text, token_ids=tuple(s.token_ids), logprobs=tuple(s.logprobs),
                sampling_logprobs=tuple(s.sampling_logprobs), finish_reason=s.finish_reason,
                usage=usage,
                state=s.state or SequenceState(tuple(job.ids) + tuple(s.token_ids)),
                top_logprobs=tuple(s.top_logprobs) if job.params.logprobs else None,
                seed=s.seed,
                entropies=tuple(s.entropies) if s.entropies is not None else None,
                self_certainties=(tuple(s.self_certainties)
                                  if s.self_certainties is not None else None),
            ))
        prefill = Usage(prompt_tokens=len(job.ids), forward_tokens=job.prefill_tokens,
                        calls=job.calls, wall_seconds=job.prefill_tokens * share)
        usage = prefill + Usage.sum(c.usage for c in completions)
        out.append(Generation(tuple(completions), usage, tuple(job.ids)))
    return out
