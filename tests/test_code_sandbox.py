"""The sandbox: verdicts with reasons, limits, and hostile candidates contained.

Every hostile test checks the host afterwards: the decoy directory (world-writable, so
only the sandbox stops a deletion) and its file are intact, the planted secrets appear in
no output, no process of a sandbox uid is left, and every working directory is gone.
Isolation tests run with the Python guards off too, so that the operating-system
barriers are checked on their own.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile

import pytest

from ponder.tasks.code import sandbox as sandbox_module
from ponder.tasks.code.sandbox import _UID_BASE, Limits, Outcome, Sandbox

ROOT_LINUX = sys.platform == "linux" and os.geteuid() == 0
needs_isolation = pytest.mark.skipif(not ROOT_LINUX, reason="isolation needs root on Linux")
SECRET = "ponder-secret-7f3a9c1e"
# A generous wall clock (the machine may be busy); programs meant to hang use SHORT.
LIMITS = Limits(timeout=20, cpu_seconds=1, memory_bytes=512 << 20, file_bytes=8 << 20,
                disk_bytes=32 << 20, processes=16)
SHORT = Limits(timeout=2, cpu_seconds=1, processes=16)


@pytest.fixture
def host(monkeypatch):
    """A decoy directory anyone may write, a root-only secret file, a secret in the
    environment, and a private temp dir for the sandbox's working directories."""
    base = tempfile.mkdtemp(prefix="ponder-host-", dir="/tmp")
    os.chmod(base, 0o755)
    decoy = os.path.join(base, "decoy")
    os.mkdir(decoy)
    os.chmod(decoy, 0o777)
    with open(os.path.join(decoy, "keep.txt"), "w") as f:
        f.write("precious")
    os.chmod(os.path.join(decoy, "keep.txt"), 0o666)
    secret_file = os.path.join(base, "secret.txt")
    with open(secret_file, "w") as f:
        f.write(SECRET + "-file")
    os.chmod(secret_file, 0o600)
    workdirs = os.path.join(base, "work")
    os.mkdir(workdirs)
    monkeypatch.setenv("PONDER_TEST_SECRET", SECRET + "-env")
    monkeypatch.setattr(tempfile, "tempdir", workdirs)
    state = {"base": base, "decoy": decoy, "secret_file": secret_file, "workdirs": workdirs}
    yield state
    assert os.listdir(workdirs) == [], "a working directory was left behind"
    assert sorted(os.listdir(decoy)) == ["keep.txt"]
    with open(os.path.join(decoy, "keep.txt")) as f:
        assert f.read() == "precious"
    with open(secret_file) as f:
        assert f.read() == SECRET + "-file"
    assert _sandbox_processes() == [], "a sandboxed process outlived its run"
    import shutil

    shutil.rmtree(base)


def _sandbox_processes() -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid >= _UID_BASE:
                    pids.append(int(name))
            except OSError:
                pass  # it ended while we looked
    return pids


def _assert_no_secret(outcome: Outcome) -> None:
    for text in (outcome.stdout, outcome.stderr, outcome.detail, outcome.value or ""):
        assert SECRET not in text


# --------------------------------------------------------------------------- verdicts


def test_verdicts_carry_their_reasons():
    sandbox = Sandbox(LIMITS)
    programs = ["assert sum([1, 2]) == 3", "assert 1 == 2, 'nope'", "{}['k']",
                "def f(:\n  pass", "import sys; sys.exit(0)", "import os; os._exit(0)",
                "__result__ = 'out ☃'", "print('hi'); import sys; print('err', file=sys.stderr)"]
    outcomes = sandbox.run_many(programs)
    got = [(o.status, o.reason) for o in outcomes]
    assert got == [("passed", ""), ("failed", "AssertionError"), ("error", "KeyError"),
                   ("error", "SyntaxError"), ("error", "SystemExit"),
                   ("error", "exited without a verdict"), ("passed", ""), ("passed", "")]
    assert outcomes[1].detail == "nope"
    assert outcomes[6].value == "out ☃"
    assert outcomes[7].stdout == "hi\n" and outcomes[7].stderr == "err\n"
    assert "KeyError" in outcomes[2].stderr  # the candidate's traceback, for debugging


def test_run_many_keeps_input_order_on_a_pool():
    sandbox = Sandbox(LIMITS, workers=3)
    programs = [f"import time; time.sleep({0.05 * (i % 3)}); print({i})" for i in range(9)]
    outcomes = sandbox.run_many(programs)
    assert [o.stdout for o in outcomes] == [f"{i}\n" for i in range(9)]


