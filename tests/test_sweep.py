"""`ponder sweep`: grid expansion (no model), and one tiny real sweep that resumes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ponder.cli import main
from ponder.commands.sweep import parse_grid
from ponder.eval.store import Store


def test_parse_grid_reads_values_as_yaml():
    assert parse_grid(["n=1,2,4", "alpha=2.5,4", "prompt=boxed,cot"]) == {
        "n": [1, 2, 4], "alpha": [2.5, 4], "prompt": ["boxed", "cot"]}
    for bad in (["n"], ["n="], ["=1,2"], ["n=1", "n=2"], ["task=arith,gsm8k"]):
        with pytest.raises(ValueError):
            parse_grid(bad)


def test_dry_run_lists_the_product_and_skips_keys_a_strategy_lacks(tmp_path, capsys):
    out = tmp_path / "sweep.db"
    code = main(["sweep", "--task", "arith:1", "--strategy", "greedy,sc,power", "--grid",
                 "n=1,2", "--grid", "alpha=2,4", "--limit", "2", "--dry-run", "--out", str(out)])
    assert code == 0
    labels = [line.split(None, 1)[1] for line in capsys.readouterr().out.splitlines()]
    # greedy takes neither n nor alpha; sc takes n; power takes both
    assert labels[0].startswith("greedy") and len(labels) == 1 + 2 + 4
    assert sum("alpha=" in label for label in labels) == 4
    assert not out.exists()  # a dry run writes nothing


def test_sweep_rejects_options_no_strategy_takes(tmp_path, capsys):
    for grid in ("bogus=1,2", "alpha=2,4"):  # unknown; not an option of sc
        assert main(["sweep", "--task", "arith:1", "--strategy", "sc", "--grid", grid,
                     "--dry-run", "--out", str(tmp_path / "x.db")]) == 2
        assert "no strategy of this sweep" in capsys.readouterr().err


@pytest.mark.slow
def test_small_real_sweep_stores_every_point_and_resumes(tmp_path):
    out = tmp_path / "sweep.db"
    cmd = [sys.executable, "-m", "ponder.cli", "sweep", "--task", "arith:1", "--strategy", "sc",
           "--grid", "n=1,2", "--limit", "2", "--max-tokens", "16", "--no-progress",
           "--threads", "1", "--out", str(out)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "self_consistency@2" in first.stdout
    with Store(out, read_only=True) as store:
        runs = store.runs()
        assert sorted(r.config["options"]["n"] for r in runs) == [1, 2]
        assert [r.done for r in runs] == [2, 2]
        counts = store.counts()
    assert counts == (2, 4, 2 * 1 + 2 * 2)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resuming, 2/2" in again.stderr
    with Store(out, read_only=True) as store:
        assert store.counts() == counts  # nothing run twice
