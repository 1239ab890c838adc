"""A code task as the eval harness and the strategies see it: load, render, extract, grade.

    task = code_task("humaneval")             # None for a task that is not code
    problems = task.load(limit=20, shuffle_seed=0)
    prompt = task.render(problems[0])          # chat messages (or raw text: chat=False)
    code = task.extract(model_text)            # str | None
    ok = task.grade(problems[0], code)         # runs the tests in the sandbox
    outcomes = task.outcomes([(problem, code), ...])   # parallel, each with its reason

Grading runs programs, so it is the slow part: grade many candidates with one
`outcomes`/`grade_many` call to use the worker pool.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ponder.tasks.code.extract import extract_code
from ponder.tasks.code.grade import fields, grade_many
from ponder.tasks.code.humaneval import load_humaneval
from ponder.tasks.code.sandbox import Limits, Outcome, Sandbox
from ponder.tasks.subset import check_limit, subset
from ponder.types import Problem

# Every code task: its name -> its loader. load_task, task_names and code_task read this.
CODE_TASKS: dict[str, Callable[[], list[Problem]]] = {"humaneval": load_humaneval}
_ALIASES = {"human-eval": "humaneval", "human_eval": "humaneval", "he": "humaneval"}
INSTRUCTION = ("Complete the following Python function. Reply with the whole function, "
               "with its imports, in one ```python code block.")
COT_INSTRUCTION = "Think step by step about the examples first, then write the code."


def canonical_task(name: object) -> str | None:
    """The code task's name for `name` ("HumanEval", "human-eval"), or None."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in CODE_TASKS else None


def load_code_task(name: str) -> list[Problem]:
    """All problems of a code task, in file order."""
    return CODE_TASKS[_known(name)]()


def _known(name: object) -> str:
    key = canonical_task(name)
    if key is None:
        raise ValueError(f"unknown code task {name!r}; known: {', '.join(CODE_TASKS)}")
    return key


def render(problem: Problem, style: str = "plain", chat: bool = True):
    """Chat: the prompt in a code block under an instruction to answer with the whole
    function (style "cot" also asks to reason first; other styles are the plain one).
    Raw (chat=False): the prompt itself, for a base model to continue the body."""
    prompt, _, _ = fields(problem)
    if not chat:
        return prompt
    instruction = INSTRUCTION + (" " + COT_INSTRUCTION if style == "cot" else "")
    return [{"role": "user", "content": f"{instruction}\n\n```python\n{prompt.strip()}\n```"}]


class CodeTask:
    """One code task with its sandbox (created on first use, shared by every call).

    limits: per-candidate limits (default: 10 s wall clock, 1 GB address space).
    workers: candidates run at once (default: the CPU count).
    style, chat: how render() puts a problem to the model.
    """

    def __init__(self, name: str = "humaneval", limits: Limits | None = None,
                 workers: int | None = None, style: str = "plain", chat: bool = True) -> None:
        self.name, self.limits, self.workers = _known(name), limits or Limits(), workers
        self.style, self.chat = style, chat
        self._sandbox: Sandbox | None = None

    @property
    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            self._sandbox = Sandbox(self.limits, self.workers)
        return self._sandbox

    def load(self, limit: int | None = None, shuffle_seed: int | None = None) -> list[Problem]:
        """Problems, optionally shuffled with a seed, then the first `limit`."""
        check_limit(limit)
        return subset(load_code_task(self.name), limit, shuffle_seed)

    def render(self, problem: Problem):
        return render(problem, self.style, self.chat)

    @staticmethod
    def extract(text: str) -> str | None:
        return extract_code(text)

    def outcomes(self, items: Sequence[tuple[Problem, str | None]]) -> list[Outcome]:
        """Each (problem, extracted code) run against its tests, in parallel, in order."""
        return grade_many(items, self.sandbox)

    def outcome(self, problem: Problem, extracted: str | None) -> Outcome:
        return self.outcomes([(problem, extracted)])[0]

    def grade_many(self, items: Sequence[tuple[Problem, str | None]]) -> list[bool]:
        return [o.passed for o in self.outcomes(items)]

    def grade(self, problem: Problem, extracted: str | None) -> bool:
        """Whether the code passes the problem's tests."""
        return self.outcome(problem, extracted).passed


def code_task(name: object, **options) -> CodeTask | None:
    """A CodeTask when `name` names a code task, else None (a math task or a file)."""
    key = canonical_task(name)
    return CodeTask(key, **options) if key else None
