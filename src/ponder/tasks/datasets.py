"""Benchmark problems: the vendored sets, the generated `arith` task, or any JSONL file.

    load_task("math500", levels=[1, 2], limit=50, shuffle_seed=0)
    load_task("arith:1", limit=50)
    load_task("my.jsonl", question_field="prompt", answer_field="target")

Every gold answer is a string: GSM8K's number after `####` without commas, AMC's
`27.0` as `"27"`, AIME's `"025"` as `"25"`, MATH-500's LaTeX untouched. Files are
read with importlib.resources when asked for, never at import time.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ponder.tasks import arith
from ponder.tasks.code.task import CODE_TASKS, canonical_task, load_code_task
from ponder.tasks.subset import check_limit, subset
from ponder.types import Problem

# name -> (file, question field, answer field, id field or None)
_VENDORED: dict[str, tuple[str, str, str, str | None]] = {
    "math500": ("math500_test.jsonl", "problem", "answer", "unique_id"),
    "gsm8k": ("gsm8k_test.jsonl", "question", "answer", None),
    "aime24": ("aime24_test.jsonl", "problem", "answer", "id"),
    "amc23": ("amc23_test.jsonl", "problem", "answer", "id"),
}
_ALIASES = {"math-500": "math500", "math_500": "math500", "gsm-8k": "gsm8k"}
_ARITH = ("arith", "arith:1", "arith:2", "arith:3", "arith-train", "arith-train:1",
          "arith-train:2", "arith-train:3")
# Field names tried, in order, when a user file's fields are not given.
_QUESTION_FIELDS = ("question", "problem", "prompt", "input")
_ANSWER_FIELDS = ("answer", "gold", "target")
_ID_FIELDS = ("id", "unique_id", "problem_id")


def task_names() -> list[str]:
    """The built-in task names load_task accepts (besides paths to .jsonl files)."""
    return [*_VENDORED, *_ARITH, *CODE_TASKS]


def load_task(
    name_or_path: str | Path,
    limit: int | None = None,
    shuffle_seed: int | None = None,
    levels: Iterable[int] | None = None,
    subjects: Iterable[str] | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
    id_field: str | None = None,
) -> list[Problem]:
    """Load a task's problems.

    name_or_path: a built-in name (see task_names()) or a path to a JSONL file.
    limit: keep the first `limit` problems (after filtering and shuffling).
    shuffle_seed: shuffle with this seed before the limit (None keeps file order).
    levels, subjects: keep only problems with these levels / subjects (MATH-500 and
        files with `level`/`subject` fields; subjects match case-insensitively).
    question_field, answer_field, id_field: field names in a user file; by default the
        first present of question/problem/prompt/input, answer/gold/target and
        id/unique_id/problem_id (no id field: ids are `<file stem>-<line index>`).
    """
    check_limit(limit)
    if shuffle_seed is not None and (
        isinstance(shuffle_seed, bool) or not isinstance(shuffle_seed, int)
    ):
        raise ValueError(f"shuffle_seed must be an integer or None, got {shuffle_seed!r}")
    problems = _load_all(name_or_path, question_field, answer_field, id_field)
    if levels is not None:
        problems = _filter_levels(problems, levels)
    if subjects is not None:
        problems = _filter_subjects(problems, subjects)
    return subset(problems, limit, shuffle_seed)


def _load_all(
    name_or_path: str | Path,
    question_field: str | None,
    answer_field: str | None,
    id_field: str | None,
) -> list[Problem]:
    if isinstance(name_or_path, str):
        key = _ALIASES.get(name_or_path.strip().lower(), name_or_path.strip().lower())
        if key in _VENDORED:
            file, qf, af, idf = _VENDORED[key]
            text = resources.files("ponder.tasks").joinpath("data", file).read_text("utf-8")
            return _parse_rows(
                jsonl_rows(text, file), key, qf, af, idf, gold_numeric=key != "math500"
            )
        if key in _ARITH or key.startswith(("arith:", "arith-train:")):
            return _load_arith(key)
        if canonical_task(key) is not None:  # graded by running tests: see ponder.tasks.code
            return load_code_task(key)
    path = Path(name_or_path)
    if path.suffix.lower() in (".jsonl", ".json") or path.exists():
        if not path.is_file():
            raise ValueError(f"no such file: {path}")
        text = read_text_file(path)
        rows = list(jsonl_rows(text, str(path)))
        if not rows:
            raise ValueError(f"{path} holds no problems (an empty JSONL file)")
        qf = question_field or _pick_field(rows[0], _QUESTION_FIELDS, "question", path)
        af = answer_field or _pick_field(rows[0], _ANSWER_FIELDS, "answer", path)
        idf = id_field or next((f for f in _ID_FIELDS if f in rows[0][1]), None)
        return _parse_rows(
            iter(rows), path.stem, qf, af, idf, gold_numeric=False, id_required=id_field is not None
        )
    raise ValueError(
        f"unknown task {str(name_or_path)!r}: known tasks are {', '.join(task_names())}, "
        "or give a path to a .jsonl file"
    )


def read_text_file(path: Path) -> str:
    """A text file's UTF-8 text (a leading byte-order mark dropped, as editors on Windows
    write one); bytes that are not UTF-8 are an error naming the file and the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x}); save "
                         "the file as UTF-8") from None


