"""Code tasks: HumanEval problems, code extraction, sandboxed execution, grading by tests
and execution-equivalence voting.

    from ponder.tasks.code import code_task
    task = code_task("humaneval")
    ok = task.grade(problem, task.extract(model_text))

The grading function stays in ponder.tasks.code.grade: exporting it here would hide
the module.
"""

from ponder.tasks.code.extract import extract_code
from ponder.tasks.code.grade import assemble, grade_many
from ponder.tasks.code.humaneval import load_humaneval
from ponder.tasks.code.sandbox import Limits, Outcome, Sandbox
from ponder.tasks.code.task import CODE_TASKS, CodeTask, code_task, render

__all__ = [
    "CODE_TASKS",
    "CodeTask",
    "Limits",
    "Outcome",
    "Sandbox",
    "assemble",
    "code_task",
    "extract_code",
    "grade_many",
    "load_humaneval",
    "render",
]
