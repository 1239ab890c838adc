"""A real `ponder serve` in a subprocess on a free loopback port, for the server tests."""

from __future__ import annotations

import httpx
import openai
import pytest

from ponder.testing.served import ServeProcess


class Server(ServeProcess):
    def __init__(self, tmp_path, *flags: str, key: str | None = None):
        # One torch thread: the test machine is shared, and spinning threads that wait for
        # a busy core make every step many times slower.
        try:
            super().__init__(tmp_path, ["--threads", "1", *flags], key=key)
        except RuntimeError as exc:
            pytest.fail(str(exc))

    def http(self, key: str | None = "default") -> httpx.Client:
        key = self.key if key == "default" else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def client(self, key: str | None = "default") -> openai.OpenAI:
        key = self.key if key == "default" else key
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or "none",
                             max_retries=0, timeout=120)

    def status(self) -> dict[str, str]:
        """The server process's /proc status fields (VmRSS, VmHWM, ...)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)

    def rss_mb(self) -> float:
        return int(self.status()["VmRSS"].split()[0]) / 1024
