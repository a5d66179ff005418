"""Namespaces of one fork server (root only): mount, network, IPC, UTS and PID.

The server enters all of them once at start-up.  The PID namespace takes effect for the server's next
child: the server forks once more and that child becomes PID 1 of the namespace, so ``kill(-1)`` from it
ends every process a call started, double-forked ``setsid`` daemons included, and the kernel kills the
whole namespace if it dies.  The network namespace has only a loopback that is down; the IPC namespace is
restricted so that nothing SysV carries over from one call to the next.
"""

from __future__ import annotations

import contextlib

from . import _linux

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


def set_hostname() -> None:
    with contextlib.suppress(OSError):
        _linux.sethostname("sandbox")