def test_output_is_capped_and_the_writer_still_finishes():
    sandbox = Sandbox(Limits(timeout=10, output_bytes=1000))
    outcome = sandbox.run("import sys\nfor _ in range(2000): print('x' * 1000)\n"
                          "print('done', file=sys.stderr)")
    assert outcome.passed and outcome.truncated
    assert len(outcome.stdout) == 1000 and outcome.stderr == "done\n"


def test_environment_is_scrubbed_and_the_workdir_is_empty(host):
    outcome = Sandbox(LIMITS).run("import os\nprint(sorted(os.environ))\nprint(os.listdir('.'))")
    assert outcome.passed
    names, listing = outcome.stdout.splitlines()
    assert "PONDER_TEST_SECRET" not in names and "PATH" in names
    assert listing == "[]"
    _assert_no_secret(outcome)


def test_limits_are_validated():
    with pytest.raises(ValueError, match="timeout"):
        Limits(timeout=0)
    with pytest.raises(ValueError, match="memory_bytes"):
        Limits(memory_bytes=1 << 20)
    with pytest.raises(ValueError, match="workers"):
        Sandbox(workers=0)
    with pytest.raises(ValueError, match="isolate"):
        Sandbox(isolate="yes")


# --------------------------------------------------------------------------- hostile

BOTH = pytest.mark.parametrize("guard", [False, True], ids=["os-only", "guarded"])


@needs_isolation
@BOTH
def test_infinite_loop_is_stopped(host, guard):
    outcome = Sandbox(LIMITS, guard=guard).run("while True:\n    pass")
    assert outcome.status == "killed" and outcome.reason == "RLIMIT_CPU (SIGXCPU)"


@needs_isolation
@BOTH
def test_sleeping_forever_times_out(host, guard):
    outcome = Sandbox(SHORT, guard=guard).run("import time\ntime.sleep(1000)")
    assert outcome.status == "timeout" and "wall-clock" in outcome.reason


@needs_isolation
@BOTH
def test_fork_bomb_is_contained_and_leaves_no_process(host, guard):
    bomb = ("import os, time\n"
            "for _ in range(10000):\n"
            "    try:\n        os.fork()\n"
            "    except OSError:\n        pass\n"
            "os.setsid()\n"  # escape the process group, too
            "time.sleep(1000)\n")
    outcome = Sandbox(SHORT, guard=guard).run(bomb)
    # Forks fail at RLIMIT_NPROC (or at the guard); whatever started sleeps until the
    # timeout, and then every process in the namespace dies with it.
    assert outcome.status == "timeout"
    assert _sandbox_processes() == []


@needs_isolation
def test_fork_bomb_hits_the_process_limit(host):
    outcome = Sandbox(LIMITS, guard=False).run("import os\nwhile True:\n    os.fork()")
    assert outcome.status == "killed" and outcome.reason.startswith("RLIMIT_NPROC")


@needs_isolation
@BOTH
def test_huge_allocation_is_refused(host, guard):
    outcome = Sandbox(LIMITS, guard=guard).run("x = bytearray(10 * 1024**3)")
    assert (outcome.status, outcome.reason) == ("killed", "RLIMIT_AS (MemoryError)")


@needs_isolation
@BOTH
def test_disk_filler_is_stopped_by_the_file_size_limit(host, guard):
    before = os.statvfs(host["base"])
    filler = ("chunk = b'x' * (1 << 20)\n"
              "with open('fill.bin', 'wb') as f:\n"
              "    for _ in range(10000):\n        f.write(chunk)\n        f.flush()\n")
    outcome = Sandbox(LIMITS, guard=guard).run(filler)
    assert outcome.status == "killed" and outcome.reason.startswith("RLIMIT_FSIZE")
    # Many files under the size limit fill only the small tmpfs; outside it, nothing.
    many = ("import os\nchunk = b'x' * (1 << 20)\n"
            "for path in ['/tmp/fill', '/var/tmp/fill', os.path.expanduser('~/../fill')]:\n"
            "    try:\n        open(path, 'wb').write(chunk)\n"
            "    except OSError as e:\n        print(path, e.errno)\n"
            "for i in range(1000):\n"
            "    with open(f'f{i}', 'wb') as f:\n"
            "        for _ in range(4):\n            f.write(chunk)\n")
    outcome = Sandbox(LIMITS, guard=guard).run(many)
    assert (outcome.status, outcome.reason) == ("error", "OSError")
    assert "No space left" in outcome.detail
    assert "/tmp/fill 30" in outcome.stdout and "/var/tmp/fill 30" in outcome.stdout  # EROFS
    assert not os.path.exists("/tmp/fill") and not os.path.exists("/var/tmp/fill")
    after = os.statvfs(host["base"])
    lost = (before.f_bavail - after.f_bavail) * after.f_frsize
    assert lost < 256 << 20  # the candidates tried to write several GB


