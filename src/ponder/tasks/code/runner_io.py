"""The host's side of a sandboxed run: the configuration _runner.py is started with,
reading the runner's pipes (stdout and stderr up to a cap, its verdict and status
reports) until a deadline, and what they say as an Outcome.

The runner reports in `key=hex` lines, not JSON (see _runner.py for why).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass, field

STATUSES = ("passed", "failed", "error", "timeout", "killed")
HOST_GRACE = 5.0  # the host's own deadline: timeout + this (startup, a stuck supervisor)
_SIGNALS = {
    signal.SIGXCPU: "RLIMIT_CPU (SIGXCPU)",
    signal.SIGKILL: "SIGKILL (hard CPU limit or out of memory)",
    signal.SIGXFSZ: "RLIMIT_FSIZE (SIGXFSZ)",
    signal.SIGSEGV: "SIGSEGV (stack or memory limit)",
}


@dataclass(frozen=True)
class Outcome:
    """How one candidate ended. reason: the exception type ("AssertionError",
    "ZeroDivisionError"), the limit ("RLIMIT_CPU (SIGXCPU)") or what timed out; detail: the
    exception's message; value: a string the program left in `__result__` (when passed)."""

    status: str
    reason: str = ""
    seconds: float = 0.0
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    detail: str = ""
    value: str | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return {"status": self.status, "reason": self.reason, "seconds": round(self.seconds, 4),
                "detail": self.detail, "truncated": self.truncated}


@dataclass
class Streams:
    """What was read from one run's pipes; host_timeout: the host's deadline cut it short."""

    stdout: bytearray
    stderr: bytearray
    verdict: bytearray
    status: bytearray
    truncated: bool = False
    host_timeout: bool = False


def collect(proc: subprocess.Popen, extra: list[int], deadline: float, cap: int,
            basic: bool) -> Streams:
    """Read stdout, stderr and the verdict/status pipes until all close or the deadline
    passes. Past `cap` bytes a stream is still read (so the writer never blocks) but
    dropped. In basic mode nothing kills stray children when the main process exits, so
    their open pipes end the read shortly after it."""
    out = Streams(bytearray(), bytearray(), bytearray(), bytearray())
    targets = {proc.stdout.fileno(): (out.stdout, cap), proc.stderr.fileno(): (out.stderr, cap),
               extra[0]: (out.verdict, 1 << 20), extra[1]: (out.status, 1 << 16)}
    exited_at = None
    with selectors.DefaultSelector() as sel:
        for fd in targets:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            now = time.perf_counter()
            if now >= deadline:
                out.host_timeout = True
                break
            if basic and exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > 0.5:
                break
            for key, _ in sel.select(min(deadline - now, 0.25)):
                try:
                    data = os.read(key.fd, 1 << 16)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(key.fd)
                    continue
                buffer, limit = targets[key.fd]
                room = limit - len(buffer)
                if len(data) > room:
                    out.truncated = True
                buffer += data[:max(room, 0)]
    return out


def read_outcome(proc: subprocess.Popen, streams: Streams, seconds: float,
                 timeout: float) -> Outcome:
    """What the runner reported (or how it died), once its process has ended."""
    if streams.host_timeout:
        kill_group(proc)
    try:
        returncode = proc.wait(timeout=HOST_GRACE)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        returncode = proc.wait()
    status = _records(streams.status)
    verdicts = _records(streams.verdict)
    common = {"seconds": seconds, "truncated": streams.truncated,
              "stdout": streams.stdout.decode("utf-8", errors="replace"),
              "stderr": streams.stderr.decode("utf-8", errors="replace")}
    setup = status.get("setup_error") or verdicts.get("setup_error")
    if setup:
        return Outcome("error", "sandbox setup failed", detail=str(setup), **common)
    if streams.host_timeout or status.get("timeout") == "True":
        return Outcome("timeout", f"wall-clock timeout ({timeout:g} s)", **common)
    if verdicts.get("status") in STATUSES:
        return Outcome(verdicts["status"], verdicts.get("reason", ""),
                       detail=verdicts.get("detail", ""), value=verdicts.get("value"), **common)
    code = _int(status.get("exit"))
    code = returncode if code is None else code
    if code < 0:
        reason = _SIGNALS.get(-code) or f"signal {_signal_name(-code)}"
        return Outcome("killed", reason, **common)
    return Outcome("error", "exited without a verdict", detail=f"exit status {code}", **common)


def encode(config: dict) -> str:
    """`key=hex` pairs (see _runner.py for why not JSON)."""
    return " ".join(f"{k}={str(v).encode('utf-8').hex()}" for k, v in config.items())


def _records(buffer: bytearray) -> dict[str, str]:
    """The runner's `key=hex` lines merged in order (later keys win); junk is skipped."""
    merged: dict[str, str] = {}
    for line in bytes(buffer).splitlines():
        for pair in line.split():
            key, _, value = pair.partition(b"=")
            with contextlib.suppress(ValueError):
                merged[key.decode("ascii")] = bytes.fromhex(value.decode("ascii")).decode(
                    "utf-8", errors="replace")
    return merged


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the runner's process group (the supervisor, and in basic mode the
    candidate and its children). In isolated mode the candidate dies with its supervisor
    (parent-death signal) and takes its pid namespace with it."""
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
