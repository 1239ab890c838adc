"""The sandbox's child side, run as a script: `python -S -s -P -B _runner.py CONFIG`.

It reads the program from stdin, then runs it under the limits in CONFIG and writes one
verdict line to the verdict pipe. Standard library only: site-packages are off (-S) and
nothing of ponder is importable here. CONFIG and the records it writes are `key=hex`
pairs rather than JSON: importing json (and with it re and enum) would double the
start-up time of every candidate, and the host parses hex safely whatever a hostile
candidate writes into the pipe.

Isolated mode (the host is root on Linux), in this order:
1. supervisor (still root): new mount, network, pid, IPC and UTS namespaces; every mount
   read-only (nothing outside the working directory can be written, deleted or filled);
   the interpreter's own files made reachable if a private directory (/root) hides them;
   an empty size-limited tmpfs as the working directory.
2. fork: init, pid 1 of the new pid namespace, mounts a fresh /proc and forks the
   candidate. When the candidate ends, init reports how (exit status or signal) on the
   status pipe and exits, and the kernel kills everything else in the namespace (a fork
   bomb leaves nothing behind). The supervisor enforces the wall-clock timeout by
   killing init.
3. candidate: closes the status pipe (so it cannot forge how it ended), sets rlimits,
   drops to an unprivileged uid of its own (so RLIMIT_NPROC, which counts per uid, is
   not shared) with no_new_privs, and runs the program.
Basic mode (not root, or isolation turned off): only rlimits and the Python guards.

The Python guards (socket and process creation raise PermissionError) are defence in
depth; the tests check the operating-system barriers with them turned off.
"""

import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME = 32, 1024, 2048
MS_BIND, MS_MOVE, MS_REC = 4096, 8192, 16384
MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1 << 18, 1 << 21, 1 << 24
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
_KEPT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
               "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME,
               "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}


class SetupError(Exception):
    """The sandbox itself could not be set up (not the candidate's fault)."""


_STRINGS = ("workdir",)
_FLOATS = ("timeout",)


def main() -> None:
    config = _decode(sys.argv[1])
    program = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the candidate reads an empty stdin, never our pipe
    os.close(devnull)
    if not config["isolate"]:
        os.close(config["status_fd"])
        _run_candidate(program, config)
    try:
        libc = _libc()
        _check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
                            | CLONE_NEWUTS), "unshare")
        _prepare_mounts(libc, config)
    except (OSError, SetupError) as exc:
        _report(config["status_fd"], {"setup_error": f"{type(exc).__name__}: {exc}"})
        os._exit(70)
    pid = os.fork()
    if pid == 0:
        _init(libc, program, config)
    _supervise(pid, config)


# --------------------------------------------------------------------------- supervisor


def _supervise(pid: int, config: dict) -> None:
    """Wait for the namespace's init up to the timeout, kill it past that (the kernel
    then kills everything in the namespace), and say whether it timed out."""
    import select

    os.close(config["verdict_fd"])
    timed_out = False
    try:
        pidfd = os.pidfd_open(pid)
        ready, _, _ = select.select([pidfd], [], [], config["timeout"])
        if not ready:
            timed_out = True
            os.kill(pid, 9)
    except OSError:  # no pidfd here: a plain wait (the host's own deadline still holds)
        pass
    os.waitpid(pid, 0)
    _report(config["status_fd"], {"timeout": timed_out})
    os._exit(0)


def _init(libc, program: str, config: dict) -> None:
    """Pid 1 of the new namespace (still root): a fresh /proc, then the candidate as its
    only child, whose end it reports. The candidate is not pid 1 itself because the
    kernel spares pid 1 signals it has no handler for, RLIMIT_CPU's SIGXCPU included."""
    status_fd = config["status_fd"]
    try:
        _check(libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "prctl(pdeathsig)")
        _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except (OSError, SetupError) as exc:
        _report(status_fd, {"setup_error": f"{type(exc).__name__}: {exc}"})
        os._exit(70)
    pid = os.fork()
    if pid == 0:
        os.close(status_fd)  # the candidate must not be able to forge how it ended
        try:
            _enter_child(libc, config)
        except (OSError, SetupError) as exc:
            _report(config["verdict_fd"], {"setup_error": f"{type(exc).__name__}: {exc}"})
            os._exit(70)
        _run_candidate(program, config)
    os.close(config["verdict_fd"])
    _, status = os.waitpid(pid, 0)
    _report(status_fd, {"exit": os.waitstatus_to_exitcode(status)})
    os._exit(0)


