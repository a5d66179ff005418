"""The fork server: one process (per pool worker) that isolates itself once, then forks a child per call.

Startup, in order (each layer is optional and recorded in ``isolation``):

1. cgroup v1 ``memory`` and ``pids`` groups ``cleaner-sandbox-<pid>`` next to our own cgroup (root).
2. ``unshare`` of the mount, network, IPC, UTS and PID namespaces (root), then a fork so that the
   server itself becomes PID 1 of the new PID namespace: ``kill(-1, SIGKILL)`` from there ends every
   process a call started, double-forked ``setsid`` daemons included, and the kernel kills the whole
   namespace if the server dies.  The outer process only waits and removes the cgroups afterwards.
3. A read-only view of the filesystem: every mount is remounted read-only in the private mount
   namespace, ``hidden_paths`` (``/root``, ``/home``, ``/run`` with its unix sockets, ...) are covered
   by empty tmpfs with the interpreter and ``sys.path`` directories bind-mounted back read-only, a fresh
   ``/proc`` for the PID namespace, and a private ``/tmp`` tmpfs for the per-call work directories.
4. Preload of heavy modules (numpy, sympy) into this template, then ``gc.freeze()`` so forked children
   do not copy-on-write the template's objects when the collector runs.

Without root the same server runs with what is left: a separate process per call with rlimits, a
process group, child-subreaper based killing of all descendants, an emptied environment and a temporary
work directory (see ``docs/sandbox.md``).  The prototype's findings (PID 1 here reaps slowly, so a
subreaper is needed; a memory cgroup kills runaway allocation in < 1 s where RLIMIT_AS alone needs ~6 s;
``/run`` holds a world-writable unix socket a network namespace does not block) shaped these choices.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import gc
import importlib
import json
import math
import os
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from . import _child, _linux
from ._types import HEADER_SIZE, SandboxConfig, decode_body, frame_length, write_frame

MIB = 1 << 20
CGROUP_PREFIX = "cleaner-sandbox-"
KILL_GRACE_S = 5.0
DRAIN_S = 1.0


# ---- cgroups ------------------------------------------------------------------------------------------


@dataclass
class Cgroup:
    """A cgroup v1 directory we created, addressed through directory fds so it stays usable after the
    cgroup mounts are hidden from the sandboxed code."""

    controller: str
    path: str
    dir_fd: int
    parent_fd: int
    name: str

    def write(self, filename: str, value: str) -> None:
        fd = os.open(filename, os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.dir_fd)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def read(self, filename: str) -> str:
        fd = os.open(filename, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.dir_fd)
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks).decode()
        finally:
            os.close(fd)

    def has(self, filename: str) -> bool:
        try:
            os.stat(filename, dir_fd=self.dir_fd)
        except OSError:
            return False
        return True

    def procs(self) -> list[int]:
        return [int(p) for p in self.read("cgroup.procs").split()]

    def remove(self) -> None:
        """Kill what is left inside (only after the server is gone) and remove the directory."""
        deadline = time.monotonic() + KILL_GRACE_S
        while True:
            try:
                os.rmdir(self.name, dir_fd=self.parent_fd)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                for pid in self.procs():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.005)
        for fd in (self.dir_fd, self.parent_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _own_cgroup_dir(controller: str) -> str | None:
    """Host path of this process's cgroup for a v1 ``controller`` (``/proc/self/cgroup`` + mountinfo)."""
    rel = None
    with open("/proc/self/cgroup", encoding="utf-8") as fh:
        for line in fh:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) == 3 and controller in parts[1].split(","):
                rel = parts[2]
    if rel is None:
        return None
    for entry in _linux.read_mountinfo():
        if entry.fstype == "cgroup" and controller in entry.super_options:
            if rel == entry.root or rel.startswith(entry.root.rstrip("/") + "/"):
                suffix = rel[len(entry.root.rstrip("/")) :].lstrip("/")
                return os.path.join(entry.mount_point, suffix) if suffix else entry.mount_point
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale_cgroups(parent: str) -> None:
    """Remove ``cleaner-sandbox-<pid>`` groups left by servers that were SIGKILLed."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(CGROUP_PREFIX):
            continue
        suffix = name[len(CGROUP_PREFIX) :]
        if not suffix.isdigit() or _pid_alive(int(suffix)):
            continue
        path = os.path.join(parent, name)
        with contextlib.suppress(OSError):
            with open(os.path.join(path, "cgroup.procs"), encoding="utf-8") as fh:
                for pid in fh.read().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.01)
            os.rmdir(path)


def setup_cgroups(owner_pid: int, warnings: list[str]) -> dict[str, Cgroup]:
    groups: dict[str, Cgroup] = {}
    name = f"{CGROUP_PREFIX}{owner_pid}"
    for controller in ("memory", "pids"):
        try:
            parent = _own_cgroup_dir(controller)
            if parent is None or not os.path.isdir(parent):
                warnings.append(f"cgroup v1 {controller} controller not mounted")
                continue
            _sweep_stale_cgroups(parent)
            path = os.path.join(parent, name)
            os.mkdir(path, 0o755)
            dir_fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            parent_fd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            group = Cgroup(controller, path, dir_fd, parent_fd, name)
            if controller == "memory":
                with contextlib.suppress(OSError):
                    group.write("memory.swappiness", "0")
            groups[controller] = group
        except OSError as exc:
            warnings.append(f"cgroup {controller}: {exc}")
    return groups


# ---- namespaces and the filesystem view ---------------------------------------------------------------

NAMESPACE_FLAGS = (
    ("mount_namespace", _linux.CLONE_NEWNS),
    ("net_namespace", _linux.CLONE_NEWNET),
    ("ipc_namespace", _linux.CLONE_NEWIPC),
    ("uts_namespace", _linux.CLONE_NEWUTS),
    ("pid_namespace", _linux.CLONE_NEWPID),
)


def unshare_namespaces(warnings: list[str]) -> list[str]:
    """Enter every namespace the kernel lets us create; returns the layer names obtained."""
    all_flags = 0
    for _, flag in NAMESPACE_FLAGS:
        all_flags |= flag
    try:
        _linux.unshare(all_flags)
        return [name for name, _ in NAMESPACE_FLAGS]
    except OSError as exc:
        warnings.append(f"unshare of all namespaces failed ({exc}); trying one by one")
    obtained = []
    for name, flag in NAMESPACE_FLAGS:
        try:
            _linux.unshare(flag)
            obtained.append(name)
        except OSError as exc:
            warnings.append(f"{name}: {exc}")
    return obtained


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def needed_paths(config: SandboxConfig) -> list[str]:
    """Directories the sandboxed interpreter must be able to read: the install, the venv, sys.path."""
    candidates = [
        sys.prefix,
        sys.exec_prefix,
        sys.base_prefix,
        sys.base_exec_prefix,
        os.path.dirname(sys.executable),
        os.path.dirname(os.path.realpath(sys.executable)),
        *sys.path,
        *config.readable_paths,
    ]
    real = sorted({os.path.realpath(p) for p in candidates if p and os.path.isdir(p)})
    kept: list[str] = []
    for path in real:
        if not any(_under(path, k) for k in kept):
            kept.append(path)
    return kept


def _world_readable(path: str) -> bool:
    """Whether any uid can list ``path`` (o+rx on it, o+x on every ancestor)."""
    path = os.path.realpath(path)
    try:
        if os.stat(path).st_mode & 0o005 != 0o005:
            return False
        parent = os.path.dirname(path)
        while parent != path:
            if os.stat(parent).st_mode & 0o001 == 0:
                return False
            path, parent = parent, os.path.dirname(parent)
    except OSError:
        return False
    return True


def build_filesystem_view(config: SandboxConfig, own_proc: bool, layers: list[str], warnings: list[str]) -> str:
    """Make the mount namespace read-only, hide sensitive trees, return the private work root (/tmp)."""
    _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
    hidden = []
    for path in dict.fromkeys((*config.hidden_paths, "/tmp")):
        if os.path.isdir(path) and not os.path.islink(path) and path != "/":
            hidden.append(os.path.realpath(path))
    keep = needed_paths(config)
    keep_fds = {
        path: os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        for path in keep
        if any(_under(path, h) for h in hidden)
    }
    readonly_ok = True
    for entry in _linux.read_mountinfo():
        mp = entry.mount_point
        if entry.read_only or _under(mp, "/proc") or _under(mp, "/sys/fs/cgroup"):
            continue
        try:
            _linux.mount(None, mp, None, _linux.MS_REMOUNT | _linux.MS_BIND | _linux.MS_RDONLY | entry.flags)
        except OSError as exc:
            if not any(_under(mp, h) for h in hidden):
                readonly_ok = False
                warnings.append(f"read-only remount of {mp}: {exc}")
    if readonly_ok:
        layers.append("readonly_fs")

    proc_flags = _linux.MS_NOSUID | _linux.MS_NODEV | _linux.MS_NOEXEC
    try:
        if own_proc:
            _linux.mount("proc", "/proc", "proc", proc_flags)
        else:  # same PID namespace as the host: at least hide other users' processes
            _linux.mount("proc", "/proc", "proc", proc_flags, "hidepid=2")
            layers.append("proc_hidepid")
    except OSError as exc:
        warnings.append(f"mounting /proc: {exc}")

    size = f"size={config.max_file_mb}m"
    ro_bind = _linux.MS_REMOUNT | _linux.MS_BIND | _linux.MS_RDONLY | _linux.MS_NOSUID | _linux.MS_NODEV
    for path in hidden:
        nosuid = _linux.MS_NOSUID | _linux.MS_NODEV
        if path == "/tmp":
            _linux.mount("tmpfs", path, "tmpfs", nosuid, f"mode=0711,{size}")
        elif path == "/dev/shm":
            _linux.mount("tmpfs", path, "tmpfs", nosuid, f"mode=1777,{size}")
        else:
            _linux.mount("tmpfs", path, "tmpfs", nosuid, "mode=0755,size=1m")
        for keep_path, fd in keep_fds.items():
            if _under(keep_path, path):
                os.makedirs(keep_path, 0o755, exist_ok=True)
                _linux.mount(f"/proc/self/fd/{fd}", keep_path, None, _linux.MS_BIND | _linux.MS_REC)
                _linux.mount(None, keep_path, None, ro_bind)
        if path not in ("/tmp", "/dev/shm"):
            _linux.mount(None, path, None, ro_bind)
    for fd in keep_fds.values():
        os.close(fd)
    layers.append("hidden_paths")
    return "/tmp"


def restrict_ipc_namespace(warnings: list[str]) -> None:
    """SysV IPC objects outlive processes; in our own IPC namespace make them die with them (shm) or
    unavailable (message queues, semaphore sets) so nothing carries over from one call to the next."""
    for name, value in (("shm_rmid_forced", "1"), ("msgmni", "0")):
        try:
            with open(f"/proc/sys/kernel/{name}", "w", encoding="ascii") as fh:
                fh.write(value)
        except OSError as exc:
            warnings.append(f"sysctl kernel.{name}: {exc}")
    try:
        with open("/proc/sys/kernel/sem", encoding="ascii") as fh:
            semmsl, semmns, semopm, _ = fh.read().split()
        with open("/proc/sys/kernel/sem", "w", encoding="ascii") as fh:
            fh.write(f"{semmsl} {semmns} {semopm} 0")
    except (OSError, ValueError) as exc:
        warnings.append(f"sysctl kernel.sem: {exc}")


# ---- server state ---------------------------------------------------------------------------------------


@dataclass
class ServerState:
    config: SandboxConfig
    req_fd: int
    resp_fd: int
    owner_pid: int
    pid_ns: bool = False
    layers: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cgroups: dict[str, Cgroup] = field(default_factory=dict)
    work_root: str = ""
    work_root_is_private: bool = False
    uid: int | None = None
    gid: int | None = None
    seq: int = 0
    page_size: int = os.sysconf("SC_PAGE_SIZE")


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> dict[str, Any] | None:
    header = _read_exact(fd, HEADER_SIZE)
    if header is None:
        return None
    body = _read_exact(fd, frame_length(header))
    if body is None:
        return None
    return decode_body(body)


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

        def nothing_left() -> bool:
            if not self._reap_nohang():
                return False
            if pids_group is not None:
                with contextlib.suppress(OSError):
                    return not pids_group.procs()
            return True

        if nothing_left():  # the common case: the main process exited and started nothing that lives
            return True
        if not state.pid_ns and pids_group is not None:
            with contextlib.suppress(OSError):
                pids_group.write("pids.max", "0")  # no more forks while we sweep
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
                        victims.update(pids_group.procs())
                for pid in victims:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                if state.uid is not None:
                    self._kill_uid(state.uid)
            if nothing_left():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)

    # -- the call --
    def _workdir(self) -> str:
        state = self.state
        state.seq += 1
        path = os.path.join(state.work_root, f"run-{state.seq}")
        os.mkdir(path, 0o700)
        if state.uid is not None:
            os.chown(path, state.uid, state.gid)  # type: ignore[arg-type]
        return path

    def _set_memory_limit(self, memory_mb: int | None) -> int:
        group = self.state.cgroups.get("memory")
        if group is None:
            return -1
        new = -1 if memory_mb is None else memory_mb * MIB
        current = int(group.read("memory.limit_in_bytes"))
        memsw = group.has("memory.memsw.limit_in_bytes")
        order = ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
        if new == -1 or new > current:
            order.reverse()
        for filename in order:
            if filename.startswith("memory.memsw") and not memsw:
                continue
            try:
                group.write(filename, str(new))
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                group.write("memory.force_empty", "0")  # reclaim the previous call's page cache
                group.write(filename, str(new))
        return _oom_kills(group)

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
            _remove_tree(workdir)
            if state.work_root_is_private and os.path.isdir("/dev/shm"):
                for name in os.listdir("/dev/shm"):
                    _remove_tree(os.path.join("/dev/shm", name))

    def _run_in(self, workdir: str, fds: list[int]) -> dict[str, Any]:
        state, req, config = self.state, self.request, self.state.config
        timeout_s = float(req["timeout_s"])
        memory_mb = req["memory_mb"]
        oom_before = self._set_memory_limit(memory_mb)
        pids_group = state.cgroups.get("pids")
        if pids_group is not None:
            pids_group.write("pids.max", str(config.max_processes))

        if req["stdin_b64"] is None:
            stdin_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        else:
            stdin_fd = os.memfd_create("stdin", os.MFD_CLOEXEC)
            data = base64.b64decode(req["stdin_b64"])
            view = memoryview(data)
            while view:
                view = view[os.write(stdin_fd, view) :]
            os.lseek(stdin_fd, 0, os.SEEK_SET)
        fds.append(stdin_fd)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        st_r, st_w = os.pipe2(os.O_CLOEXEC)
        fds += [out_r, out_w, err_r, err_w, st_r, st_w]

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
        plan = _child.ChildPlan(
            code=req["code"],
            workdir=workdir,
            stdin_fd=stdin_fd,
            stdout_fd=out_w,
            stderr_fd=err_w,
            status_fd=st_w,
            cgroup_dir_fds=tuple(g.dir_fd for g in state.cgroups.values()),
            uid=state.uid,
            gid=state.gid,
            rlimit_as=rlimit_as,
            rlimit_cpu=math.ceil(timeout_s) + 1,
            rlimit_nproc=rlimit_nproc,
            rlimit_fsize=config.max_file_mb * MIB,
            rlimit_nofile=config.max_open_files,
            env=_child_env(config, workdir),
        )

        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child.run_child(plan)  # never returns
        self.main_pid = pid
        for fd in (stdin_fd, out_w, err_w, st_w):
            os.close(fd)
            fds.remove(fd)

        bufs = {out_r: bytearray(), err_r: bytearray()}
        timed_out = over_limit = main_done = False
        try:
            pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):  # kernel < 5.3: poll the exit status every few ms instead
            pidfd = None
        poller = select.poll()
        for fd in (out_r, err_r):
            poller.register(fd, select.POLLIN)
        if pidfd is not None:
            fds.append(pidfd)
            poller.register(pidfd, select.POLLIN)
        deadline = start + timeout_s
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
                    break
        if main_done and self.main_status is None:
            self._main_exited(*os.wait4(pid, 0)[1:])
        end = time.monotonic()
        all_dead = self.kill_all()
        if self.main_status is None:
            with contextlib.suppress(ChildProcessError):
                self._main_exited(*os.wait4(pid, 0)[1:])
        over_limit |= _drain(bufs, self.limit)
        report = _read_status(st_r)
        oom_after = _oom_kills(state.cgroups["memory"]) if "memory" in state.cgroups else -1

        stdout = bytes(bufs[out_r][: self.limit]).decode("utf-8", "replace")
        stderr = bytes(bufs[err_r][: self.limit]).decode("utf-8", "replace")
        result: dict[str, Any] = {
            "stdout": stdout,
            "stderr": stderr,
            "duration_s": round(end - start, 6),
            "truncated": over_limit,
            "exit_code": _exit_code(self.main_status),
            "error_type": None,
        }
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
            result.update(_verdict(self.main_status, report, oom_after > oom_before >= 0, cpu_limit_hit))
        return result


def _oom_kills(group: Cgroup) -> int:
    for line in group.read("memory.oom_control").splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return -1


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


def _child_env(config: SandboxConfig, workdir: str) -> dict[str, str]:
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


# ---- startup -------------------------------------------------------------------------------------------


def _preload(config: SandboxConfig, warnings: list[str]) -> None:
    for name in config.preload:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a missing optional module only costs speed
            warnings.append(f"preload {name}: {type(exc).__name__}: {exc}")
    gc.collect()
    gc.freeze()


def _hello(state: ServerState) -> dict[str, Any]:
    return {
        "hello": True,
        "isolation": state.layers,
        "uid": state.uid,
        "owner_pid": state.owner_pid,
        "cgroups": [g.path for g in state.cgroups.values()],
        "work_root": None if state.work_root_is_private else state.work_root,
        "warnings": state.warnings,
    }


def serve(state: ServerState) -> None:
    write_frame(state.resp_fd, _hello(state))
    while True:
        request = read_frame(state.req_fd)
        if request is None:
            return
        try:
            response = CallRunner(state, request).run()
        except Exception:  # noqa: BLE001 - the sandbox failed, not the model code
            response = {"status": "sandbox_error", "stderr": traceback.format_exc(), "exit_code": None}
        write_frame(state.resp_fd, response)


def _init_inner(state: ServerState) -> None:
    """Setup that happens inside the namespaces (in the PID-1 server when there is a PID namespace)."""
    config = state.config
    if "mount_namespace" in state.layers:
        try:
            state.work_root = build_filesystem_view(config, state.pid_ns, state.layers, state.warnings)
            state.work_root_is_private = True
            state.layers.append("private_tmp")
        except OSError as exc:
            state.warnings.append(f"filesystem view: {exc}")
    if not state.work_root:
        state.work_root = tempfile.mkdtemp(prefix="cleaner-sandbox-")
        os.chmod(state.work_root, 0o711)
    if "ipc_namespace" in state.layers:
        restrict_ipc_namespace(state.warnings)
    if "uts_namespace" in state.layers:
        with contextlib.suppress(OSError):
            _linux.sethostname("sandbox")
    if not state.pid_ns:
        try:
            _linux.prctl(_linux.PR_SET_CHILD_SUBREAPER, 1)
            state.layers.append("subreaper")
        except OSError as exc:
            state.warnings.append(f"child subreaper: {exc}")
    if os.geteuid() == 0 and config.drop_privileges:
        state.uid = state.gid = config.uid_base + state.owner_pid
        state.layers.append("uid_drop")
        if not state.work_root_is_private:
            hidden = [p for p in needed_paths(config) if not _world_readable(p)]
            if hidden:  # e.g. an interpreter under /root (0700) without a mount namespace to expose it
                state.warnings.append(
                    f"the sandbox uid cannot read {hidden}: only preloaded modules can be imported"
                )
    state.layers += ["process", "process_group", "rlimits", "no_new_privs", "env_cleared", "private_workdir"]
    _preload(config, state.warnings)


def _cleanup_outer(state: ServerState) -> None:
    for group in state.cgroups.values():
        with contextlib.suppress(OSError):
            group.remove()
    if state.work_root and not state.work_root_is_private:
        _remove_tree(state.work_root)


def main(argv: list[str]) -> int:
    config = SandboxConfig.from_wire(json.loads(argv[0]))
    os.umask(0o022)
    sys.dont_write_bytecode = True
    # The protocol moves to private fds; 0 and 1 become /dev/null so no library can corrupt the stream.
    req_fd = os.dup(0)
    resp_fd = os.dup(1)
    for fd in (req_fd, resp_fd):
        os.set_inheritable(fd, False)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    state = ServerState(config=config, req_fd=req_fd, resp_fd=resp_fd, owner_pid=os.getpid())
    is_root = os.geteuid() == 0
    if config.cgroups and is_root:
        state.cgroups = setup_cgroups(state.owner_pid, state.warnings)
        state.layers += [f"cgroup_{name}" for name in state.cgroups]
    if config.namespaces and is_root:
        state.layers += unshare_namespaces(state.warnings)
    elif config.namespaces:
        state.warnings.append("namespaces need root; running without them")
    state.pid_ns = "pid_namespace" in state.layers
    try:
        if state.pid_ns:
            inner = os.fork()
            if inner != 0:
                os.close(req_fd)
                os.close(resp_fd)
                _, status = os.waitpid(inner, 0)
                _cleanup_outer(state)
                return _exit_code(status) or 0
            _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        _init_inner(state)
        serve(state)
        return 0
    finally:
        if not state.pid_ns:
            _cleanup_outer(state)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
