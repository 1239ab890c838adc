"""The llama.cpp engine: `engine` (LlamaCppEngine), `slots` (its KV cache of sequences and
the model calls), `vocabulary` (text <-> tokens on the GGUF's vocabulary) and `library`
(loading llama-cpp-python, resolving GGUF files)."""

from ponder.engines.llamacpp.engine import LlamaCppEngine
from ponder.engines.llamacpp.library import INSTALL_HINT, resolve_gguf
from ponder.engines.llamacpp.slots import LlamaCppCache

__all__ = ["INSTALL_HINT", "LlamaCppCache", "LlamaCppEngine", "resolve_gguf"]
