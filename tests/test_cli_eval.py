"""`ponder eval | report | run` as a user runs them: real subprocesses, a real SQLite file.

The kill test interrupts an eval with SIGINT, resumes it and SIGKILLs it, resumes again,
and checks that the store stayed consistent throughout and that the final results equal
those of an uninterrupted run with the same seed, sample for sample.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from ponder.cli import main

LIMIT, N = 8, 2
EVAL = ["eval", "--task", "arith:1", "--strategy", "sc", "--n", str(N), "--limit", str(LIMIT),
        "--max-tokens", "24", "--prompt", "fewshot", "--chunk", "2", "--no-progress"]


# OpenMP threads that spin while waiting crawl when other processes share the cores (a
# busy CI box); passive waiting changes no result, only how long these tests take there.
ENV = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def ponder(*args: str) -> list[str]:
    return [sys.executable, "-m", "ponder.cli", *args]


def start(*args: str) -> subprocess.Popen:
    # SIGINT back to its default in the child: under a background job (`cmd &`) the shell
    # makes it ignored, and the child would inherit that and never see Ctrl-C.
    return subprocess.Popen(ponder(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def stored(db) -> int:
    """Problems stored so far (0 while the file or its tables do not exist yet)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return conn.execute("SELECT COUNT(*) FROM problems").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def wait_for(proc: subprocess.Popen, db, at_least: int, timeout: float = 600) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = stored(db)
        if count >= at_least:
            return count
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"eval exited early ({proc.returncode}) at {count} problems:\n{err}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {at_least} problems stored after {timeout} s")


