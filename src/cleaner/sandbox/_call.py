"""One call in the fork server: fork a child, supervise it, kill everything it started, give the verdict.

Per call the server only prepares pipes and a work directory, sets the call's memory limit, forks the
child (:mod:`._child` confines it and runs the code), relays its output until it exits, the wall clock
runs out or the output goes over its budget, then kills every process of the call and empties the
writable directories.  Namespaces, the filesystem view, cgroup membership and the seccomp filter were
all set up once, at the server's start (:mod:`._server`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import select
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from . import _child
from ._cgroups import Cgroup, MemoryLimit
from ._types import SandboxConfig

MIB = 1 << 20
KILL_GRACE_S = 5.0
DRAIN_S = 1.0


@dataclass
class ServerState:
    """What the fork server set up once and every call reads."""

    config: SandboxConfig
    req_fd: int
    resp_fd: int
    owner_pid: int
    pid_ns: bool = False
    layers: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cgroups: dict[str, Cgroup] = field(default_factory=dict)
    memory: MemoryLimit | None = None
    work_root: str = ""
    private_root: bool = False  # the code sees only the server's view (/tmp and /dev/shm are ours)
    tmp_keep: frozenset[str] = frozenset()  # entries of the view's /tmp that hold host paths (never cleaned)
    uid: int | None = None
    gid: int | None = None
    seq: int = 0
    page_size: int = os.sysconf("SC_PAGE_SIZE")


# ---- process bookkeeping (without a PID namespace) ---------------------------------------------------


def _ppid_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(name))
    return children


def _descendants(root: int) -> set[int]:
    tree = _ppid_map()
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in tree.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _count_user_tasks(uid: int) -> int:
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", encoding="ascii", errors="replace") as fh:
                text = fh.read()
        except OSError:
            continue
        owner = threads = None
        for line in text.splitlines():
            if line.startswith("Uid:"):
                owner = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        if owner == uid:
            total += threads or 1
    return total


class CallRunner:
    """Runs one request: fork, confine, supervise, kill everything, collect the verdict."""

    def __init__(self, state: ServerState, request: dict[str, Any]) -> None:
        self.state = state
        self.request = request
        self.limit = int(request["max_output_bytes"])
        self.main_pid = 0
        self.main_status: int | None = None
        self.main_cpu_s = 0.0

    def _main_exited(self, status: int, usage: Any) -> None:
        self.main_status = status
        self.main_cpu_s = usage.ru_utime + usage.ru_stime

    # -- killing and reaping --
    def _reap_nohang(self) -> bool:
        """Reap every exited child; return True when the server has no children left."""
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid == 0:
                return False
            if pid == self.main_pid:
                self._main_exited(status, usage)

    def _kill_uid(self, uid: int) -> None:
        """kill(-1) as the dedicated sandbox uid: reaches exactly this server's call processes."""
        helper = os.fork()
        if helper == 0:
            try:
                os.setresgid(self.state.gid, self.state.gid, self.state.gid)  # type: ignore[arg-type]
                os.setresuid(uid, uid, uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        while True:
            try:
                pid, status, usage = os.wait4(-1, 0)
            except ChildProcessError:
                return
            if pid == self.main_pid:
                self._main_exited(status, usage)
            if pid == helper:
                return

    def kill_all(self) -> bool:
        """SIGKILL every process this call started; True when none is left."""
        state = self.state
        pids_group = state.cgroups.get("pids")
        server_pid = os.getpid()

        def nothing_left() -> bool:
            if not self._reap_nohang():
                return False
            if pids_group is not None:
                with contextlib.suppress(OSError):
                    return not [pid for pid in pids_group.procs() if pid != server_pid]
            return True

        if nothing_left():  # the common case: the main process exited and started nothing that lives
            return True
        # Without a PID namespace or a uid of its own, the sweep races the call's forks: stop them
        # (pids.max 1 leaves room for the server alone; the uid kill helper would need a second).
        freeze = not state.pid_ns and state.uid is None and pids_group is not None
        if freeze:
            with contextlib.suppress(OSError):
                pids_group.write("pids.max", "1")
        deadline = time.monotonic() + KILL_GRACE_S
        while True:
            if state.pid_ns:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(-1, signal.SIGKILL)  # from PID 1 of the namespace: everyone but us
            else:
                victims = _descendants(os.getpid())
                if self.main_pid:
                    with contextlib.suppress(OSError):
                        os.killpg(self.main_pid, signal.SIGKILL)
                if pids_group is not None:
                    with contextlib.suppress(OSError):
                        victims.update(pid for pid in pids_group.procs() if pid != server_pid)
                for pid in victims:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                if state.uid is not None:
                    self._kill_uid(state.uid)
            if nothing_left():
                if freeze:
                    pids_group.write("pids.max", str(state.config.max_processes + 1))
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)

    # -- the call --
    def _workdir(self) -> str:
        state = self.state
        state.seq += 1
        path = os.path.join(state.work_root, f"run-{state.owner_pid}-{state.seq}")  # unique across servers
        os.mkdir(path, 0o700)
        if state.uid is not None:
            os.chown(path, state.uid, state.gid)  # type: ignore[arg-type]
        return path

    def run(self) -> dict[str, Any]:
        state, req = self.state, self.request
        workdir = self._workdir()
        fds: list[int] = []
        try:
            return self._run_in(workdir, fds)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            if state.private_root:  # the call could write /tmp (its work dir is in it) and /dev/shm
                for directory in ("/tmp", "/dev/shm"):
                    for name in os.listdir(directory):
                        if directory != "/tmp" or name not in state.tmp_keep:
                            _remove_tree(os.path.join(directory, name))
            else:
                _remove_tree(workdir)

    def _run_in(self, workdir: str, fds: list[int]) -> dict[str, Any]:
        """1) the call's limits and fds  2) fork  3) relay output until exit/timeout/limit  4) verdict."""
        state, timeout_s = self.state, float(self.request["timeout_s"])
        if state.memory is not None:
            state.memory.set_for_call(self.request["memory_mb"])
        stdin_fd = self._stdin(fds)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        st_r, st_w = os.pipe2(os.O_CLOEXEC)
        fds += [out_r, out_w, err_r, err_w, st_r, st_w]
        plan = self._plan(workdir, stdin_fd, out_w, err_w, st_w)
        for name in ("HOME", "TMPDIR", "PWD"):  # the rest of the environment was set at start-up
            os.environ[name] = workdir

        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child.run_child(plan)  # never returns
        self.main_pid = pid
        for fd in (stdin_fd, out_w, err_w, st_w):
            os.close(fd)
            fds.remove(fd)

        bufs = {out_r: bytearray(), err_r: bytearray()}
        timed_out, over_limit = self._supervise(pid, bufs, start + timeout_s, fds)
        end = time.monotonic()
        all_dead = self.kill_all()
        if self.main_status is None:
            with contextlib.suppress(ChildProcessError):
                self._main_exited(*os.wait4(pid, 0)[1:])
        over_limit |= _drain(bufs, self.limit)

        result: dict[str, Any] = {
            "stdout": bytes(bufs[out_r][: self.limit]).decode("utf-8", "replace"),
            "stderr": bytes(bufs[err_r][: self.limit]).decode("utf-8", "replace"),
            "duration_s": round(end - start, 6),
            "truncated": over_limit,
            "exit_code": _exit_code(self.main_status),
            "error_type": None,
        }
        report = _read_status(st_r)
        oom_killed = state.memory is not None and state.memory.oom_killed_since_last_call()
        if not all_dead:
            result.update(status="sandbox_error")
            result["stderr"] += "\n[sandbox] could not kill every process of the call"
        elif "sandbox_error" in report:
            result.update(status="sandbox_error")
            result["stderr"] += "\n[sandbox] " + str(report["sandbox_error"])
        elif timed_out:
            result.update(status="timeout")
        elif over_limit:
            result.update(status="output_limit")
        else:
            cpu_limit_hit = self.main_cpu_s >= plan.rlimit_cpu - 0.05
            result.update(_verdict(self.main_status, report, oom_killed, cpu_limit_hit))
        return result

    def _stdin(self, fds: list[int]) -> int:
        """The call's stdin: /dev/null, or a memfd holding the request's bytes (no pipe to keep fed)."""
        if self.request["stdin_b64"] is None:
            fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        else:
            fd = os.memfd_create("stdin", os.MFD_CLOEXEC)
            view = memoryview(base64.b64decode(self.request["stdin_b64"]))
            while view:
                view = view[os.write(fd, view) :]
            os.lseek(fd, 0, os.SEEK_SET)
        fds.append(fd)
        return fd

    def _plan(self, workdir: str, stdin_fd: int, out_w: int, err_w: int, st_w: int) -> _child.ChildPlan:
        state, config, memory_mb = self.state, self.state.config, self.request["memory_mb"]
        rlimit_as = None
        if memory_mb is not None:
            with open("/proc/self/statm", encoding="ascii") as fh:
                vsz = int(fh.read().split()[0]) * state.page_size
            rlimit_as = vsz + memory_mb * MIB
        rlimit_nproc = None
        if state.uid is not None:
            rlimit_nproc = config.max_processes
        elif os.geteuid() != 0:  # shared uid: allow this many more tasks than the user already has
            rlimit_nproc = _count_user_tasks(os.getuid()) + config.max_processes
        return _child.ChildPlan(
            code=self.request["code"],
            workdir=workdir,
            stdin_fd=stdin_fd,
            stdout_fd=out_w,
            stderr_fd=err_w,
            status_fd=st_w,
            uid=state.uid,
            gid=state.gid,
            rlimit_as=rlimit_as,
            rlimit_cpu=math.ceil(float(self.request["timeout_s"])) + 1,
            rlimit_nproc=rlimit_nproc,
            rlimit_fsize=config.max_file_mb * MIB,
            rlimit_nofile=config.max_open_files,
            die_with_server=not state.pid_ns,
        )

    def _supervise(self, pid: int, bufs: dict[int, bytearray], deadline: float, fds: list[int]) -> tuple[bool, bool]:
        """Collect output until the main process exits; returns (timed out, over the output limit)."""
        timed_out = over_limit = main_done = False
        try:
            pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):  # kernel < 5.3: poll the exit status every few ms instead
            pidfd = None
        poller = select.poll()
        for fd in bufs:
            poller.register(fd, select.POLLIN)
        if pidfd is not None:
            fds.append(pidfd)
            poller.register(pidfd, select.POLLIN)
        while not main_done and not over_limit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            wait_ms = max(1, math.ceil(remaining * 1000))
            for fd, _ in poller.poll(wait_ms if pidfd is not None else min(wait_ms, 5)):
                if fd == pidfd:
                    main_done = True
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    poller.unregister(fd)
                    continue
                bufs[fd] += chunk
                if len(bufs[fd]) > self.limit:
                    over_limit = True
            if pidfd is None and not main_done:
                waited, status, usage = os.wait4(pid, os.WNOHANG)
                if waited:
                    self._main_exited(status, usage)
                    main_done = True
        if main_done and self.main_status is None:
            self._main_exited(*os.wait4(pid, 0)[1:])
        return timed_out, over_limit


