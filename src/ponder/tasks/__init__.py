"""Everything a strategy or an eval needs to know about a task, independent of any model:
problems (datasets, arith), prompts, answer extraction and grading."""

from ponder.tasks.datasets import Problem, load_task, task_names
from ponder.tasks.extract import extract_answer
from ponder.tasks.grade import Grade, grade, is_equiv, is_equiv_many, normalize_answer
from ponder.tasks.prompts import STYLES, build_prompt

__all__ = [
    "STYLES",
    "Grade",
    "Problem",
    "build_prompt",
    "extract_answer",
    "grade",
    "is_equiv",
    "is_equiv_many",
    "load_task",
    "normalize_answer",
    "task_names",
]
