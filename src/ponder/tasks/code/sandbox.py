"""Run untrusted Python programs, each in its own process under hard limits.

    sandbox = Sandbox(Limits(timeout=5))
    outcome = sandbox.run("assert 1 + 1 == 2")             # Outcome(status="passed", ...)
    outcomes = sandbox.run_many(programs)                  # a worker pool, order kept

Every candidate gets a fresh process started with a scrubbed environment, an empty
temporary working directory (removed afterwards, whatever happened), CPU-time, address
space, file-size, open-file and process-count limits (setrlimit), a wall-clock timeout
after which its whole process group is killed, and stdout/stderr read up to a cap.

When the host runs as root on Linux the child also gets its own mount, network, pid, IPC
and UTS namespaces, a read-only view of every file system, a size-limited tmpfs as its
working directory, and an unprivileged uid of its own (see _runner.py for the order of
these steps). Otherwise it runs in `basic` mode: limits and Python-level guards only.

Each Outcome says how the candidate ended: passed, failed (an AssertionError), error
(another exception, by type), timeout, or killed (a resource limit stopped it; the
reason names the limit). The sandbox contains a candidate's effects; it does not stop a
deliberately hostile program from faking its own verdict (e.g. by rewriting `check`).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ponder.tasks.code.runner_io import (
    HOST_GRACE,
    Outcome,
    collect,
    encode,
    kill_group,
    read_outcome,
)

_RUNNER = str(Path(__file__).with_name("_runner.py"))
# Sandbox uids: 2^30 + pid * 256 + slot. Unique per live host process and worker slot, so
# RLIMIT_NPROC (counted per uid) is never shared with anyone else, and far from real users.
_UID_BASE, _SLOTS = 1 << 30, 256


@dataclass(frozen=True)
class Limits:
    """What one candidate may use.

    timeout: wall-clock seconds from start to kill.
    cpu_seconds: CPU time (RLIMIT_CPU); None means ceil(timeout).
    memory_bytes: address space (RLIMIT_AS); leave room for the interpreter (~30 MB).
    file_bytes: largest file it may write (RLIMIT_FSIZE).
    disk_bytes, inodes: size of its tmpfs working directory (isolated mode).
    processes: processes and threads of its uid (RLIMIT_NPROC; isolated mode, own uid).
    open_files: RLIMIT_NOFILE.
    output_bytes: stdout and stderr kept, each; the rest is read and dropped.
    """

    timeout: float = 10.0
    cpu_seconds: int | None = None
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    disk_bytes: int = 64 << 20
    inodes: int = 4096
    processes: int = 32
    open_files: int = 256
    output_bytes: int = 64 << 10

    def __post_init__(self) -> None:
        if not isinstance(self.timeout, int | float) or not 0 < self.timeout < math.inf:
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        if self.cpu_seconds is not None and (not isinstance(self.cpu_seconds, int)
                                             or self.cpu_seconds < 1):
            raise ValueError(f"cpu_seconds must be an integer >= 1 or None, got "
                             f"{self.cpu_seconds!r}")
        for name in ("memory_bytes", "file_bytes", "disk_bytes", "inodes", "processes",
                     "open_files", "output_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.memory_bytes < 64 << 20:
            raise ValueError("memory_bytes below 64 MB leaves no room for the interpreter")

    @property
    def cpu(self) -> int:
        return self.cpu_seconds if self.cpu_seconds is not None else max(1, math.ceil(self.timeout))


class Sandbox:
    """Runs programs under `limits`, `workers` at a time.

    isolate: "auto" (namespaces and a uid drop when running as root on Linux), True
        (require them; ValueError otherwise) or False (basic mode).
    guard: also make socket and process creation raise inside the candidate (defence
        in depth on top of the operating-system barriers).
    """

    def __init__(self, limits: Limits | None = None, workers: int | None = None,
                 isolate: bool | str = "auto", guard: bool = True) -> None:
        self.limits = limits or Limits()
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                    or workers < 1):
            raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
        self.workers = workers or max(1, os.cpu_count() or 1)
        can_isolate = sys.platform == "linux" and os.geteuid() == 0
        self._probe = isolate == "auto" and can_isolate  # check once that namespaces work
        if isolate == "auto":
            isolate = can_isolate
        elif isolate is True and not can_isolate:
            raise ValueError("isolated sandboxes need root on Linux (namespaces and a uid "
                             "drop); use isolate='auto' or False for basic mode")
        elif not isinstance(isolate, bool):
            raise ValueError(f"isolate must be 'auto', True or False, got {isolate!r}")
        self.isolate = isolate
        self.guard = bool(guard)
        self.python = os.path.realpath(sys.executable)

    @property
    def mode(self) -> str:
        return "isolated" if self.isolate else "basic"

    def run(self, program: str, limits: Limits | None = None) -> Outcome:
        """Run one program; never raises for anything the program does."""
        if not isinstance(program, str):
            raise ValueError(f"a program is a string of Python source, got {type(program).__name__}")
        limits = limits or self.limits
        if self._probe:
            self._check_isolation()
        with _uid_slot() as uid:
            return self._run(program, limits, uid)

    def _check_isolation(self) -> None:
        """isolate="auto": root without the right to make namespaces (a container without
        CAP_SYS_ADMIN) falls back to basic mode once, with a warning, instead of failing
        every candidate. The answer is cached for the process."""
        with _probe_lock:
            if self._probe:
                works = _ISOLATION.get(self.python)
                if works is None:
                    with _uid_slot() as uid:
                        trial = self._run("pass", Limits(timeout=30), uid)
                    works = _ISOLATION[self.python] = trial.passed
                    if not works:
                        warnings.warn(f"sandbox isolation is unavailable here ({trial.detail}); "
                                      "running candidates in basic mode (limits only)",
                                      RuntimeWarning, stacklevel=3)
                self.isolate = self.isolate and works
                self._probe = False

    def run_many(self, programs: Sequence[str], limits: Limits | None = None,
                 on_done: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
        """Run programs on a pool of `workers` threads (the work happens in child
        processes); the outcomes come back in input order."""
        programs = list(programs)
        if self._probe and programs:
            self._check_isolation()
        if len(programs) <= 1 or self.workers == 1:
            return _in_order((self.run(p, limits) for p in programs), on_done)
        with ThreadPoolExecutor(max_workers=min(self.workers, len(programs)),
                                thread_name_prefix="ponder-sandbox") as pool:
            futures = [pool.submit(self.run, p, limits) for p in programs]
            return _in_order((future.result() for future in futures), on_done)

    # ----------------------------------------------------------------------- one run

    def _run(self, program: str, limits: Limits, uid: int) -> Outcome:
        started = time.perf_counter()
        workdir = tempfile.mkdtemp(prefix="ponder-sandbox-")
        pipes: list[int] = []
        proc = None
        try:
            verdict_r, verdict_w = os.pipe()
            status_r, status_w = os.pipe()
            pipes += [verdict_r, status_r]
            config = {
                "isolate": int(self.isolate), "guard": int(self.guard), "workdir": workdir,
                "uid": uid, "gid": uid, "timeout": limits.timeout,
                "cpu_seconds": limits.cpu, "memory_bytes": limits.memory_bytes,
                "file_bytes": limits.file_bytes, "disk_bytes": limits.disk_bytes,
                "inodes": limits.inodes, "processes": limits.processes if self.isolate else 0,
                "open_files": limits.open_files, "verdict_fd": verdict_w, "status_fd": status_w,
            }
            try:
                proc = subprocess.Popen(
                    [self.python, "-S", "-s", "-P", "-B", _RUNNER, encode(config)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    cwd=workdir, env=_scrubbed_env(workdir), pass_fds=(verdict_w, status_w),
                    close_fds=True, start_new_session=True)
            finally:
                os.close(verdict_w)
                os.close(status_w)
            with contextlib.suppress(OSError):  # the runner died early: its verdict says why
                proc.stdin.write(program.encode("utf-8", errors="replace"))
            with contextlib.suppress(OSError):
                proc.stdin.close()
            streams = collect(proc, [verdict_r, status_r], started + limits.timeout + HOST_GRACE,
                              limits.output_bytes, basic=not self.isolate)
            return read_outcome(proc, streams, time.perf_counter() - started, limits.timeout)
        finally:
            if proc is not None:
                kill_group(proc)
                for stream in (proc.stdout, proc.stderr, proc.stdin):
                    with contextlib.suppress(OSError):
                        stream.close()
            for fd in pipes:
                with contextlib.suppress(OSError):
                    os.close(fd)
            shutil.rmtree(workdir, ignore_errors=True)


def _in_order(outcomes: Iterable[Outcome],
              on_done: Callable[[int, Outcome], None] | None) -> list[Outcome]:
    """The outcomes as a list, telling on_done of each as it arrives."""
    done = []
    for i, outcome in enumerate(outcomes):
        done.append(outcome)
        if on_done:
            on_done(i, outcome)
    return done


def _scrubbed_env(workdir: str) -> dict[str, str]:
    """Nothing of the host's environment: no secrets, no PYTHONPATH, a fixed hash seed."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": workdir, "TMPDIR": workdir, "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8"}


# --------------------------------------------------------------------------- uid slots

_probe_lock = threading.Lock()
_ISOLATION: dict[str, bool] = {}  # interpreter -> whether isolated runs work here
_slot_lock = threading.Lock()
_slots_free: dict[int, list[int]] = {}  # host pid -> free slots (a forked host starts anew)
_slot_available = threading.Condition(_slot_lock)


@contextlib.contextmanager
def _uid_slot():
    """A sandbox uid no other running candidate holds (see _UID_BASE)."""
    pid = os.getpid()
    with _slot_available:
        free = _slots_free.setdefault(pid, list(range(_SLOTS - 1, -1, -1)))
        while not free:
            _slot_available.wait()
        slot = free.pop()
    try:
        yield _UID_BASE + (pid % (1 << 22)) * _SLOTS + slot
    finally:
        with _slot_available:
            _slots_free[pid].append(slot)
            _slot_available.notify()
