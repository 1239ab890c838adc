"""The llama.cpp engine on the bundled model's GGUF (Q4_1, CPU)."""

import importlib.util

import pytest


def start(stack):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (bash scripts/install_llamacpp.sh)")
    from ponder.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine("smollm2-135m")
    stack.callback(engine.close)
    return engine
