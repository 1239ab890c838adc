"""Everything a strategy or an eval needs to know about a task, independent of any model:
problems (datasets, arith), prompts, answer extraction and grading.

`grade` (the function) stays in ponder.tasks.grade: exporting it here would hide the module.
"""

from ponder.tasks.datasets import Problem, load_task, task_names
from ponder.tasks.extract import extract_answer
from ponder.tasks.grade import is_equiv, is_equiv_many, normalize_answer
from ponder.tasks.prompts import STYLES, build_prompt

__all__ = [
    "STYLES",
    "Problem",
    "build_prompt",
    "extract_answer",
    "is_equiv",
    "is_equiv_many",
    "load_task",
    "normalize_answer",
    "task_names",
]
