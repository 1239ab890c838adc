"""`ponder serve` in a subprocess on a free loopback port: started, waited for, its log kept,
stopped. The server tests and the GPU check both run real servers this way."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server subprocess (`cmd`) logging to `log_path`, up once `ready_url` answers 200.
    RuntimeError with the log's tail if it exits or is not up within `timeout`. Any server
    does: `ponder serve` (ServeProcess), llama.cpp's or vLLM's in the engine tests."""

    def __init__(self, cmd: Sequence[str], log_path: Path, ready_url: str,
                 env: dict[str, str] | None = None, timeout: float = 180, name: str = "server"):
        self.name = name
        self.log_path = Path(log_path)
        self.log = open(self.log_path, "w+")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(list(cmd), stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env)
        self._wait(ready_url, timeout)

    def _wait(self, ready_url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.output()}")
            try:
                if httpx.get(ready_url, timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        tail = self.output()
        self.stop()
        raise RuntimeError(f"{self.name} did not come up in {timeout:.0f} s:\n{tail}")

    def output(self, chars: int = 4000) -> str:
        if self.log.closed:
            return ""
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-chars:]

    def stop(self) -> None:
        """Terminate, then kill after 15 s; safe to call twice."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()


class ServeProcess(ServerProcess):
    """`python -m ponder.cli serve` with `flags` (and --api-key `key`); the log goes to
    `log_dir`."""

    def __init__(self, log_dir: Path, flags: Sequence[str], key: str | None = None,
                 timeout: float = 180):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = key
        env = {k: v for k, v in os.environ.items() if k != "PONDER_API_KEY"}
        cmd = [sys.executable, "-m", "ponder.cli", "serve", "--port", str(self.port),
               "--log-level", "warning", *flags] + (["--api-key", key] if key else [])
        # /health answers without the key
        super().__init__(cmd, Path(log_dir) / f"server-{self.port}.log", f"{self.url}/health",
                         env, timeout, "ponder serve")
