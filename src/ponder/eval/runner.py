"""The eval loop: a RunSpec's problems through its strategy, graded, streamed into the Store.

    spec = make_spec({"task": "arith:1", "strategy": "self_consistency", "n": 8, "limit": 50})
    problems = spec.load_problems()
    outcome = run_eval(spec, engine, store, problems)

Problems go to the strategy in chunks whose boundaries are fixed by task position, so a
strategy batches across a chunk's problems while results still reach the store one
transaction per problem. Per-problem seeds come from (seed, problem id), so a resumed run
samples exactly what an uninterrupted one would. What a run is (RunSpec, make_spec,
recipes) lives in `ponder.eval.spec`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from ponder.eval.spec import RunSpec, make_spec
from ponder.eval.store import ProblemRow, SampleRow, Store
from ponder.types import Problem

# make_spec is re-exported: `from ponder.eval.runner import make_spec, run_eval` reads well.
__all__ = ["RunOutcome", "Progress", "RunSpec", "auto_chunk", "begin_run", "graded_row", "make_run_scorer",
           "make_spec", "run_chunk", "run_eval", "todo_chunks"]


@dataclass
class RunOutcome:
    """What one run_eval call did: the problems selected, how many were already stored,
    and how many it added."""

    spec: RunSpec
    problem_ids: list[str]
    skipped: int
    added: int = 0
    correct: int = 0
    tokens: int = 0
    seconds: float = 0.0
    # Distributed runs: problems added per worker ("host:pid"); empty for a local run.
    workers: dict[str, int] = field(default_factory=dict)

    def record(self, row: ProblemRow) -> None:
        """Count one problem just stored."""
        self.added += 1
        self.correct += row.correct
        self.tokens += _total_tokens(row.usage)


def begin_run(spec: RunSpec, store: Store,
              problems: Sequence[Problem]) -> tuple[RunOutcome, set[str], list[ProblemRow]]:
    """Record this invocation of `spec` (limit, label, planned count) and find what is
    stored already: the RunOutcome to fill, the stored problem ids, and their rows (which
    start the progress bar)."""
    run_id = spec.run_id
    store.upsert_run(run_id, spec.label, spec.config(), spec.to_dict(), len(problems))
    done = store.done_ids(run_id)
    outcome = RunOutcome(spec, [p.id for p in problems], skipped=sum(p.id in done for p in problems))
    prior = store.problems(run_id, outcome.problem_ids) if done else []
    return outcome, done, prior


def todo_chunks(problems: Sequence[Problem], chunk: int,
                done: set[str]) -> list[list[tuple[int, Problem]]]:
    """The problems still to run as (task position, problem), grouped in chunks.

    Chunk boundaries follow task positions (not what is left), so a resumed run batches
    the remaining problems of a chunk exactly as an uninterrupted run did."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    chunks = ([(i, p) for i, p in enumerate(problems[start:start + chunk], start)
               if p.id not in done] for start in range(0, len(problems), chunk))
    return [todo for todo in chunks if todo]


def run_chunk(spec: RunSpec, strategy, engine, scorer, todo: Sequence[tuple[int, Problem]],
              grade_timeout: float = 3.0) -> Iterator[ProblemRow]:
    """One strategy call over a chunk's problems; each graded row as it is ready."""
    code = spec.code_task()
    extract = {"extract": code.extract} if code is not None else {}
    results = strategy.run([p for _, p in todo], engine, scorer, render=spec.render, **extract)
    for (position, problem), result in zip(todo, results, strict=True):
        yield graded_row(problem, position, result, grade_timeout, code)


def make_run_scorer(spec: RunSpec, engine):
    """The run's scorer on `engine`, or None."""
    if not spec.scorer:
        return None
    from ponder.scorers.registry import make_scorer

    return make_scorer(spec.scorer, engine)


