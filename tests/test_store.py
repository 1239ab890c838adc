"""The SQLite run store: schema, round trips, atomic problems, concurrent readers."""

from __future__ import annotations

import math
import sqlite3

import pytest

from ponder.eval.store import (
    SCHEMA_VERSION,
    ProblemRow,
    SampleRow,
    Store,
    problem_key,
    run_id_for,
)

CONFIG = {"task": "arith:1", "strategy": "self_consistency", "options": {"n": 2, "seed": 0}}


def row(pid: str, position: int = 0, samples=None, trace=None) -> ProblemRow:
    samples = samples if samples is not None else (
        SampleRow("so 7", "7", -0.5, True, 3, {"finish_reason": "eos"}),
        SampleRow("so 8", "8", float("-inf"), False, 4, {}),
    )
    return ProblemRow(pid, position, f"question {pid}", "7", "7", True,
                      {"prompt_tokens": 10, "generated_tokens": 7, "forward_tokens": 17,
                       "scorer_tokens": 0, "calls": 1, "wall_seconds": 0.25},
                      trace if trace is not None else {"votes": [{"answer": "7", "votes": 1}]},
                      tuple(samples))


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "runs.db") as s:
        s.upsert_run("r1", "sc", CONFIG, {**CONFIG, "limit": 3}, planned=3)
        yield s


def test_new_store_is_wal_with_schema_version(store):
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    version = store.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    assert int(version[0]) == SCHEMA_VERSION


def test_run_id_is_a_hash_of_the_canonical_config():
    reordered = {"options": {"seed": 0, "n": 2}, "strategy": "self_consistency", "task": "arith:1"}
    assert run_id_for(CONFIG) == run_id_for(reordered)
    assert run_id_for(CONFIG) != run_id_for({**CONFIG, "options": {"n": 2, "seed": 1}})
    assert len(run_id_for(CONFIG)) == 16
    assert problem_key("r1", "p1") != problem_key("r1", "p2") != problem_key("r2", "p1")


def test_problem_and_samples_round_trip(store):
    nan_sample = SampleRow("junk", None, float("nan"), False, 1, {"x": float("inf")})
    store.add_problem("r1", row("b", 1))
    store.add_problem("r1", row("a", 0, samples=[*row("a").samples, nan_sample]))
    got = store.problems("r1")
    assert [p.problem_id for p in got] == ["a", "b"]  # task order, not insertion order
    a = got[0]
    assert a.answer == "7" and a.correct and a.usage["forward_tokens"] == 17
    assert a.trace == {"votes": [{"answer": "7", "votes": 1}]}
    assert [s.extracted for s in a.samples] == ["7", "8", None]
    assert a.samples[0].meta == {"finish_reason": "eos"}
    assert a.samples[1].score == -math.inf
    assert a.samples[2].score is None and a.samples[2].meta == {"x": "inf"}
    assert store.done_ids("r1") == {"a", "b"}
    assert store.problems("r1", ["b"])[0].problem_id == "b"
    [run] = store.runs()
    assert (run.run_id, run.label, run.done, run.planned) == ("r1", "sc", 2, 3)
    assert run.config == CONFIG


def test_upsert_run_keeps_created_and_updates_the_rest(store):
    [before] = store.runs()
    store.upsert_run("r1", "renamed", CONFIG, {**CONFIG, "limit": 9}, planned=9)
    [after] = store.runs()
    assert after.created == before.created
    assert (after.label, after.planned, after.spec["limit"]) == ("renamed", 9, 9)


def test_a_failing_sample_rolls_back_its_problem(store):
    bad = SampleRow(None, "1", 0.0, False, 1, {})  # text NOT NULL: the insert fails
    with pytest.raises(sqlite3.IntegrityError):
        store.add_problem("r1", row("p", samples=[row("p").samples[0], bad]))
    assert store.counts() == (1, 0, 0)
    assert not store.conn.in_transaction


def test_ctrl_c_between_statements_leaves_nothing_half_written(store):
    class Interrupting:
        def __repr__(self):  # called while the samples are serialized, after the problem row
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.add_problem("r1", row("p", samples=[SampleRow("t", "1", 0.0, False, 1,
                                                            {"obj": Interrupting()})]))
    assert store.counts() == (1, 0, 0)
    store.add_problem("r1", row("p"))  # the same problem can then be written
    assert store.counts() == (1, 1, 2)


def test_duplicate_problem_is_refused_and_the_first_kept(store):
    store.add_problem("r1", row("p"))
    with pytest.raises(ValueError, match="another ponder process is writing this run"):
        store.add_problem("r1", row("p"))
    assert store.counts() == (1, 1, 2)


def test_reader_sees_whole_problems_only_while_a_writer_is_mid_transaction(store):
    reader = Store(store.path, read_only=True)
    store.add_problem("r1", row("a"))
    store.conn.execute("BEGIN IMMEDIATE")
    store.conn.execute(
        "INSERT INTO problems VALUES ('r1', 'b', 'k', 1, 'q', '7', '7', 1, 0, 0, 0, 0, 0, 0, "
        "'{}', 0)")
    # The writer holds its transaction open; the reader is not blocked and sees only "a".
    assert [p.problem_id for p in reader.problems("r1")] == ["a"]
    store.conn.execute("ROLLBACK")
    store.add_problem("r1", row("b", 1))
    assert [len(p.samples) for p in reader.problems("r1")] == [2, 2]
    reader.close()


def test_read_only_never_creates_a_file(tmp_path):
    missing = tmp_path / "nope.db"
    with pytest.raises(ValueError, match="no such run store"):
        Store(missing, read_only=True)
    assert not missing.exists()
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ValueError, match="not a ponder run store"):
        Store(other, read_only=True)
    text = tmp_path / "text.db"
    text.write_text("hello, not sqlite " * 100)
    with pytest.raises(ValueError, match="not a ponder run store"):
        Store(text)
