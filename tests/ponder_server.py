"""A real `ponder serve` in a subprocess on a free loopback port, for the server tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest


class Server:
    def __init__(self, tmp_path, *flags: str, key: str | None = None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = key
        self.log = open(tmp_path / f"server-{self.port}.log", "w+")  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if k != "PONDER_API_KEY"}
        # One torch thread: the test machine is shared, and spinning threads that wait for
        # a busy core make every step many times slower.
        cmd = [sys.executable, "-m", "ponder.cli", "serve", "--port", str(self.port),
               "--log-level", "warning", "--threads", "1", *flags] + (["--api-key", key] if key else [])
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self._wait()

    def _wait(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.http().get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        pytest.fail(f"server did not come up:\n{self.output()}")

    def http(self, key: str | None = "default") -> httpx.Client:
        key = self.key if key == "default" else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def client(self, key: str | None = "default") -> openai.OpenAI:
        key = self.key if key == "default" else key
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or "none",
                             max_retries=0, timeout=120)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def status(self) -> dict[str, str]:
        """The server process's /proc status fields (VmRSS, VmHWM, ...)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)

    def rss_mb(self) -> float:
        return int(self.status()["VmRSS"].split()[0]) / 1024
