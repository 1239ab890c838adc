"""Training problems must never be evaluation problems, in content, not just in id.

- `arith:N` and `arith` are the evaluation split of the generated task; its training split
  `arith-train:N` shares no operands with it by construction (tasks.arith), so it is the
  one to train on.
- The vendored benchmarks (MATH-500, GSM8K test, AIME, AMC, HumanEval) are evaluation sets.
- A user's own JSONL file is compared with the evaluation task by normalised question text.

Training on evaluation problems is refused, with the reason, unless forced.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from ponder.tasks.code.task import CODE_TASKS
from ponder.types import Problem

EVALUATION_SETS = ("math500", "gsm8k", "aime24", "amc23", *CODE_TASKS)


def normalise_question(text: str) -> str:
    """Lower case, unicode-normalised, whitespace collapsed, edge punctuation dropped: two
    copies of a question that differ only in layout compare equal."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip(" .?!:;")


def check_training_task(task: str, force: bool = False) -> None:
    """Refuse a built-in evaluation task as training data (unless forced)."""
    key = task.strip().lower()
    if force:
        return
    if key == "arith" or key.startswith("arith:"):
        level = key.partition(":")[2]
        train = f"arith-train:{level}" if level else "arith-train"
        raise ValueError(f"{task} is arith's evaluation split: train on {train} instead (its "
                         "operands never appear in evaluation problems), or pass --force to "
                         "train on evaluation problems anyway")
    if key in EVALUATION_SETS or key in ("gsm8k_test", "math-500", "math"):
        raise ValueError(f"{task} is an evaluation set: train on your own problems (a JSONL "
                         "file, checked against the evaluation task), or pass --force")


def overlapping(train: Iterable[Problem], evaluation: Iterable[Problem]) -> list[str]:
    """Ids of training problems whose normalised question is also an evaluation question."""
    seen = {normalise_question(p.question) for p in evaluation}
    return [p.id for p in train if normalise_question(p.question) in seen]


def check_disjoint(train: list[Problem], evaluation: list[Problem], eval_task: str,
                   force: bool = False) -> None:
    shared = overlapping(train, evaluation)
    if shared and not force:
        shown = ", ".join(shared[:5]) + (" ..." if len(shared) > 5 else "")
        raise ValueError(f"{len(shared)} training problems are also in {eval_task} (same "
                         f"question text): {shown}. Remove them from the training file, or "
                         "pass --force")
