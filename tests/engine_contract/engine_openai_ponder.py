"""The openai engine on `ponder serve` (the bundled model, fp32) on a free loopback port."""

import sys
from pathlib import Path

import pytest


def start(stack):
    for module in ("fastapi", "uvicorn", "httpx"):
        pytest.importorskip(module, reason=f"ponder serve needs {module} (pip install 'ponder[server]')")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from openai_servers import ponder_serve

    from ponder.engines.openai_http import OpenAIHTTPEngine

    server = ponder_serve("--max-concurrent", "256")
    stack.callback(server.stop)
    engine = OpenAIHTTPEngine([server.url], concurrency=16)
    stack.callback(engine.close)
    return engine
