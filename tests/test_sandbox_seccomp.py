"""The seccomp layer: every denied system call fails with EPERM, and the pool keeps serving after each.

The calls are made with all-zero arguments as root inside the namespaces (``drop_privileges=False``),
where without the filter they would succeed or fail differently (``unshare(0)`` and
``ptrace(PTRACE_TRACEME)`` return 0, ``setns(0)`` gives EINVAL, ``mount(NULL...)`` EFAULT): the control
pool without the filter shows it.  The uid-dropped pool of the other tests runs under the same filter.
"""

from __future__ import annotations

import errno
import os

import pytest

from cleaner.sandbox import Sandbox, SandboxConfig, _seccomp
from cleaner.sandbox._server import _build_seccomp
from cleaner.sandbox._call import ServerState

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="calling them as root inside the namespaces needs root")

try:
    seccomp = _seccomp._import_pyseccomp()
except (ImportError, RuntimeError, OSError):  # pragma: no cover - the lock pins pyseccomp
    seccomp = None
needs_library = pytest.mark.skipif(seccomp is None, reason="pyseccomp / libseccomp.so.2 not available")


def _number(name: str) -> int:
    return seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)


NATIVE = [name for name in _seccomp.DENIED if seccomp is not None and _number(name) >= 0]
PROBE = (
    "import ctypes, os\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "libc.syscall.restype = ctypes.c_long\n"
    "r = libc.syscall(ctypes.c_long({nr}), 0, 0, 0, 0, 0, 0)\n"
    "print(r, ctypes.get_errno())\n"
)


def _errno_of(box: Sandbox, number: int) -> tuple[int, int]:
    result = box.run_sync(PROBE.format(nr=number), timeout_s=10)
    assert result.status == "ok", result.stderr
    ret, err = result.stdout.split()
    return int(ret), int(err)


@pytest.fixture(scope="module")
def root_box():
    with Sandbox(workers=1, config=SandboxConfig(preload=(), drop_privileges=False)) as box:
        yield box


@needs_root
@needs_library
@pytest.mark.parametrize("name", NATIVE)
def test_denied_call_fails_with_eperm(root_box, name):
    assert "seccomp" in root_box.run_sync("1").isolation
    assert _errno_of(root_box, _number(name)) == (-1, errno.EPERM)
    assert root_box.run_sync("6 * 7").stdout == "42\n"  # the pool keeps serving


@needs_root
@needs_library
@pytest.mark.parametrize("flag", _seccomp.NAMESPACE_CLONE_FLAGS)
def test_clone_into_a_new_namespace_fails_and_clone3_is_unknown(root_box, flag):
    code = (
        "import ctypes, os, signal\n"
        "libc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"
        f"r = libc.syscall(ctypes.c_long({_number('clone')}), {flag | 17}, 0, 0, 0, 0)\n"
        "if r == 0:\n    os._exit(0)\n"
        "print(r, ctypes.get_errno())\n"
        f"r = libc.syscall(ctypes.c_long({_number('clone3')}), 0, 0)\nprint(r, ctypes.get_errno())\n"
        "pid = os.fork()\nif pid == 0:\n    os._exit(3)\nprint(os.waitpid(pid, 0)[1] >> 8)"  # plain fork still works
    )
    result = root_box.run_sync(code, timeout_s=10)
    assert result.stdout.split("\n")[:3] == [f"-1 {errno.EPERM}", f"-1 {errno.ENOSYS}", "3"], result.stderr


@needs_root
@needs_library
def test_threads_and_subprocesses_still_work_under_the_filter(root_box):
    code = (
        "import threading, subprocess, sys\nout = []\n"
        "t = threading.Thread(target=out.append, args=(7,))\nt.start()\nt.join()\n"
        "p = subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True, text=True)\n"
        "print(out, p.stdout.strip(), p.returncode)"
    )
    result = root_box.run_sync(code, timeout_s=30)
    assert (result.status, result.stdout) == ("ok", "[7] 42 0\n"), result.stderr


@needs_root
def test_without_the_filter_the_same_calls_get_through():
    """The control: proves the EPERMs above come from the filter, not from the kernel."""
    if seccomp is None:
        pytest.skip("needs pyseccomp for the syscall numbers")
    config = SandboxConfig(preload=(), drop_privileges=False, seccomp=False)
    with Sandbox(workers=1, config=config) as box:
        assert "seccomp" not in box.run_sync("1").isolation
        assert _errno_of(box, _number("unshare")) == (0, 0)
        assert _errno_of(box, _number("ptrace"))[0] == 0  # PTRACE_TRACEME
        assert _errno_of(box, _number("setns")) == (-1, errno.EINVAL)  # fd 0 is no namespace


def test_a_missing_library_is_reported_as_a_missing_layer(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pyseccomp", None)  # import now raises ImportError
    state = ServerState(config=SandboxConfig(), req_fd=-1, resp_fd=-1, owner_pid=0)
    assert _build_seccomp(state) is None
    assert any(w.startswith("seccomp: no filter") and "pyseccomp" in w for w in state.warnings), state.warnings


def test_the_unprivileged_pool_runs_under_the_filter_too():
    with Sandbox(workers=1, config=SandboxConfig(preload=())) as box:
        result = box.run_sync("print(open('/proc/self/status').read().split('Seccomp:')[1].split()[0])")
    if seccomp is None:
        assert "seccomp" not in result.isolation
        assert any("seccomp" in w for w in box.warnings)
    else:
        assert "seccomp" in result.isolation
        assert result.stdout == "2\n"  # SECCOMP_MODE_FILTER
