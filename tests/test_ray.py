"""Distributed evals with Ray: a local Ray with 2 CPU workers, each with its own engine.

The results a distributed run stores must equal those of a local run with the same seed
and chunks, an interrupted or shorter run must resume by running only the missing
problems, and both workers must really have run problems. Without Ray installed the
tests that need it skip (scripts/install_ray.sh installs it); the error a user sees then
is tested either way.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from ponder.eval.runner import run_eval
from ponder.eval.spec import make_spec
from ponder.eval.store import Store

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="ray is not installed (scripts/install_ray.sh)")

LIMIT = 4  # problems per run; two runs (greedy and sampled)
COMMON = {"task": "arith:1", "limit": LIMIT, "max_tokens": 16, "prompt": "fewshot", "seed": 3}
GREEDY = {**COMMON, "strategy": "greedy"}
SAMPLED = {**COMMON, "strategy": "sc", "n": 2}
ENV = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def results(db) -> list[tuple]:
    """Everything a run stores that does not depend on when or where it ran."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT p.run_id, p.problem_id, p.position, p.answer, p.correct, p.prompt_tokens, "
            "p.generated_tokens, p.forward_tokens, p.trace, s.idx, s.text, s.extracted, "
            "s.score, s.correct, s.tokens, s.meta FROM problems p JOIN samples s "
            "USING (run_id, problem_id) ORDER BY p.run_id, p.problem_id, s.idx").fetchall()


def created(db) -> dict[tuple[str, str], float]:
    with sqlite3.connect(db) as conn:
        return {(r, p): t for r, p, t in conn.execute(
            "SELECT run_id, problem_id, created FROM problems")}


@pytest.fixture(scope="module")
def reference(engine, tmp_path_factory):
    """Both runs on the local engine, one problem per strategy call as the Ray runs below."""
    db = tmp_path_factory.mktemp("reference") / "local.db"
    with Store(db) as store:
        for raw in (GREEDY, SAMPLED):
            run_eval(make_spec(raw), engine, store, chunk=1, progress=False)
    return db


