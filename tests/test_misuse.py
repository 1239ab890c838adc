"""Misuse of the Python API, the run store and task files: each a ValueError naming what is
wrong, never a raw error from deep inside, a hang, or a result quietly wrong."""

from __future__ import annotations

import json
import sqlite3

import pytest

from ponder.eval.spec import make_spec
from ponder.eval.store import ProblemRow, Store
from ponder.strategies.registry import make_strategy
from ponder.tasks.datasets import load_task
from ponder.types import (
    N_MAX,
    GenerateRequest,
    SamplingParams,
    ScoreRequest,
    SequenceState,
)


@pytest.mark.parametrize("make, words", [
    (lambda: GenerateRequest(b"What is 1 + 1?"), "got bytes"),
    (lambda: GenerateRequest(123), "got int"),
    (lambda: GenerateRequest([{"role": "alien", "content": "hi"}]), "role 'alien'"),
    (lambda: GenerateRequest([{"role": "user", "content": None}]), "content must be text"),
    (lambda: GenerateRequest("hi", None), "params must be a SamplingParams"),
    (lambda: GenerateRequest("hi", {"n": 2}), "params must be a SamplingParams"),
    (lambda: GenerateRequest("hi", should_stop=5), "should_stop must be a function"),
    (lambda: GenerateRequest("hi", keep_state="yes"), "keep_state must be true or false"),
    (lambda: ScoreRequest("What is 2 + 2?", b"4"), "continuation must be text"),
    (lambda: ScoreRequest(None, "4"), "must be text, chat messages"),
    (lambda: ScoreRequest("q", "4", params={"temperature": 1}), "params must be"),
    (lambda: SamplingParams(n=N_MAX + 1), f"at most {N_MAX}"),
    (lambda: SamplingParams(stop=None), "stop must be a string or a list"),
    (lambda: SamplingParams(seed=-1), "seed must be in [0, 2**63)"),
    (lambda: SamplingParams(seed=2**63), "seed must be in [0, 2**63)"),
    (lambda: SamplingParams(top_k=2**31), "top_k must be at most"),
    (lambda: SamplingParams(ignore_eos="no"), "ignore_eos must be true or false"),
    (lambda: SequenceState((1, 2, 3), cached=-3), "cached must be"),
    (lambda: SequenceState((1, 2, 3)).extend("abc"), "extend takes token ids"),
    (lambda: make_strategy(None), "must be a string"),
    (lambda: make_strategy("sc", budget=-5), "budget must be a whole number"),
])
def test_misuse_is_a_value_error_naming_it(make, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")
                       .replace("*", r"\*").replace("[", r"\[")):
        make()


def test_values_the_engine_cannot_hold_sample_as_their_limits():
    assert SamplingParams(temperature=1e-40).greedy
    assert SamplingParams(temperature=1e-5).temperature == 1e-5
    assert SamplingParams(top_p=5e-324).top_p == 1e-7


# ---- the run store ----------------------------------------------------------------------


def test_a_database_of_another_program_is_never_written(tmp_path):
    path = tmp_path / "theirs.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(ValueError, match="another program .*users"):
        Store(path)
    with sqlite3.connect(path) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        assert tables == {"users"}
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_a_problem_stored_twice_names_the_other_writer(tmp_path):
    row = ProblemRow("p1", 0, "What is 1 + 1?", "2", "2", True, {}, {}, ())
    with Store(tmp_path / "runs.db") as store:
        store.upsert_run("run", "label", {"a": 1}, {"a": 1}, planned=1)
        store.add_problem("run", row)
        with pytest.raises(ValueError, match="another ponder process is writing this run"):
            store.add_problem("run", row)
        assert len(store.problems("run")) == 1


def test_a_task_file_changed_in_place_is_another_run(tmp_path):
    task = tmp_path / "mine.jsonl"
    task.write_text(json.dumps({"question": "What is 1 + 1?", "answer": "2"}) + "\n")
    first = make_spec({"task": str(task), "strategy": "greedy"}).run_id
    assert make_spec({"task": str(task), "strategy": "greedy"}).run_id == first
    task.write_text(json.dumps({"question": "What is 7 * 8?", "answer": "56"}) + "\n")
    assert make_spec({"task": str(task), "strategy": "greedy"}).run_id != first


# ---- task files ---------------------------------------------------------------------------


def test_task_files_read_as_json_lines_do(tmp_path):
    task = tmp_path / "odd.jsonl"
    rows = [{"question": "Line one\u2028What is 2 + 2?", "answer": "4"},
            {"question": "What is 3 + 3?\u0085", "answer": "6"}]
    # A byte-order mark first, as editors on Windows write; U+2028 and U+0085 inside strings.
    task.write_text("\ufeff" + "\n".join(json.dumps(r, ensure_ascii=False) for r in rows),
                    encoding="utf-8")
    problems = load_task(str(task))
    assert [p.question for p in problems] == [r["question"] for r in rows]


def test_task_file_bytes_that_are_not_utf8_are_named_by_line(tmp_path):
    task = tmp_path / "latin1.jsonl"
    task.write_bytes(b'{"question": "1 + 1?", "answer": "2"}\n'
                     b'{"question": "caf\xe9?", "answer": "3"}\n')
    with pytest.raises(ValueError, match=r"latin1.jsonl:2: not UTF-8"):
        load_task(str(task))


def test_a_deeply_nested_line_is_named(tmp_path):
    task = tmp_path / "deep.jsonl"
    task.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ValueError, match="deep.jsonl:1: not valid JSON"):
        load_task(str(task))


@pytest.mark.slow
def test_a_state_the_engine_cannot_continue_is_named(engine):
    ids = engine.tokenize("What is 2 + 3?")
    [gen] = engine.generate([GenerateRequest(ids, SamplingParams(max_tokens=2, temperature=0),
                                             keep_state=True)])
    state = gen.completions[0].state
    with pytest.raises(ValueError, match=r"token ids must be in \[0, "):
        engine.generate([GenerateRequest(state=state.extend([10**7]))])
    half = tuple((k.half(), v.half()) for k, v in state.cache)
    with pytest.raises(ValueError, match="cache is torch.float16, this engine runs torch.float32"):
        engine.generate([GenerateRequest(state=SequenceState(state.token_ids, half,
                                                             state.cached))])


@pytest.mark.slow
def test_scores_worked_out_in_slices_equal_one_pass(engine, monkeypatch):
    from ponder.engines import hf

    ids = engine.tokenize("Count: " + "one two three " * 30)
    request = [ScoreRequest(ids[:3], ids[3:], SamplingParams(temperature=0.7, top_p=0.9))]
    [whole] = engine.score(request)
    monkeypatch.setattr(hf, "SCORE_ROWS", 7)
    [sliced] = engine.score(request)
    assert sliced.logprobs == whole.logprobs
    assert sliced.sampling_logprobs == whole.sampling_logprobs
    assert sliced.self_certainties == whole.self_certainties