def check_consistent(db) -> int:
    """Every stored problem has exactly its N samples, and nothing else is there."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        per_problem = conn.execute(
            "SELECT p.problem_id, COUNT(s.idx), MIN(s.idx), MAX(s.idx) FROM problems p "
            "LEFT JOIN samples s USING (run_id, problem_id) GROUP BY p.problem_id").fetchall()
        orphans = conn.execute(
            "SELECT COUNT(*) FROM samples s WHERE NOT EXISTS (SELECT 1 FROM problems p "
            "WHERE p.run_id = s.run_id AND p.problem_id = s.problem_id)").fetchone()[0]
        runs = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    assert orphans == 0 and runs == 1
    assert all((count, low, high) == (N, 0, N - 1) for _, count, low, high in per_problem)
    return len(per_problem)


def samples_of(db) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT p.run_id, p.problem_id, p.answer, p.correct, p.generated_tokens, "
            "p.forward_tokens, s.idx, s.text, s.extracted, s.correct, s.tokens FROM problems p "
            "JOIN samples s USING (run_id, problem_id) ORDER BY p.problem_id, s.idx").fetchall()


def final_summary(stdout: str) -> dict:
    [summary] = json.loads(stdout.strip().splitlines()[-1])["runs"]
    summary.pop("seconds_per_problem")  # the one figure that may differ between runs
    return summary


def test_interrupted_and_killed_eval_resumes_to_the_uninterrupted_result(tmp_path):
    reference_db, db = tmp_path / "reference.db", tmp_path / "runs.db"
    reference = start(*EVAL, "--out", str(reference_db), "--json")

    # 1. Ctrl-C mid-run: a clean exit (130) that says how to resume.
    proc = start(*EVAL, "--out", str(db))
    wait_for(proc, db, at_least=2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    after_sigint = check_consistent(db)
    assert 2 <= after_sigint < LIMIT

    # 2. Resume, then SIGKILL mid-run: no chance to clean up, transactions must suffice.
    proc = start(*EVAL, "--out", str(db), "--resume")
    wait_for(proc, db, at_least=after_sigint + 1)
    proc.kill()
    proc.wait(timeout=60)
    after_sigkill = check_consistent(db)
    assert after_sigint < after_sigkill < LIMIT

    # 3. `--resume` alone finishes every unfinished run in the file; a report reads the
    #    file while the eval writes to it.
    proc = start("eval", "--resume", "--out", str(db), "--no-progress", "--json")
    wait_for(proc, db, at_least=after_sigkill)
    report = subprocess.run(ponder("report", str(db), "--json"), capture_output=True,
                            text=True, timeout=300, env=ENV)
    assert report.returncode == 0, report.stderr
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert f"resuming, {after_sigkill}/{LIMIT}" in err
    assert check_consistent(db) == LIMIT

    ref_out, ref_err = reference.communicate(timeout=600)
    assert reference.returncode == 0, ref_err
    assert samples_of(db) == samples_of(reference_db)
    assert final_summary(out) == final_summary(ref_out)

    # The report shows the run with maj@k and pass@k for k = 1, 2.
    report = subprocess.run(ponder("report", str(db)), capture_output=True, text=True,
                            timeout=300)
    assert report.returncode == 0, report.stderr
    assert "self_consistency@2 [fewshot]" in report.stdout
    assert "maj@k" in report.stdout and "pass@k" in report.stdout
    summary = json.loads(subprocess.run(ponder("report", str(db), "--json"), capture_output=True,
                                        text=True, timeout=300).stdout)["runs"][0]
    assert summary["problems"] == LIMIT and set(summary["metrics"]) >= {"maj@2", "pass@2"}


@pytest.mark.parametrize("args, message", [
    (["eval", "--task", "arith:1", "--strategy", "tree_search"], "unknown strategy"),
    (["eval", "--task", "arithmetic", "--strategy", "sc"], "unknown task"),
    (["eval", "--task", "arith:1", "--strategy", "greedy,bogus"], "unknown strategy"),
    (["eval", "--task", "arith:1", "--n", "many"], "invalid int value"),
    (["eval", "--task", "arith:1", "--temprature", "0.5"], "unrecognized arguments"),
    (["eval", "--task", "arith:1", "--strategy", "bon"], "needs a scorer"),
    (["eval", "--recipe", "no-such-recipe"], "shipped"),
    (["eval", "--task", "arith:1", "--model", "no-such-model"], "unknown model"),
    (["eval", "--resume"], "no such run store"),
])
def test_bad_input_fails_cleanly_and_writes_nothing(tmp_path, args, message):
    db = tmp_path / "runs.db"
    result = subprocess.run(ponder(*args, "--out", str(db)), capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert os.listdir(tmp_path) == []


def test_report_of_a_missing_file_fails_cleanly(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing.db")]) == 2
    assert "no such run store" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_run_prints_answer_votes_and_usage():
    argv = ["run", "What is 3 + 4?", "--strategy", "self-consistency", "--n", "3",
            "--max-tokens", "24", "--prompt", "fewshot", "--seed", "0"]
    text = subprocess.run(ponder(*argv), capture_output=True, text=True, timeout=600, env=ENV)
    assert text.returncode == 0, text.stderr
    assert "answer:" in text.stdout and "votes:" in text.stdout and "usage:" in text.stdout
    result = subprocess.run(ponder(*argv, "--json"), capture_output=True, text=True,
                            timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert f"answer: {data['answer']}" in text.stdout  # same seed, same answer
    assert len(data["candidates"]) == 3
    assert sum(v["votes"] for v in data["votes"]) == sum(
        c["answer"] is not None for c in data["candidates"])
    assert data["usage"]["generated_tokens"] == sum(c["tokens"] for c in data["candidates"])


@pytest.mark.parametrize("command", ["eval", "sweep"])
@pytest.mark.parametrize("place", ["folder", "proc", "not_sqlite"])
def test_an_unusable_store_path_is_one_line_and_a_non_zero_exit(tmp_path, capsys, command,
                                                                 place):
    # (An unwritable file cannot be made here: the tests run as root, which writes anyway.)
    out = {"folder": tmp_path, "proc": "/proc/ponder-test.db",
           "not_sqlite": tmp_path / "notes.db"}[place]
    if place == "not_sqlite":
        out.write_text("these are notes, not a database\n")
    args = ["--task", "arith:1", "--limit", "1", "--out", str(out)]
    args += ["--strategy", "greedy"] if command == "eval" else ["--strategy", "sc",
                                                                "--grid", "n=1,2"]
    code = main([command, *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert str(out) in err and "Traceback" not in err


def test_an_option_of_the_wrong_type_is_named(capsys, tmp_path):
    code = main(["eval", "--task", "arith:1", "--strategy", "power", "-o", "alpha=abc",
                 "--out", str(tmp_path / "runs.db")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "'alpha'" in err and "a number" in err and "'abc'" in err
