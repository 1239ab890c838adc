"""math-verify (sympy) in worker processes, each answer with a deadline.

    symbolic_equal(pred, gold, timeout) -> bool | None   (None: out of time; cached)
    close()                                              (stop the workers, clear the cache)

sympy can loop for minutes or sit in C code no signal interrupts, so the only sure stop
is to kill the process. Workers are started on first use (about 0.5 s), reused, and
replaced after a kill. Where no worker process can be started, math-verify runs in this
process under a SIGALRM timer (run_in_process).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import Any

_STARTUP_TIMEOUT = 120.0  # a worker's import of sympy and math-verify (slow disks, busy CPUs)
_WORKER_CODE = "from ponder.tasks.grade_workers import worker_main; worker_main()"


@lru_cache(maxsize=65536)
def symbolic_equal(pred: str, gold: str, timeout: float) -> bool | None:
    """math-verify's verdict, None on timeout. Cached: voting grades the same strings often."""
    return _POOL.run(pred, gold, timeout)


def close() -> None:
    """Stop the worker processes (they also stop when Python exits) and forget verdicts."""
    _POOL.close()


def _math_verify_equal(pred: str, gold: str) -> bool:
    """math-verify's verdict with its own signal timeouts off (we enforce ours)."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    g = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
    p = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
    if not g or not p:
        return False
    return bool(verify(g, p, timeout_seconds=None))


def worker_main() -> None:
    """A grading process: reads [pred, gold] JSON lines on stdin, answers "1"/"0" lines.

    Started as `python -c` rather than through multiprocessing, so the user's __main__ is
    never re-imported (no `if __name__ == "__main__"` guard needed in scripts)."""
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    with contextlib.suppress(Exception):  # cap memory: 2^(10^10) should fail, not swap
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = 4 << 30
        if soft == resource.RLIM_INFINITY or soft > cap:
            resource.setrlimit(resource.RLIMIT_AS, (cap, min(hard, cap) if hard > 0 else cap))
    with contextlib.suppress(Exception):
        _math_verify_equal("1", "1")  # import and warm up before saying ready
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            pred, gold = json.loads(line)
            answer = _math_verify_equal(str(pred), str(gold))
        except BaseException:  # MemoryError, RecursionError, sympy bugs: not equal
            answer = False
        out.write("1\n" if answer else "0\n")
        out.flush()


class _Worker:
    """One grading subprocess; a reader thread turns its stdout lines into a queue so that
    waiting for an answer can have a deadline on every platform."""

    def __init__(self) -> None:
        import ponder

        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(ponder.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
        )
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True, name="ponder-grade-reader").start()
        self.ready = False

    def _read(self) -> None:
        with contextlib.suppress(Exception):
            for line in self.proc.stdout:  # type: ignore[union-attr]
                self.lines.put(line.strip())
        self.lines.put("eof")

    def wait_ready(self) -> bool:
        if not self.ready:
            with contextlib.suppress(queue.Empty):
                self.ready = self.lines.get(timeout=_STARTUP_TIMEOUT) == "ready"
        return self.ready

    def ask(self, pred: str, gold: str, timeout: float) -> bool | None:
        self.proc.stdin.write(json.dumps([pred, gold]) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        try:
            reply = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        if reply not in ("0", "1"):  # the process died
            raise RuntimeError("grading worker exited")
        return reply == "1"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()
            self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(Exception):
                stream.close()  # type: ignore[union-attr]


class _Pool:
    """Grading processes shared by all threads: each call borrows one, a timeout kills it.

    Falls back to grading in this process (with a SIGALRM timer in the main thread, none
    elsewhere) if worker processes cannot be started here.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._pid = os.getpid()
        self._broken = False
        self._slots = threading.BoundedSemaphore(max(2, os.cpu_count() or 1))
        self._registered = False

    def run(self, pred: str, gold: str, timeout: float) -> bool | None:
        if self._broken:
            return run_in_process(_math_verify_equal, pred, gold, timeout)
        with self._slots:
            worker = self._borrow()
            if worker is None:
                return run_in_process(_math_verify_equal, pred, gold, timeout)
            try:
                verdict = worker.ask(pred, gold, timeout)
            except Exception:  # the worker died (e.g. out of memory): not equal
                worker.close()
                return False
            if verdict is None:
                worker.close()  # stuck in sympy: killing it is the only sure stop
                # Start the replacement now, while we report; if that fails the next call
                # starts one (or falls back to this process).
                with contextlib.suppress(Exception):
                    self._give_back(_Worker())
            else:
                self._give_back(worker)
            return verdict

    def _borrow(self) -> _Worker | None:
        with self._lock:
            if self._pid != os.getpid():  # we were forked: those workers are not ours
                self._idle, self._pid = [], os.getpid()
            worker = self._idle.pop() if self._idle else None
            if not self._registered:
                atexit.register(self.close)
                self._registered = True
        if worker is None:
            try:
                worker = _Worker()
            except Exception:
                self._broken = True
                return None
        if not worker.wait_ready():
            worker.close()
            self._broken = True
            return None
        return worker

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.close()
        symbolic_equal.cache_clear()


class _Timeout(Exception):
    pass


def run_in_process(fn: Callable[[str, str], bool], pred: str, gold: str, timeout: float):
    """Fallback without worker processes: a SIGALRM timer where signals work."""
    usable = (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    )
    if not usable:
        try:
            return fn(pred, gold)
        except Exception:
            return False

    def on_alarm(signum: int, frame: Any) -> None:
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return fn(pred, gold)
    except _Timeout:
        return None
    except Exception:
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_POOL = _Pool()