def threads() -> int:
    """The torch threads of this process's engine: workers use as many, so that their
    arithmetic (and every sampled token) matches the local reference exactly."""
    import torch

    return torch.get_num_threads()


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """A Ray cluster as a user starts one (`ray start --head`, 2 CPUs, on loopback): its
    address. Token authentication is on, as `ray start` has it by default."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the driver sends the cluster's token
    # The cluster's token, for the head and the driver alike: a fresh machine has no
    # ~/.ray/auth_token, and `ray start` with token authentication refuses to start without one.
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    log = tmp_path / "head.log"
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    with open(log, "w") as out:
        # --block: the head lives as long as this process, which takes it down on SIGTERM.
        head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}",
                                 "--node-ip-address=127.0.0.1", "--num-cpus=2",
                                 "--include-dashboard=false", "--disable-usage-stats",
                                 "--object-store-memory=100000000"],
                                stdout=out, stderr=subprocess.STDOUT, env=os.environ,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "block forever" not in log.read_text():
            assert head.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # the session we started, and only it
            head.wait()


@needs_ray
def test_python_api_on_a_cluster_matches_a_local_run_and_resumes(engine, reference, cluster,
                                                                 tmp_path):
    from ponder.eval.distributed import RayWorkers

    db = tmp_path / "ray.db"
    with RayWorkers({"device": "cpu", "threads": threads()}, workers=2,
                    address=cluster) as pool, Store(db) as store:
        # A shorter run first: half of the problems, shared by the two workers.
        half = LIMIT // 2
        for raw in (GREEDY, SAMPLED):
            first = pool.run(make_spec({**raw, "limit": half}), store, chunk=1, progress=False)
            assert (first.added, first.skipped) == (half, 0)
            assert len(first.workers) == 2 and sum(first.workers.values()) == half
        before = created(db)
        # The full run has the same id: it resumes, running only the 3 missing problems.
        for raw in (GREEDY, SAMPLED):
            rest = pool.run(make_spec(raw), store, chunk=1, progress=False)
            assert (rest.added, rest.skipped) == (LIMIT - half, half)
            assert sum(rest.workers.values()) == LIMIT - half
            again = pool.run(make_spec(raw), store, chunk=1, progress=False)
            assert (again.added, again.skipped, again.workers) == (0, LIMIT, {})
        assert all(created(db)[key] == t for key, t in before.items())  # rows left alone
        assert store.counts() == (2, 2 * LIMIT, LIMIT + 2 * LIMIT)  # greedy 1, sc 2 samples
    assert results(db) == results(reference)


@needs_ray
def test_cli_interrupted_ray_eval_resumes_to_the_local_result(reference, tmp_path):
    db = tmp_path / "runs.db"
    argv = [sys.executable, "-m", "ponder.cli", "eval", "--task", "arith:1", "--limit", str(LIMIT),
            "--strategy", "greedy,sc", "--n", "2", "--seed", "3", "--max-tokens", "16",
            "--prompt", "fewshot", "--chunk", "1", "--device", "cpu", "--threads",
            str(threads()), "--ray", "--ray-workers", "2", "--out", str(db)]

    # Ctrl-C once some problems are stored: a clean exit that says how to resume.
    # SIGINT back to its default in the child (a background job's shell ignores it).
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while stored(db) < 2:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no problems stored in 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    partial = stored(db)
    assert 2 <= partial < 2 * LIMIT
    with sqlite3.connect(db) as conn:
        most_left = LIMIT - min(n for (n,) in conn.execute(
            "SELECT COUNT(p.problem_id) FROM runs r LEFT JOIN problems p USING (run_id) "
            "GROUP BY r.run_id"))

    # The same command again: resumes, and the workers finish the rest.
    done = subprocess.run([*argv, "--no-progress"], capture_output=True, text=True,
                          timeout=600, env=ENV)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    # A run with 2 or more problems left had them shared by both workers ("N problems on
    # host:pid" per worker).
    if most_left >= 2:
        assert any(line.count(" problems on ") == 2 for line in done.stderr.splitlines())
    assert stored(db) == 2 * LIMIT
    assert results(db) == results(reference)


def stored(db) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return conn.execute("SELECT COUNT(*) FROM problems").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.parametrize("flags, message", [
    (["--ray-workers", "2"], "need --ray"),
    (["--ray", "--ray-workers", "0"], "--ray-workers must be >= 1"),
])
def test_bad_ray_flags_fail_cleanly_and_write_nothing(tmp_path, flags, message):
    result = subprocess.run([sys.executable, "-m", "ponder.cli", "eval", "--task", "arith:1",
                             *flags, "--out", str(tmp_path / "runs.db")],
                            capture_output=True, text=True, timeout=120, env=ENV)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and os.listdir(tmp_path) == []


def test_without_ray_the_error_says_how_to_install_it(tmp_path):
    # A None entry in sys.modules makes `import ray` fail as if it were not installed.
    code = ("import sys; sys.modules['ray'] = None; from ponder.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "eval", "--task", "arith:1", "--ray",
                             "--out", str(tmp_path / "runs.db")],
                            capture_output=True, text=True, timeout=120, env=ENV)
    assert result.returncode == 2
    assert "pip install 'ponder[ray]'" in result.stderr and "Traceback" not in result.stderr
    assert os.listdir(tmp_path) == []


@needs_ray
def test_a_dead_ray_address_fails_at_once_with_what_to_do(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "ponder.cli", "eval", "--task", "arith:1",
                             "--limit", "1", "--ray", "--ray-address", f"127.0.0.1:{port}",
                             "--out", str(tmp_path / "runs.db")],
                            capture_output=True, text=True, timeout=120, env=ENV)
    assert result.returncode == 2, result.stderr
    assert f"nothing answers at the Ray address 127.0.0.1:{port}" in result.stderr
    assert "ray start --head" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 60  # ray.init alone would retry for minutes
    assert not (tmp_path / "runs.db").exists()
