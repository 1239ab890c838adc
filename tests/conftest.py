"""Shared fixtures. The bundled model is loaded once per test session (fp32, CPU)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def engine():
    from ponder.engines.hf import HFEngine

    return HFEngine("smollm2-135m", dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def chat():
    def make(question: str):
        return [{"role": "user", "content": question}]

    return make
