"""Hostile programs: each must be contained with the right status and leave the test process unharmed.

After every program we check that the test process and a sentinel child of it are alive, that no process
of the sandbox uids is left, that nothing was written outside the work dir, and that the pool still
serves the next call.  Programs that rely on root-only layers (namespaces, uid drop, cgroups) skip when
they are unavailable.
"""

from __future__ import annotations

import os
import site
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from cleaner.sandbox import Sandbox, SandboxConfig

IS_ROOT = os.geteuid() == 0
SECRET = f"cleaner-secret-{uuid.uuid4().hex}"
MARK = f"cleaner-hostile-{uuid.uuid4().hex}"
# Places a sandboxed program must not be able to write (the host view of them is checked afterwards).
OUTSIDE = ["/tmp", "/var/tmp", "/dev/shm", os.getcwd(), os.path.expanduser("~")]
# Trees of ours the code must not see, by any path: this checkout (sources, tests, README, results/)
# and the main checkout whose venv the sandbox runs (only its site-packages and pyvenv.cfg are shown).
CHECKOUT = str(Path(__file__).resolve().parents[1])
VENV = sys.prefix
SITE_PACKAGES = tuple(site.getsitepackages())
OURS = tuple(dict.fromkeys([CHECKOUT, os.path.dirname(VENV.rstrip("/")), "/work"]))
SECRET_FILES = [
    os.path.join(CHECKOUT, "README.md"),
    os.path.join(CHECKOUT, "tests", "test_sandbox_hostile.py"),
    os.path.join(os.path.dirname(VENV.rstrip("/")), "README.md"),
    os.path.join(VENV, "bin", "activate"),
    "/root/.bashrc",
    "/etc/passwd",
    "/etc/hostname",
    "/proc/1/environ",
]
ALLOWED_DEV = {"null", "zero", "full", "random", "urandom", "shm", "fd", "stdin", "stdout", "stderr"}


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
    # Probes print "LEAK <what>" for each thing they reached that the sandbox must hide.


def _programs(test_pid: int, tcp_port: int, unix_path: str, abstract_name: str) -> list[Hostile]:
    writes = "\n".join(
        f"try:\n    open({os.path.join(d, MARK)!r}, 'w').write('pwned')\n    print('WROTE', {d!r})\nexcept OSError:\n    pass"
        for d in OUTSIDE
    )
    return [*_view_probes(), *_resource_programs(writes, test_pid, tcp_port, unix_path, abstract_name)]


def _venv_chain() -> dict[str, str]:
    """Directory -> the one entry it must show on the way to the venv: a venv inside a checkout (make install's
    .venv) puts the checkout's folder in the view, holding nothing but that path."""
    chain, path = {}, os.path.realpath(VENV)
    while path != "/":
        chain[os.path.dirname(path)] = os.path.basename(path)
        path = os.path.dirname(path)
    return chain