def _prepare_mounts(libc, config: dict) -> None:
    workdir = config["workdir"]
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing leaks back to the host
    _expose_interpreter(libc, workdir)
    for point, flags in _mounts():
        try:
            _mount(libc, None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | flags)
        except OSError:
            if point == "/":
                raise
    options = (f"size={config['disk_bytes']},nr_inodes={config['inodes']},mode=0700,"
               f"uid={config['uid']},gid={config['gid']}")
    _mount(libc, "tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, options)


def _expose_interpreter(libc, workdir: str) -> None:
    """Make the standard library readable after the uid drop even when a private
    directory hides it (pyenv under /root, mode 0700): bind the interpreter's prefix
    aside, cover the private ancestor with an empty tmpfs, move the prefix back in."""
    prefixes = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)})
    prefixes = [p for p in prefixes if not any(p.startswith(q + "/") for q in prefixes)]
    hidden: dict[str, list[str]] = {}
    for prefix in prefixes:
        blocker = _hiding_ancestor(prefix)
        if blocker is not None:
            if workdir == blocker or workdir.startswith(blocker.rstrip("/") + "/"):
                raise SetupError(f"the working directory {workdir} is inside private {blocker}")
            hidden.setdefault(blocker, []).append(prefix)
    for blocker, paths in hidden.items():
        stages = []
        for i, path in enumerate(paths):
            stage = os.path.join(workdir, f".stage{i}")
            os.mkdir(stage)
            _mount(libc, path, stage, None, MS_BIND | MS_REC)
            stages.append(stage)
        _mount(libc, "tmpfs", blocker, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
        for stage, path in zip(stages, paths, strict=True):
            os.makedirs(path, mode=0o755, exist_ok=True)
            _mount(libc, stage, path, None, MS_MOVE)
            os.rmdir(stage)


def _hiding_ancestor(path: str) -> str | None:
    """The highest directory on the way to `path` that others cannot traverse."""
    parts = path.strip("/").split("/")
    for depth in range(len(parts)):
        ancestor = "/" + "/".join(parts[:depth])
        if not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return None


def _mounts() -> list[tuple[str, int]]:
    """(mount point, flags to keep) for every mount in this namespace."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            point = _unescape(fields[4])
            flags = 0
            for option in fields[5].split(","):
                flags |= _KEPT_FLAGS.get(option, 0)
            out.append((point, flags))
    return out


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("040", "011", "012", "134"):
        text = text.replace("\\" + code, chr(int(code, 8)))
    return text


# --------------------------------------------------------------------------- child


def _enter_child(libc, config: dict) -> None:
    """Limits, then the drop to the sandbox uid; from here on nothing is privileged."""
    os.chdir(config["workdir"])
    _set_limits(config)
    os.setgroups([])
    os.setgid(config["gid"])
    os.setuid(config["uid"])
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(no_new_privs)")


def _set_limits(config: dict) -> None:
    import resource

    cpu = config["cpu_seconds"]
    limits = [
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL 1 s later
        (resource.RLIMIT_AS, config["memory_bytes"], config["memory_bytes"]),
        (resource.RLIMIT_FSIZE, config["file_bytes"], config["file_bytes"]),
        (resource.RLIMIT_NOFILE, config["open_files"], config["open_files"]),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    if config["processes"]:
        limits.append((resource.RLIMIT_NPROC, config["processes"], config["processes"]))
    for which, soft, hard in limits:
        resource.setrlimit(which, (soft, hard))


def _install_guards() -> None:
    """Socket and process creation raise PermissionError (defence in depth)."""
    import _posixsubprocess
    import _socket

    def blocked(what):
        def refuse(*args, **kwargs):
            raise PermissionError(f"{what} is disabled in the sandbox")
        return refuse

    class NoSocket:  # a class, so that `import socket` (which subclasses it) still works
        __slots__ = ()

        def __init__(self, *args, **kwargs):
            raise PermissionError("network access is disabled in the sandbox")

    _socket.socket = NoSocket
    for name in ("socketpair", "fromfd", "getaddrinfo", "gethostbyname"):
        if hasattr(_socket, name):
            setattr(_socket, name, blocked("network access"))
    _posixsubprocess.fork_exec = blocked("starting processes")
    for name in ("fork", "forkpty", "vfork", "system", "popen", "posix_spawn", "posix_spawnp",
                 "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp",
                 "execlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "kill", "killpg"):
        if hasattr(os, name):
            setattr(os, name, blocked(f"os.{name}"))


def _run_candidate(program: str, config: dict) -> None:
    """Run the program as module __candidate__ and report how it ended. Never returns."""
    verdict_fd = config["verdict_fd"]
    if not config["isolate"]:
        _set_limits(config)
    if config["guard"]:
        _install_guards()
    module = type(sys)("__candidate__")
    sys.modules["__candidate__"] = module
    me = os.getpid()
    try:
        exec(compile(program, "<candidate>", "exec"), module.__dict__)
    except BaseException as exc:  # noqa: BLE001 - every way a candidate can fail is a verdict
        verdict = _classify(exc)
        try:
            import traceback

            # Skip this file's frame: the candidate's own frames are what helps.
            traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next, limit=-5)
        except BaseException:  # noqa: BLE001 - out of memory or a broken stderr
            pass
    else:
        verdict = {"status": "passed", "reason": ""}
        value = module.__dict__.get("__result__")
        if isinstance(value, str):
            verdict["value"] = value
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - the candidate closed or replaced them
        pass
    if os.getpid() == me:  # a process the candidate forked ran on to here: no say
        _report(verdict_fd, verdict)
    os._exit(0)  # skip the candidate's atexit hooks and lingering threads


def _classify(exc: BaseException) -> dict:
    import errno

    name = type(exc).__name__
    detail = _short(exc)
    if isinstance(exc, AssertionError):
        return {"status": "failed", "reason": "AssertionError", "detail": detail}
    if isinstance(exc, MemoryError):
        return {"status": "killed", "reason": "RLIMIT_AS (MemoryError)", "detail": detail}
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return {"status": "killed", "reason": f"RLIMIT_FSIZE ({name}: EFBIG)", "detail": detail}
    # With the network gone, EAGAIN without a file is a process or thread the kernel
    # refused to create: the process-count limit.
    if (isinstance(exc, OSError) and exc.errno == errno.EAGAIN and exc.filename is None) or (
            isinstance(exc, RuntimeError) and "can't start new thread" in detail):
        return {"status": "killed", "reason": f"RLIMIT_NPROC ({name})", "detail": detail}
    if isinstance(exc, SystemExit):
        return {"status": "error", "reason": "SystemExit", "detail": repr(exc.code)[:200]}
    return {"status": "error", "reason": name, "detail": detail}


def _short(exc: BaseException) -> str:
    try:
        return str(exc)[:200]
    except BaseException:  # noqa: BLE001 - a hostile __str__
        return ""


# --------------------------------------------------------------------------- helpers


def _report(fd: int, record: dict) -> None:
    """One line of `key=hex(utf-8 value)` pairs."""
    line = " ".join(f"{k}={str(v).encode('utf-8', errors='replace').hex()}"
                    for k, v in record.items())
    try:  # noqa: SIM105 - contextlib is one more import on every candidate's start-up
        os.write(fd, (line + "\n").encode("ascii"))
    except OSError:
        pass


def _decode(text: str) -> dict:
    """The host's config: `key=hex` pairs; ints unless named in _STRINGS or _FLOATS."""
    config = {}
    for pair in text.split():
        key, _, value = pair.partition("=")
        value = bytes.fromhex(value).decode("utf-8")
        config[key] = value if key in _STRINGS else float(value) if key in _FLOATS else \
            int(value)
    return config


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_char_p]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]
    return libc


def _mount(libc, source, target, fstype, flags, data=None) -> None:
    def b(s):
        return None if s is None else s.encode()

    _check(libc.mount(b(source), b(target), b(fstype), flags, b(data)), f"mount {target}")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


if __name__ == "__main__":
    main()
