"""Hostile programs: each must be contained with the right status and leave the test process unharmed.

After every program we check that the test process and a sentinel child of it are alive, that no process
of the sandbox uids is left, that nothing was written outside the work dir, and that the pool still
serves the next call.  Programs that rely on root-only layers (namespaces, uid drop, cgroups) skip when
they are unavailable.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass

import pytest

from cleaner.sandbox import Sandbox, SandboxConfig

IS_ROOT = os.geteuid() == 0
SECRET = f"cleaner-secret-{uuid.uuid4().hex}"
MARK = f"cleaner-hostile-{uuid.uuid4().hex}"
# Places a sandboxed program must not be able to write (the host view of them is checked afterwards).
OUTSIDE = ["/tmp", "/var/tmp", "/dev/shm", os.getcwd(), os.path.expanduser("~")]


@dataclass(frozen=True)
class Hostile:
    name: str
    code: str
    statuses: tuple[str, ...]
    error_types: tuple[str | None, ...] | None = None
    timeout_s: float = 5.0
    memory_mb: int = 256
    max_output_bytes: int = 10_000
    needs_root: bool = False
    max_duration_s: float | None = None
    fast_only_with_cgroups: bool = False  # RLIMIT_AS alone takes seconds to stop runaway growth
    stdout_contains: str | None = None


def _programs(test_pid: int, tcp_port: int, unix_path: str, abstract_name: str) -> list[Hostile]:
    writes = "\n".join(
        f"try:\n    open({os.path.join(d, MARK)!r}, 'w').write('pwned')\n    print('WROTE', {d!r})\nexcept OSError:\n    pass"
        for d in OUTSIDE
    )
    return [
        Hostile("fork_bomb", "import os\nwhile True:\n    os.fork()", ("error", "output_limit", "timeout")),
        Hostile(
            "fork_bomb_swallowing_errors",
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
            ("timeout",),
            timeout_s=1.5,
        ),
        Hostile("memory_bomb_8gib", "x = bytearray(8 * 2**30)", ("memory",), ("MemoryError",)),
        Hostile(
            "memory_growth",
            "a = []\nwhile True:\n    a.append(bytearray(10**6))",
            ("memory",),
            max_duration_s=4.0,
            fast_only_with_cgroups=True,
        ),
        Hostile("numpy_huge_array", "import numpy as np\nnp.ones(10**10)", ("memory",)),
        Hostile("infinite_loop", "while True:\n    pass", ("timeout",), timeout_s=1.0, max_duration_s=2.0),
        Hostile(
            "stdout_flood",
            "while True:\n    print('x' * 1000)",
            ("output_limit",),
            max_duration_s=2.0,
        ),
        Hostile("stderr_flood", "import sys\nwhile True:\n    sys.stderr.write('e' * 4096)", ("output_limit",)),
        Hostile(
            "network_connect_internet",
            "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)",
            ("error",),
            ("OSError", "TimeoutError", "ConnectionRefusedError"),
            needs_root=True,
        ),
        Hostile(
            "network_connect_host_loopback",
            f"import socket\nsocket.create_connection(('127.0.0.1', {tcp_port}), timeout=2)",
            ("error",),
            ("OSError", "ConnectionRefusedError", "TimeoutError"),
            needs_root=True,
        ),
        Hostile(
            "unix_socket_of_the_host",
            f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({unix_path!r})",
            ("error",),
            ("FileNotFoundError", "PermissionError", "ConnectionRefusedError"),
            needs_root=True,
        ),
        Hostile(
            "abstract_unix_socket_of_the_host",
            f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({abstract_name!r})",
            ("error",),
            ("ConnectionRefusedError", "FileNotFoundError"),
            needs_root=True,
        ),
        Hostile(
            "write_outside_workdir",
            writes + "\nprint('done')",
            ("ok",),
            needs_root=True,
            stdout_contains="done",
        ),
        Hostile(
            "read_etc_shadow",
            "print(open('/etc/shadow').read())",
            ("error",),
            ("PermissionError", "FileNotFoundError"),
            needs_root=True,
        ),
        Hostile(
            "read_root_home",
            "import os\nprint(os.listdir('/root'))\nprint(open('/root/.bashrc').read())",
            ("error",),
            ("FileNotFoundError", "PermissionError"),
            needs_root=True,
        ),
        Hostile(
            "read_parent_environment",
            "import glob, os\nprint(dict(os.environ))\n"
            "for path in glob.glob('/proc/*/environ') + ['/proc/%d/environ' % " + str(test_pid) + "]:\n"
            "    try:\n        print(open(path, 'rb').read())\n    except OSError:\n        pass",
            ("ok",),
            needs_root=True,
        ),
        Hostile(
            "kill_the_parent_and_everyone",
            "import os, signal\n"
            f"for pid in (os.getppid(), {test_pid}, 1):\n"
            "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError as e:\n        print(type(e).__name__)\n"
            "try:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\nprint('still here')",
            ("ok",),
            needs_root=True,
            stdout_contains="still here",
        ),
        Hostile(
            "ignore_sigterm",
            "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n    signal.signal(s, signal.SIG_IGN)\n"
            "while True:\n    pass",
            ("timeout",),
            timeout_s=1.0,
            max_duration_s=2.0,
        ),
        Hostile(
            "double_forked_setsid_daemon",
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        time.sleep(3)\n        open({os.path.join('/tmp', MARK)!r}, 'w').write('late')\n"
            "    os._exit(0)\nprint('parent exits')",
            ("ok",),
            max_duration_s=2.0,
        ),
        Hostile(
            "daemon_keeps_stdout_open",
            "import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n    while True:\n"
            "        print('tick', flush=True)\n        time.sleep(0.05)\nprint('parent exits')",
            ("ok", "output_limit"),
            max_duration_s=2.0,
        ),
        Hostile(
            "deep_recursion_unbounded",
            "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1) + 1\nf(0)",
            ("memory", "error"),
            max_duration_s=4.0,
            fast_only_with_cgroups=True,
        ),
        Hostile(
            "deep_recursion_default_limit",
            "def f(n):\n    return f(n + 1)\nf(0)",
            ("error",),
            ("RecursionError",),
        ),
        Hostile("ctypes_segfault", "import ctypes\nctypes.string_at(0)", ("error",), ("SIGSEGV",)),
        Hostile("abort", "import os\nos.abort()", ("error",), ("SIGABRT",)),
        Hostile(
            "become_root",
            "import os\nos.setuid(0)",
            ("error",),
            ("PermissionError",),
            needs_root=True,
        ),
        Hostile(
            "thread_bomb",
            "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()",
            ("error", "memory"),
            timeout_s=10.0,
        ),
        Hostile(
            "disk_filler",
            "with open('big.bin', 'wb') as f:\n    while True:\n        f.write(b'0' * 2**20)",
            ("error", "memory"),
            ("OSError", "MemoryError", "OOMKilled"),
            memory_mb=512,
        ),
        Hostile("stop_itself", "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)", ("timeout",), timeout_s=1.0),
        Hostile(
            "mount_unshare_sethostname",
            "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "print([libc.unshare(0x00020000), libc.mount(b'tmpfs', b'/mnt', b'tmpfs', 0, None),"
            " libc.sethostname(b'pwned', 5), libc.chroot(b'/')])",
            ("ok",),
            stdout_contains="[-1, -1, -1, -1]",
        ),
        Hostile(
            "close_standard_streams",
            "import os\nos.close(0)\nos.close(1)\nos.close(2)\nwhile True:\n    pass",
            ("timeout",),
            timeout_s=1.0,
        ),
    ]


def _uid_processes(uids: tuple[int, ...]) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", encoding="ascii", errors="replace") as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) in uids:
                            found.append(int(name))
                        break
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def environment():
    os.environ["CLEANER_SANDBOX_TEST_SECRET"] = SECRET  # servers started after this must not see it
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    tcp.setblocking(False)
    unix_dir = os.path.join(tempfile.gettempdir(), f"{MARK}-sock")
    os.mkdir(unix_dir)
    os.chmod(unix_dir, 0o777)
    unix_path = os.path.join(unix_dir, "s")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(unix_path)
    os.chmod(unix_path, 0o777)
    unix.listen(8)
    unix.setblocking(False)
    abstract_name = f"\0{MARK}"
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(abstract_name)
    abstract.listen(8)
    abstract.setblocking(False)
    sentinel = subprocess.Popen(["sleep", "600"])
    config = SandboxConfig(preload=("numpy",), max_file_mb=64, max_processes=32)
    box = Sandbox(workers=2, config=config)
    try:
        yield {
            "box": box,
            "sentinel": sentinel,
            "listeners": (tcp, unix, abstract),
            "programs": {
                p.name: p for p in _programs(os.getpid(), tcp.getsockname()[1], unix_path, abstract_name)
            },
        }
    finally:
        box.close()
        sentinel.kill()
        sentinel.wait()
        for sock in (tcp, unix, abstract):
            sock.close()
        os.unlink(unix_path)
        os.rmdir(unix_dir)
        del os.environ["CLEANER_SANDBOX_TEST_SECRET"]


PROGRAM_NAMES = [p.name for p in _programs(0, 1, "/x", "\0x")]


def test_at_least_twenty_hostile_programs():
    assert len(PROGRAM_NAMES) >= 20
    assert len(set(PROGRAM_NAMES)) == len(PROGRAM_NAMES)


@pytest.mark.parametrize("name", PROGRAM_NAMES)
def test_hostile_program_is_contained(environment, name):
    program: Hostile = environment["programs"][name]
    box: Sandbox = environment["box"]
    if program.needs_root and not IS_ROOT:
        pytest.skip("this containment relies on root-only layers (namespaces, uid drop)")
    start = time.monotonic()
    result = box.run_sync(
        program.code,
        timeout_s=program.timeout_s,
        memory_mb=program.memory_mb,
        max_output_bytes=program.max_output_bytes,
    )
    elapsed = time.monotonic() - start

    assert result.status in program.statuses, (result.status, result.error_type, result.stderr[-500:])
    if program.error_types is not None:
        assert result.error_type in program.error_types, (result.error_type, result.stderr[-500:])
    if program.max_duration_s is not None:
        if not program.fast_only_with_cgroups or "cgroup_memory" in result.isolation:
            assert elapsed < program.max_duration_s
    assert elapsed < program.timeout_s + 5
    assert len(result.stdout.encode()) <= program.max_output_bytes
    if program.stdout_contains is not None:
        assert program.stdout_contains in result.stdout, (result.stdout, result.stderr[-500:])
    assert len(result.stderr.encode()) <= program.max_output_bytes + 200

    # The test process and its other children are unharmed.
    assert environment["sentinel"].poll() is None
    os.kill(os.getpid(), 0)
    # No process of the sandbox uids survives the call (daemons included).
    if box.sandbox_uids:
        assert _uid_processes(box.sandbox_uids) == []
    # Nothing was written outside the work dir, nothing reached the host's listeners.
    # /tmp and /dev/shm are the writable places besides the work dir: private tmpfs of each worker,
    # emptied after every call (see test_shared_memory_does_not_carry_over_between_calls).
    private = {"WROTE /dev/shm", "WROTE /tmp"} if box.isolation and "private_tmp" in box.isolation else set()
    assert [line for line in result.stdout.splitlines() if line.startswith("WROTE") and line not in private] == []
    for directory in OUTSIDE:
        assert not os.path.exists(os.path.join(directory, MARK))
    for listener in environment["listeners"]:
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert SECRET not in result.stdout + result.stderr
    # The pool still serves the next call.
    follow_up = box.run_sync("6 * 7", timeout_s=10)
    assert (follow_up.status, follow_up.stdout) == ("ok", "42\n")


def test_killed_daemon_never_acts_later(environment):
    """A double-forked daemon that would write a marker 1 s after the call must be gone by then."""
    box: Sandbox = environment["box"]
    late = os.path.join(box.run_sync("import os\nos.getcwd()").stdout.strip().strip("'"), "late")
    code = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        f"        time.sleep(1)\n        open({late!r}, 'w').write('x')\n        print('late', flush=True)\n"
        "    os._exit(0)\nprint('parent exits')"
    )
    result = box.run_sync(code, timeout_s=5)
    assert (result.status, result.stdout) == ("ok", "parent exits\n")
    time.sleep(1.5)
    if box.sandbox_uids:
        assert _uid_processes(box.sandbox_uids) == []
    assert not os.path.exists(late)
    assert environment["sentinel"].poll() is None


@pytest.mark.skipif(not IS_ROOT, reason="SysV IPC and /dev/shm isolation use an IPC and a mount namespace")
def test_shared_memory_does_not_carry_over_between_calls(environment):
    box: Sandbox = environment["box"]
    writer = box.run_sync(
        "from multiprocessing import shared_memory\n"
        "s = shared_memory.SharedMemory(name='cleaner_carry', create=True, size=64)\n"
        "s.buf[:5] = b'hello'\nopen('/dev/shm/plain_file', 'w').write('x')\nprint('written')",
        timeout_s=10,
    )
    assert writer.status == "ok", writer.stderr
    for _ in range(2):  # whichever worker serves it
        reader = box.run_sync("import os\nprint(sorted(os.listdir('/dev/shm')))", timeout_s=10)
        assert (reader.status, reader.stdout) == ("ok", "[]\n")
    assert not os.path.exists("/dev/shm/cleaner_carry")