def _view_probes() -> list[Hostile]:
    """The filesystem view: nothing of ours by any path (absolute, .., /proc/<pid>/cwd|root, symlinks)."""
    read_any = (
        "import os\n"
        f"VENV_CHAIN = {_venv_chain()!r}\n"
        "def probe(path):\n"
        "    try:\n"
        "        if os.path.isdir(path):\n"
        "            shown = VENV_CHAIN.get(os.path.realpath(path))\n"
        "            names = [n for n in os.listdir(path) if n != shown]\n"
        "            if names or shown is None:\n"
        "                print('LEAK', path, names[:5])\n"
        "        else:\n"
        "            with open(path, 'rb') as fh:\n"
        "                fh.read(64)\n"
        "            print('LEAK', path)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    files = repr(SECRET_FILES)
    trees = repr([os.path.join(CHECKOUT, "results"), os.path.join(CHECKOUT, "src"), os.path.join(CHECKOUT, "tests")])
    return [
        Hostile(
            "read_our_files_by_absolute_path",
            read_any + f"for p in {files} + {trees}:\n    probe(p)\nprint('probed')",
            ("ok",), needs_root=True, stdout_contains="probed",
        ),
        Hostile(
            "walk_up_with_dotdot",
            read_any + "rel = '../' * 12\n"
            f"for p in {files}:\n    probe(rel + p.lstrip('/'))\n"
            f"probe(rel + {CHECKOUT!r}.lstrip('/'))\nos.chdir(rel)\nprint('at', os.getcwd(), sorted(os.listdir('.')))",
            ("ok",), needs_root=True, stdout_contains="at /",
        ),
        Hostile(
            "walk_the_whole_view",
            "import os\ncount = 0\n"
            "for top, dirs, names in os.walk('/'):\n"
            "    if top in ('/proc', '/dev'):\n        dirs[:] = []\n        continue\n"
            "    for name in names:\n        count += 1\n        path = os.path.join(top, name)\n"
            f"        if path.startswith({OURS!r}) and not path.startswith({SITE_PACKAGES!r})"
            f" and path not in ({os.path.join(VENV, 'pyvenv.cfg')!r},) and not path.startswith({os.path.join(VENV, 'bin', 'python')!r}):\n"
            "            print('LEAK', path)\n"
            "print('files', count)",
            ("ok",), needs_root=True, stdout_contains="files ", timeout_s=30.0, max_output_bytes=100_000,
        ),
        Hostile(
            "escape_through_proc_cwd_and_root",
            read_any + "for pid in [p for p in os.listdir('/proc') if p.isdigit()] + ['self', 'thread-self']:\n"
            "    for link in ('cwd', 'root'):\n"
            f"        for p in {files}:\n            probe(f'/proc/{{pid}}/{{link}}' + p)\n"
            f"        probe(f'/proc/{{pid}}/{{link}}' + {CHECKOUT!r})\n"
            "print('pids', sorted(os.listdir('/proc'), key=str)[:3], os.path.exists('/proc/1'))",
            ("ok",), needs_root=True, stdout_contains="pids",
        ),
        Hostile(
            "escape_through_symlinks",
            read_any + f"os.symlink({CHECKOUT!r}, 'checkout')\nos.symlink('/', 'root')\n"
            f"os.symlink({SECRET_FILES[0]!r}, 'readme')\n"
            f"probe('checkout/README.md')\nprobe('readme')\nprobe('root' + {CHECKOUT!r})\n"
            "for target in ('/proc/1/cwd', '/proc/1/root'):\n    try:\n        print('link', os.readlink(target))\n    except OSError:\n        pass\n"
            "print('linked')",
            ("ok",), needs_root=True, stdout_contains="linked",
        ),
        Hostile(
            "host_devices_and_trees",
            read_any + "extra = sorted(set(os.listdir('/dev')) - " + repr(ALLOWED_DEV) + ")\n"
            "if extra:\n    print('LEAK /dev', extra)\n"
            "for p in ('/dev/mem', '/dev/kmsg', '/dev/vsock', '/dev/fuse', '/dev/btrfs-control', '/dev/cpu_dma_latency',"
            " '/sys', '/run', '/home', '/var', '/etc/shadow', '/boot', '/mnt', '/opt', '/srv'):\n    probe(p)\n"
            "print(open('/dev/urandom', 'rb').read(4) != b'', open('/dev/zero', 'rb').read(2), open('/dev/null', 'w').write('x'))",
            ("ok",), needs_root=True, stdout_contains="True b'\\x00\\x00' 1",
        ),
        Hostile(
            "write_into_the_interpreter",
            "import os, numpy, sysconfig\n"
            "for d in (os.path.dirname(numpy.__file__), sysconfig.get_paths()['stdlib'], '/', '/etc', '/usr'):\n"
            "    try:\n        open(os.path.join(d, 'pwned.py'), 'w').write('x')\n        print('LEAK wrote', d)\n"
            "    except OSError as exc:\n        print(type(exc).__name__)\n"
            "print('tried')",
            ("ok",), needs_root=True, stdout_contains="tried",
        ),
    ]  # fmt: skip


def _resource_programs(writes: str, test_pid: int, tcp_port: int, unix_path: str, abstract_name: str) -> list[Hostile]:
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
    assert [line for line in result.stdout.splitlines() if line.startswith("LEAK")] == []
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
