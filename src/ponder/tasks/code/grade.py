"""Grade code by running it: the program HumanEval's reference harness assembles, in the
sandbox.

    program = assemble(problem, completion)
    outcomes = grade_many([(problem, completion), ...], sandbox)   # parallel, in order

The program is prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})" for a
raw continuation (as the reference harness builds it). A completion that defines the
entry point itself (a whole function from a chat model) follows the prompt on a new line
instead, so the prompt's imports and helper functions stay available and the new
definition replaces the stub.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ponder.tasks.code.extract import defines
from ponder.tasks.code.sandbox import Limits, Outcome, Sandbox

NO_CODE = Outcome("error", "no code extracted")


def fields(problem: Any) -> tuple[str, str, str]:
    """(prompt, test, entry_point) of a Problem (from its metadata) or a HumanEval row."""
    meta: Mapping[str, Any] = getattr(problem, "metadata", problem)
    try:
        prompt, test, entry = meta["prompt"], meta["test"], meta["entry_point"]
    except (KeyError, TypeError):
        raise ValueError("not a code problem: need metadata prompt, test and entry_point "
                         "(load one with load_task('humaneval'))") from None
    return prompt, test, entry


def solution(problem: Any, completion: str) -> str:
    """The prompt completed: prompt + continuation, or prompt then a whole function."""
    prompt, _, entry = fields(problem)
    if defines(completion, entry):
        return prompt.rstrip("\n") + "\n\n" + completion.strip("\n") + "\n"
    return prompt + completion


def assemble(problem: Any, completion: str) -> str:
    """The program whose clean exit means the completion passed the problem's tests."""
    _, test, entry = fields(problem)
    return solution(problem, completion) + "\n" + test + "\n" + f"check({entry})\n"


def grade_many(items: Sequence[tuple[Any, str | None]], sandbox: Sandbox | None = None,
               limits: Limits | None = None) -> list[Outcome]:
    """Run every (problem, completion) through its tests, `sandbox.workers` at a time.
    A None completion (nothing extracted) is an error without running anything."""
    sandbox = sandbox or Sandbox(limits)
    todo = [(i, assemble(p, c)) for i, (p, c) in enumerate(items) if c is not None]
    outcomes: list[Outcome] = [NO_CODE] * len(items)
    for (i, _), outcome in zip(todo, sandbox.run_many([prog for _, prog in todo], limits),
                               strict=True):
        outcomes[i] = outcome
    return outcomes


def grade(problem: Any, completion: str | None, sandbox: Sandbox | None = None,
          limits: Limits | None = None) -> Outcome:
    """One completion's outcome (see grade_many)."""
    return grade_many([(problem, completion)], sandbox, limits)[0]
