"""scripts/gpu_check.sh --tiny, on the CPU with this interpreter, so the GPU check cannot rot:
it builds the two random models, runs the native engine at 64 samples, serves the PRM with
`ponder serve --reward-model`, times the three searches through `http-prm:URL` and prints its
figures as one JSON line. Timings are only checked to be positive. vLLM runs where this
interpreter imports it; where it does not (the main venv), the check must say it skipped it
and why, not report a figure."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"config", "device", "gpu", "dtype", "policy", "prm", "samples", "new_tokens",
        "native_tokens_per_s", "vllm_tokens_per_s", "vllm_load_s", "vllm_skipped", "problems",
        "searches", "policy_peak_gpu_mb", "prm_peak_gpu_mb", "prm_http_vs_in_process",
        "build_s", "total_s"}
SHAPE = {"hidden", "layers", "heads", "kv_heads", "intermediate", "vocab"}


def gpu_check(*flags: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PONDER_PYTHON": sys.executable, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(["bash", "scripts/gpu_check.sh", "--tiny", "--device", "cpu",
                           "--threads", "1", *flags], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_tiny_check_runs_on_the_cpu_and_prints_its_figures_as_json():
    done = gpu_check()
    assert done.returncode == 0, done.stderr[-4000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(figures) == KEYS
    assert figures["config"] == "tiny" and figures["device"] == "cpu"
    assert figures["gpu"] is None and figures["dtype"] == "float32"
    assert figures["policy"].keys() == figures["prm"].keys() == SHAPE
    assert figures["policy"]["hidden"] == 64 and figures["policy"]["layers"] == 2
    assert figures["prm"]["hidden"] == 64 and figures["prm"]["vocab"] > 0
    assert figures["samples"] == 64 and figures["new_tokens"] > 0
    assert figures["native_tokens_per_s"] > 0
    if importlib.util.find_spec("vllm") is None:
        assert figures["vllm_tokens_per_s"] is None and figures["vllm_load_s"] is None
        assert "not installed" in figures["vllm_skipped"] and sys.executable in \
            figures["vllm_skipped"]
    else:  # an install that fails to import is reported as skipped, with the error
        assert (figures["vllm_tokens_per_s"] or 0) > 0 or "import vllm" in \
            figures["vllm_skipped"]
    assert set(figures["searches"]) == {"best_of_n", "beam_search", "particle_filter"}
    for name, search in figures["searches"].items():
        assert search["seconds_per_problem"] > 0, name
        assert search["policy_tokens"] > 0 and search["scorer_tokens"] > 0, name
    # No GPU: no peak memory figures rather than zeros.
    assert figures["policy_peak_gpu_mb"] is None and figures["prm_peak_gpu_mb"] is None
    # The served PRM gives the in-process scores of the same fp32 weights.
    assert 0 <= figures["prm_http_vs_in_process"] < 1e-4
    assert 0 < figures["build_s"] < figures["total_s"]


def test_a_failing_part_makes_the_check_exit_non_zero_without_json(tmp_path):
    done = gpu_check("--vllm-python", str(tmp_path / "no-python"), timeout=120)
    assert done.returncode != 0
    assert "no-python" in done.stderr
    assert not done.stdout.strip()
