"""Self-consistency by execution for code (Wang et al., 2022, with the clustering of
AlphaCode, Li et al., 2022, and the agreement idea of CodeT, Chen et al., 2022): sample N
programs, run each in the sandbox on inputs drawn from the prompt's own examples, group the
programs whose outputs agree on every input, and return the first program of the largest
group. Programs that fail to load do not vote; ties go to the group that voted first.

Probe execution costs CPU, not tokens: Usage stays the engine's; the trace holds the vote
table, the probe calls and the execution seconds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ponder.strategies.base import candidates_from, check_problems, internal, result, sample_all
from ponder.strategies.cost import Cost, sampling_cost
from ponder.tasks.code.equivalence import probe_calls, signatures_many, vote
from ponder.tasks.code.extract import extract_code
from ponder.tasks.code.grade import fields
from ponder.tasks.code.sandbox import Limits, Sandbox
from ponder.tasks.code.task import render as render_code
from ponder.types import SamplingParams


@dataclass(frozen=True)
class CodeConsistency:
    params: SamplingParams = field(
        default_factory=lambda: SamplingParams(n=8, temperature=0.8, max_tokens=512))
    limits: Limits = field(default_factory=lambda: Limits(timeout=10.0))
    workers: int | None = internal(None)  # sandboxed runs at once (default: the CPU count)
    name: str = "code_consistency"

    def worst_case(self, prompt_tokens: int) -> Cost:
        return sampling_cost(prompt_tokens, self.params.n, self.params.max_tokens)

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_code,
            render=render_code):
        problems = check_problems(problems)
        for problem in problems:
            fields(problem)  # ValueError now, before any sampling, for a non-code problem
        generations = sample_all(problems, engine, self.params, render)
        candidates = [candidates_from(g.completions, extract) for g in generations]
        calls = [probe_calls(p) for p in problems]
        started = time.perf_counter()
        sigs = signatures_many([(p, [c.answer for c in cs])
                                for p, cs in zip(problems, candidates, strict=True)],
                               Sandbox(self.limits, self.workers), calls=calls)
        seconds = time.perf_counter() - started
        out = []
        for problem, gen, cands, sig, probe in zip(problems, generations, candidates, sigs,
                                                   calls, strict=True):
            winner, table = vote(sig)
            if winner is None:  # nothing ran: the first program extracted, if any
                winner = next((i for i, c in enumerate(cands) if c.answer is not None), None)
            cands = tuple(replace(c, meta={**c.meta, "signature": s})
                          for c, s in zip(cands, sig, strict=True))
            answer = cands[winner].answer if winner is not None else None
            out.append(result(problem, answer, cands, gen.usage, votes=table, chosen=winner,
                              probes=probe, exec_seconds=round(seconds / len(problems), 4)))
        return out