def run_eval(spec: RunSpec, engine, store: Store, problems: Sequence[Problem] | None = None,
             *, chunk: int | None = None, progress: bool = True,
             grade_timeout: float = 3.0) -> RunOutcome:
    """Run (or resume) `spec`: skip stored problems, feed the rest through the strategy in
    chunks, grade, and store each problem in its own transaction. KeyboardInterrupt
    propagates after the current transaction finished or rolled back."""
    problems = list(problems if problems is not None else spec.load_problems())
    outcome, done, prior = begin_run(spec, store, problems)
    # A caller that knows the run is complete passes no engine (none is loaded for nothing).
    if engine is None and any(p.id not in done for p in problems):
        raise ValueError(f"run {spec.label!r} has problems left to run: it needs an engine")
    size = chunk or (auto_chunk(spec, engine.max_batch_size) if engine is not None else 1)
    chunks = todo_chunks(problems, size, done)
    strategy = spec.build_strategy()
    scorer = make_run_scorer(spec, engine)
    bar = Progress(spec.label, len(problems), prior, progress)
    started = time.perf_counter()
    try:
        for todo in chunks:
            for row in run_chunk(spec, strategy, engine, scorer, todo, grade_timeout):
                store.add_problem(spec.run_id, row)
                outcome.record(row)
                bar.update(row)
            bar.refresh()  # a chunk's rows arrive together, faster than tqdm redraws
    finally:
        outcome.seconds = time.perf_counter() - started
        bar.close()
    return outcome


def auto_chunk(spec: RunSpec, max_batch_size: int) -> int:
    """Problems per strategy call: enough to fill the engine's batch, 1 to 16."""
    return max(1, min(16, max_batch_size // max(1, spec.samples_per_problem)))


def graded_row(problem: Problem, position: int, result, timeout: float = 3.0,
               code=None) -> ProblemRow:
    """A strategy Result graded against the gold answer: the chosen answer and every
    candidate's extracted answer (each distinct answer graded once). For a code task every
    distinct program runs in the sandbox, all at once, and its outcome goes into the meta."""
    from ponder.tasks.grade import is_equiv

    verdicts: dict[str | None, bool] = {None: False}
    outcomes: dict[str, dict] = {}
    if code is not None:
        programs = list(dict.fromkeys(
            a for a in [result.answer, *(c.answer for c in result.candidates)] if a is not None))
        for program, outcome in zip(programs, code.outcomes([(problem, a) for a in programs]),
                                    strict=True):
            verdicts[program], outcomes[program] = outcome.passed, outcome.to_dict()

    def meta(candidate) -> dict:
        extra = {"exec": outcomes[candidate.answer]} if candidate.answer in outcomes else {}
        return {**candidate.meta, **extra}

    def ok(answer: str | None) -> bool:
        if answer not in verdicts:
            verdicts[answer] = is_equiv(answer, problem.answer, timeout)
        return verdicts[answer]

    samples = tuple(SampleRow(c.text, c.answer, c.score, ok(c.answer), c.tokens, meta(c))
                    for c in result.candidates)
    return ProblemRow(problem.id, position, problem.question, problem.answer, result.answer,
                      ok(result.answer), result.usage.to_dict(), dict(result.trace), samples)


def _total_tokens(usage: Mapping[str, float]) -> int:
    return int(usage.get("forward_tokens", 0) + usage.get("scorer_tokens", 0))


class Progress:
    """tqdm on stderr: done/total, ETA, and accuracy and tokens so far as the postfix."""

    def __init__(self, label: str, total: int, prior: Sequence[ProblemRow], enabled: bool):
        import sys

        from tqdm import tqdm

        self.correct = sum(r.correct for r in prior)
        self.done = len(prior)
        self.tokens = sum(_total_tokens(r.usage) for r in prior)
        self.bar = tqdm(total=total, initial=self.done, desc=label, unit="problem",
                        file=sys.stderr, disable=not enabled, dynamic_ncols=True)
        self._postfix()

    def update(self, row: ProblemRow) -> None:
        self.done += 1
        self.correct += row.correct
        self.tokens += _total_tokens(row.usage)
        self._postfix()
        self.bar.update(1)

    def _postfix(self) -> None:
        if self.done:
            self.bar.set_postfix_str(f"acc={self.correct / self.done:.3f} "
                                     f"tokens={_human(self.tokens)}", refresh=False)

    def refresh(self) -> None:
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _human(count: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(count) < 1000:
            return f"{count:.0f}{unit}" if unit == "" else f"{count:.1f}{unit}"
        count /= 1000
    return f"{count:.1f}T"