def jsonl_rows(text: str, source: str, skip: Callable[[int, str], None] | None = None
               ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line. A line that is not a JSON object is
    an error naming it, or, with `skip`, reported to skip(line number, why) and passed over."""
    # Lines end at "\n" only: str.splitlines() also breaks at U+2028, U+0085 and others,
    # which JSON strings may hold as they are.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            why = f"not valid JSON ({exc.msg})"
        except RecursionError:
            why = "not valid JSON here (nested too deeply)"
        else:
            if isinstance(row, dict):
                yield lineno, row
                continue
            why = f"expected a JSON object, got {type(row).__name__}"
        if skip is None:
            raise ValueError(f"{source}:{lineno}: {why}")
        skip(lineno, why)


def _pick_field(first: tuple[int, dict], candidates: Sequence[str], role: str, path: Path) -> str:
    lineno, row = first
    for name in candidates:
        if name in row:
            return name
    raise ValueError(
        f"{path}:{lineno}: no {role} field; looked for {', '.join(candidates)} and found "
        f"{', '.join(row) or 'no fields'}; name it with --{role}-field / {role}_field="
    )


def _parse_rows(
    rows: Iterable[tuple[int, dict[str, Any]]],
    task: str,
    question_field: str,
    answer_field: str,
    id_field: str | None,
    gold_numeric: bool,
    id_required: bool = False,
) -> list[Problem]:
    problems = []
    seen: set[str] = set()
    for index, (lineno, row) in enumerate(rows):
        required = (
            (question_field, answer_field, id_field)
            if id_required
            else (question_field, answer_field)
        )
        for name in required:
            if name not in row:
                raise ValueError(f"{task}: line {lineno} has no field {name!r}")
        question = row[question_field]
        if not isinstance(question, str) or not question.strip():
            raise ValueError(
                f"{task}: line {lineno}: field {question_field!r} must be non-empty text"
            )
        gold = gold_to_string(row[answer_field], numeric=gold_numeric)
        if gold is None:
            raise ValueError(
                f"{task}: line {lineno}: field {answer_field!r} must be text or a number, "
                f"got {row[answer_field]!r}"
            )
        if id_field is not None and id_field in row and row[id_field] is not None:
            pid = str(row[id_field])
            if task in ("aime24", "amc23"):
                pid = f"{task}-{pid}"
        else:
            pid = f"{task}-{index:04d}"
        if pid in seen:
            raise ValueError(f"{task}: line {lineno}: duplicate id {pid!r}")
        seen.add(pid)
        # Drop the fields already used, and copies of the question (AIME/AMC carry two).
        metadata = {
            k: v
            for k, v in row.items()
            if k not in (question_field, answer_field, id_field) and v != question
        }
        if isinstance(row[answer_field], str) and "####" in row[answer_field]:
            metadata["solution"] = row[answer_field]  # GSM8K: the worked answer
        metadata["task"] = task
        problems.append(Problem(pid, question, gold, metadata))
    return problems


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def gold_to_string(value: Any, numeric: bool = False) -> str | None:
    """A gold answer as a string: `27.0` -> "27"; GSM8K "...#### 1,234" -> "1234";
    with numeric=True, an integer text loses commas and leading zeros ("025" -> "25").
    None for values that cannot be an answer (None, lists, objects)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if not isinstance(value, str):
        return None
    text = value
    if "####" in text:  # GSM8K style: worked solution, then "#### <answer>"
        text = text.rsplit("####", 1)[1]
        numeric = True
    text = text.strip()
    if numeric:
        compact = text.replace(",", "")
        if _NUMBER.fullmatch(compact):
            if "." in compact:
                number = float(compact)
                return str(int(number)) if number.is_integer() else compact
            return str(int(compact))
    return text


def _load_arith(key: str) -> list[Problem]:
    """`arith`, `arith:N` (the evaluation split) or `arith-train`, `arith-train:N` (the
    training split, content-disjoint from it: see tasks.arith)."""
    split = "train" if key.startswith("arith-train") else "eval"
    key = key.replace("arith-train", "arith", 1)
    if key == "arith":
        levels = sorted(arith.LEVELS)
    else:
        level_text = key.split(":", 1)[1]
        if not level_text.isdigit() or int(level_text) not in arith.LEVELS:
            raise ValueError(
                f"unknown arith level {level_text!r}: use one of "
                f"{', '.join(f'arith:{lv}' for lv in sorted(arith.LEVELS))} (or arith for all)"
            )
        levels = [int(level_text)]
    by_level = [arith.generate(level, split=split) for level in levels]
    # Interleave levels so that `arith` with a limit still covers every level.
    items = [item for group in zip(*by_level, strict=True) for item in group]
    return [
        Problem(
            item.id,
            item.question,
            str(item.answer),
            {
                "task": "arith",
                "level": item.level,
                "template": item.template,
                "solution": item.solution,
                "split": split,
                "content": f"{item.level}:{item.content}",
            },
        )
        for item in items
    ]


def _filter_levels(problems: list[Problem], levels: Iterable[int]) -> list[Problem]:
    wanted = set()
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, int):
            raise ValueError(f"levels must be integers, got {level!r}")
        wanted.add(level)
    have = {p.metadata.get("level") for p in problems} - {None}
    if not have:
        raise ValueError("this task has no levels to filter on (MATH-500 and arith have)")
    unknown = wanted - have
    if unknown:
        raise ValueError(f"no problems at level(s) {sorted(unknown)}; levels here: {sorted(have)}")
    return [p for p in problems if p.metadata.get("level") in wanted]


def _filter_subjects(problems: list[Problem], subjects: Iterable[str]) -> list[Problem]:
    have = {str(p.metadata["subject"]) for p in problems if "subject" in p.metadata}
    if not have:
        raise ValueError("this task has no subjects to filter on (MATH-500 has)")
    by_lower = {s.lower(): s for s in have}
    wanted = set()
    for subject in [subjects] if isinstance(subjects, str) else subjects:
        if str(subject).strip().lower() not in by_lower:
            raise ValueError(
                f"unknown subject {subject!r}; subjects here: {', '.join(sorted(have))}"
            )
        wanted.add(by_lower[str(subject).strip().lower()])
    return [p for p in problems if p.metadata.get("subject") in wanted]