def _exit_code(status: int | None) -> int | None:
    if status is None:
        return None
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return None


def _verdict(status: int | None, report: dict[str, Any], oom_killed: bool, cpu_limit_hit: bool) -> dict[str, Any]:
    code = _exit_code(status)
    if code == 0:
        return {"status": "ok"}
    if report.get("memory"):
        return {"status": "memory", "error_type": report.get("error_type") or "MemoryError"}
    if code is not None and code < 0:
        sig = -code
        if oom_killed and sig == signal.SIGKILL:
            return {"status": "memory", "error_type": "OOMKilled"}
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_limit_hit):
            return {"status": "timeout", "error_type": None}  # RLIMIT_CPU: CPU time ran out
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"SIG{sig}"
        return {"status": "error", "error_type": name}
    if oom_killed:
        return {"status": "memory", "error_type": "OOMKilled"}
    return {"status": "error", "error_type": report.get("error_type") or "NonZeroExit"}


def _drain(bufs: dict[int, bytearray], limit: int) -> bool:
    """Read what is left in the output pipes (writers are dead by now); True if over the limit."""
    over = False
    deadline = time.monotonic() + DRAIN_S
    for fd, buf in bufs.items():
        os.set_blocking(fd, False)
        while time.monotonic() < deadline:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    break
                continue
            if not chunk:
                break
            room = limit + 1 - len(buf)
            if room > 0:
                buf += chunk[:room]
        over |= len(buf) > limit
    return over


def _read_status(fd: int) -> dict[str, Any]:
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError, OSError):
        while chunk := os.read(fd, 65536):
            data += chunk
            if len(data) > 65536:
                break
    try:
        report = json.loads(data.decode("utf-8", "replace")) if data else {}
    except ValueError:
        return {}
    return report if isinstance(report, dict) else {}


def _remove_tree(path: str) -> None:
    def make_writable(func: Any, target: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
        with contextlib.suppress(OSError):
            func(target)

    try:
        os.rmdir(path)  # the common case: the code left its work dir empty
        return
    except FileNotFoundError:
        return
    except NotADirectoryError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except OSError:
        pass
    if os.path.islink(path):
        os.unlink(path)
        return
    shutil.rmtree(path, onerror=make_writable)
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)


def child_env(config: SandboxConfig, workdir: str) -> dict[str, str]:
    """The environment of the code: fixed variables, ``HOME``/``TMPDIR``/``PWD`` = its work dir."""
    env = {
        "PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "PWD": workdir,
        "LANG": "C.UTF-8",
        "USER": "sandbox",
        "LOGNAME": "sandbox",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    env.update(dict(config.env))
    return env


