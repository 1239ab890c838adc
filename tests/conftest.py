"""Shared fixtures. The bundled model is loaded once per test session (fp32, CPU)."""

from __future__ import annotations

import os

import pytest

# Set before torch is imported by any test module: OpenMP threads that spin while waiting
# crawl when subprocesses (servers, evals) share the two cores. Results do not change.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def engine():
    from ponder.engines.hf import HFEngine

    return HFEngine("smollm2-135m", dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def chat():
    def make(question: str):
        return [{"role": "user", "content": question}]

    return make
