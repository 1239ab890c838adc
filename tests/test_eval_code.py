"""`ponder eval` on a code task: programs are graded by running their tests in the sandbox."""

import json
import os
import sqlite3
import subprocess
import sys


def test_eval_humaneval_grades_programs_in_the_sandbox(tmp_path):
    db = tmp_path / "code.db"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(
        [sys.executable, "-m", "ponder.cli", "eval", "--task", "humaneval", "--strategy", "greedy",
         "--limit", "2", "--max-tokens", "48", "--out", str(db), "--no-progress"],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT problem_id, correct, meta FROM samples ORDER BY problem_id").fetchall()
        problems = conn.execute("SELECT problem_id, correct FROM problems").fetchall()
    assert [r[0] for r in rows] == ["HumanEval/0", "HumanEval/1"]
    for _, correct, meta in rows:
        outcome = json.loads(meta).get("exec")
        if outcome is None:  # nothing extractable: graded wrong without running
            assert correct == 0
            continue
        assert outcome["status"] in {"passed", "failed", "error", "timeout", "killed"}
        assert bool(correct) == (outcome["status"] == "passed")
    assert len(problems) == 2
