"""Real OpenAI-compatible servers on free loopback ports, for the openai engine's tests:
`ponder serve` on the bundled model, and llama-cpp-python's server on its GGUF."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A server subprocess; `url` is its base URL (…/v1). Stop it with stop()."""

    def __init__(self, cmd: list[str], port: int, ready_path: str, name: str,
                 env: dict[str, str] | None = None, timeout: float = 240):
        self.port = port
        self.url = f"http://127.0.0.1:{port}/v1"
        log_dir = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        self.log_path = log_dir / "server.log"
        self.log = open(self.log_path, "w+")  # noqa: SIM115 (closed in stop)
        # One thread and passive OpenMP waiting: the test machine's cores are shared.
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PONDER_THREADS": "1", **(env or {})}
        env.pop("PONDER_API_KEY", None)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self._wait(f"http://127.0.0.1:{port}{ready_path}", timeout)

    def _wait(self, ready: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(ready, timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server did not come up in {timeout:g} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()


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
