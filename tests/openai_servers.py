"""Real OpenAI-compatible servers on free loopback ports, for the openai engine's tests:
`ponder serve` on the bundled model, and llama-cpp-python's server on its GGUF."""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from ponder.testing.served import ServerProcess, free_port  # noqa: F401 (re-exported)


class Served(ServerProcess):
    """A server subprocess; `url` is its base URL (…/v1). Stop it with stop()."""

    def __init__(self, cmd: list[str], port: int, ready_path: str, name: str,
                 env: dict[str, str] | None = None, timeout: float = 240):
        self.port = port
        self.url = f"http://127.0.0.1:{port}/v1"
        log_dir = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        # One thread and passive OpenMP waiting: the test machine's cores are shared.
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PONDER_THREADS": "1", **(env or {})}
        env.pop("PONDER_API_KEY", None)
        super().__init__(cmd, log_dir / "server.log", f"http://127.0.0.1:{port}{ready_path}",
                         env, timeout, name)


def ponder_serve(*flags: str) -> Served:
    port = free_port()
    cmd = [sys.executable, "-m", "ponder.cli", "serve", "--port", str(port), "--threads", "1",
           "--log-level", "warning", *flags]
    return Served(cmd, port, "/health", "ponder-serve")


def llamacpp_available() -> str | None:
    """Why llama-cpp-python's server cannot run here, or None when it can."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install 'llama-cpp-python[server]')"
    for name in ("llama_cpp.server", "uvicorn", "fastapi", "sse_starlette",
                 "starlette_context", "pydantic_settings"):
        try:
            if importlib.util.find_spec(name) is None:
                return f"{name} is missing (pip install 'llama-cpp-python[server]')"
        except ImportError as exc:
            return f"llama_cpp.server cannot be imported: {exc}"
    return None


def llamacpp_serve(model_path: str, alias: str, *flags: str) -> Served:
    """llama-cpp-python's server; logits_all so that it can return log-probabilities."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", model_path, "--model_alias",
           alias, "--host", "127.0.0.1", "--port", str(port), "--logits_all", "true",
           "--n_ctx", "2048", "--n_threads", "1", "--verbose", "false", *flags]
    return Served(cmd, port, "/v1/models", "llamacpp-serve")
