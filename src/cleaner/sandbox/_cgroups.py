"""cgroup v1 ``memory`` and ``pids`` groups of one fork server (root only).

Each server creates ``cleaner-sandbox-<pid>`` next to its own cgroup for both controllers and moves
itself in once, after its preload: every child it forks is then born inside, so a call pays no cgroup
migration (a write to ``cgroup.procs`` costs 0.5-1.5 ms of RCU synchronisation on this kernel).  The
template's preloaded pages stay charged to the server's original group (v1 does not move charges), so
the group's usage at a call's start is the server's own small heap; a call's memory limit is that usage
plus ``memory_mb``.  The server sets its ``oom_score_adj`` to -1000, so the memory cgroup's OOM killer
always picks the call's processes, never the server.

Groups are addressed through directory fds, so they stay usable after the host's cgroup mounts are out of
the server's filesystem view.  cgroup v2 is not used: this machine's v2 hierarchy has no controllers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass

from . import _linux

CGROUP_PREFIX = "cleaner-sandbox-"
KILL_GRACE_S = 5.0
MIB = 1 << 20


@dataclass
class Cgroup:
    """A cgroup v1 directory we created, addressed through directory fds."""

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
        """Processes in the group, as pids of the reader's PID namespace."""
        return [int(p) for p in self.read("cgroup.procs").split()]

    def leave(self) -> None:
        """Move the calling process back to the parent group (a server without a PID namespace)."""
        fd = os.open("cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.parent_fd)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

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


# ---- creation ------------------------------------------------------------------------------------------


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


def create_cgroups(owner_pid: int, warnings: list[str]) -> dict[str, Cgroup]:
    """Create the server's ``memory`` and ``pids`` groups (empty until :func:`join_cgroups`)."""
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


def join_cgroups(groups: dict[str, Cgroup], max_processes: int, warnings: list[str]) -> list[str]:
    """Move the calling server into its groups, once; returns the layer names obtained.

    ``pids.max`` is set here for good: the server itself plus ``max_processes`` tasks of a call.
    """
    layers = []
    with contextlib.suppress(OSError):
        with open("/proc/self/oom_score_adj", "w", encoding="ascii") as fh:
            fh.write("-1000")  # the OOM killer of the memory group must choose the call, not us
    for controller, group in list(groups.items()):
        try:
            if controller == "pids":
                group.write("pids.max", str(max_processes + 1))
            group.write("cgroup.procs", "0")
            layers.append(f"cgroup_{controller}")
        except OSError as exc:
            warnings.append(f"joining cgroup {controller}: {exc}")
            del groups[controller]
    return layers


# ---- per call ------------------------------------------------------------------------------------------


RECLAIM_SLACK = 32 * MIB


class MemoryLimit:
    """Per-call limit of the server's memory group: current usage (the server) + the call's budget.

    A call leaves kernel memory charged to the group (dentries of the files it looked at, page cache
    of what it read); the next call would otherwise meet it as reclaim work at its limit (a runaway
    allocation then crawls through reclaim instead of being OOM-killed in < 1 s).  So when the usage is
    more than ``RECLAIM_SLACK`` above the server's own, the group is reclaimed first.
    """

    def __init__(self, group: Cgroup) -> None:
        self.group = group
        self.files = ["memory.limit_in_bytes"]
        if group.has("memory.memsw.limit_in_bytes"):  # swap accounting on: limit memory + swap alike
            self.files.append("memory.memsw.limit_in_bytes")
        self.current = -1
        self.baseline = self.usage()
        self.oom_kills = self.read_oom_kills()

    def usage(self) -> int:
        return int(self.group.read("memory.usage_in_bytes"))

    def set_for_call(self, memory_mb: int | None) -> None:
        usage = self.usage()
        if usage > self.baseline + RECLAIM_SLACK:
            self.group.write("memory.force_empty", "0")  # reclaims what it can; the server's anon stays
            usage = self.usage()
            self.baseline = max(self.baseline, usage)  # what is left is the server's own
        new = -1 if memory_mb is None else usage + memory_mb * MIB
        # memsw must stay >= the memory limit at every step: raise memsw first, lower it last.
        order = self.files if (new != -1 and (self.current == -1 or new < self.current)) else self.files[::-1]
        for filename in order:
            try:
                self.group.write(filename, str(new))
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                self.group.write("memory.force_empty", "0")  # reclaim page cache left by earlier calls
                self.group.write(filename, str(new))
        self.current = new

    def read_oom_kills(self) -> int:
        for line in self.group.read("memory.oom_control").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return -1

    def oom_killed_since_last_call(self) -> bool:
        before, self.oom_kills = self.oom_kills, self.read_oom_kills()
        return self.oom_kills > before >= 0