@needs_isolation
@BOTH
def test_deleting_a_directory_outside_is_refused(host, guard):
    decoy = host["decoy"]
    program = (f"import os, shutil\n"
               f"print(sorted(os.listdir({decoy!r})))\n"
               f"try:\n    open({decoy!r} + '/keep.txt', 'w').write('gone')\n"
               f"except OSError as e:\n    print('write', e.errno)\n"
               f"shutil.rmtree({decoy!r})\n")
    outcome = Sandbox(LIMITS, guard=guard).run(program)
    assert (outcome.status, outcome.reason) == ("error", "OSError")
    assert "Read-only file system" in outcome.detail
    assert "['keep.txt']" in outcome.stdout and "write 30" in outcome.stdout


@needs_isolation
@BOTH
def test_planted_secrets_stay_unread(host, guard):
    program = (f"import os\n"
               f"print(dict(os.environ))\n"
               f"found = []\n"
               f"for path in [{host['secret_file']!r}, '/proc/1/environ', '/proc/self/environ',\n"
               f"             '/proc/{os.getpid()}/environ', '/proc/{os.getppid()}/environ']:\n"
               f"    try:\n        found.append(open(path, 'rb').read().decode(errors='replace'))\n"
               f"    except OSError as e:\n        found.append(type(e).__name__)\n"
               f"print(found)\n"
               f"__result__ = repr(found)\n")
    outcome = Sandbox(LIMITS, guard=guard).run(program)
    assert outcome.passed
    assert "PermissionError" in outcome.stdout  # the root-only file
    _assert_no_secret(outcome)


@needs_isolation
@BOTH
def test_network_is_unreachable(host, guard):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    program = (f"import socket\n"
               f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
               f"s.sendall(b'{SECRET}')\n")
    try:
        outcome = Sandbox(LIMITS, guard=guard).run(program)
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody ever connected
    finally:
        listener.close()
    if guard:
        assert (outcome.status, outcome.reason) == ("error", "PermissionError")
    else:
        assert (outcome.status, outcome.reason) == ("error", "OSError")
        assert "Network is unreachable" in outcome.detail


@needs_isolation
def test_runs_as_an_unprivileged_uid_with_a_private_view(host):
    program = ("import os\nprint(os.getuid(), os.geteuid(), os.getgroups())\n"
               "print(sorted(p for p in os.listdir('/proc') if p.isdigit()))\n"
               "import hashlib, fractions, json\n")  # the standard library still loads
    outcome = Sandbox(LIMITS).run(program)
    assert outcome.passed, outcome.stderr
    ids, pids = outcome.stdout.splitlines()
    uid, euid, groups = ids.split(" ", 2)
    assert int(uid) == int(euid) >= _UID_BASE and groups == "[]"
    assert pids == "['1', '2']"  # its own pid namespace: init and itself


def test_basic_mode_still_limits(host):
    sandbox = Sandbox(LIMITS, isolate=False)
    assert sandbox.mode == "basic"
    outcomes = sandbox.run_many(["x = bytearray(10 * 1024**3)",
                                 "open('big', 'wb').write(b'x' * (64 << 20))",
                                 "import os; print('PONDER_TEST_SECRET' in os.environ)",
                                 "import socket; socket.socket()"])
    assert [(o.status, o.reason.split(" ")[0]) for o in outcomes] == [
        ("killed", "RLIMIT_AS"), ("killed", "RLIMIT_FSIZE"), ("passed", ""),
        ("error", "PermissionError")]
    assert outcomes[2].stdout == "False\n"


def test_a_forked_child_cannot_overrule_the_verdict(host):
    # The child outlives its failing parent (basic mode has no pid namespace) and then
    # finishes the program; only the candidate process itself may report.
    program = "import os, time\nif os.fork() == 0:\n    time.sleep(0.2)\nelse:\n    assert False\n"
    outcome = Sandbox(LIMITS, isolate=False, guard=False).run(program)
    assert (outcome.status, outcome.reason) == ("failed", "AssertionError")


@needs_isolation
def test_auto_mode_falls_back_to_basic_where_namespaces_are_refused(monkeypatch):
    monkeypatch.setattr(sandbox_module, "_ISOLATION", {})
    real_run = Sandbox._run

    def refused(self, program, limits, uid):  # as in a container without CAP_SYS_ADMIN
        if self.isolate:
            return Outcome("error", "sandbox setup failed",
                           detail="OSError: unshare: Operation not permitted")
        return real_run(self, program, limits, uid)

    monkeypatch.setattr(Sandbox, "_run", refused)
    sandbox = Sandbox(LIMITS)
    with pytest.warns(RuntimeWarning, match="basic mode"):
        assert sandbox.run("assert True").passed
    assert sandbox.mode == "basic"
    assert Sandbox(LIMITS).run_many(["pass", "assert False"])[1].status == "failed"
