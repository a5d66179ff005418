"""The system-call filter: what a program that computes answers never needs fails with ``EPERM``.

Built with libseccomp through its ctypes bindings (``pyseccomp``, which loads the system
``libseccomp.so.2``) and loaded into the fork server at the end of its start-up, after the last mount
and namespace call the server makes itself: seccomp filters are inherited across ``fork`` and cannot be
removed, so every call's processes run under it without a per-call cost.  Everything not listed is
allowed (a deny list, like Docker's default profile, not an allow list: numpy, sympy and the standard
library use a broad and changing set of calls).  Calls of a foreign architecture (``int 0x80`` from a
64-bit process) kill the process: libseccomp's default bad-architecture action.

Differences from Docker's profile: ``clone``/``unshare`` with namespace flags are denied for root too;
``clone3`` answers ``ENOSYS`` (its flags sit in memory a filter cannot read), so libc falls back to
``clone``, whose flags the filter checks.
"""

from __future__ import annotations

import errno
from typing import Any

from . import _linux

DENIED: tuple[str, ...] = (
    # debugging and reading other processes' memory
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # mounts, roots and namespaces
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    # kernel keyrings
    "keyctl", "add_key", "request_key",
    # kernel programs, tracing and page-fault handling
    "bpf", "perf_event_open", "userfaultfd",
    # io_uring (its own path around this filter)
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # the machine itself
    "kexec_load", "kexec_file_load", "reboot", "init_module", "finit_module", "delete_module",
    "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog", "vhangup",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname",
    "iopl", "ioperm", "lookup_dcookie", "nfsservctl", "uselib", "ustat", "sysfs", "_sysctl",
    # file handles bypass path permissions; fanotify watches the whole mount
    "open_by_handle_at", "name_to_handle_at", "fanotify_init",
)
"""Each fails with ``EPERM``; a name unknown to the installed libseccomp is skipped (reported)."""

NAMESPACE_CLONE_FLAGS = (
    _linux.CLONE_NEWNS, _linux.CLONE_NEWUTS, _linux.CLONE_NEWIPC, _linux.CLONE_NEWPID, _linux.CLONE_NEWNET,
    0x10000000,  # CLONE_NEWUSER
    0x02000000,  # CLONE_NEWCGROUP
    0x00000080,  # CLONE_NEWTIME
)  # fmt: skip


# pyseccomp finds libc and libseccomp with ctypes.util.find_library, which runs ``ldconfig -p`` twice
# (0.15 s of every server's start); their sonames are fixed, so they are tried first.
_SONAMES = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}


def _import_pyseccomp() -> Any:
    import ctypes
    import ctypes.util

    original = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        soname = _SONAMES.get(name)
        if soname is not None:
            try:
                ctypes.CDLL(soname)
                return soname
            except OSError:
                pass
        return original(name)

    ctypes.util.find_library = find_library
    try:
        import pyseccomp
    finally:
        ctypes.util.find_library = original
    return pyseccomp


def build_filter() -> tuple[Any, list[str]]:
    """The filter object (not loaded yet) and the names it could not add.

    Raises ``ImportError``/``RuntimeError``/``OSError`` when pyseccomp or libseccomp is missing.
    """
    seccomp = _import_pyseccomp()

    denied = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    skipped = []
    for name in DENIED:
        try:
            rules.add_rule(denied, name)
        except (OSError, ValueError):
            skipped.append(name)
    for flag in NAMESPACE_CLONE_FLAGS:
        rules.add_rule(denied, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    return rules, skipped


def load_filter(rules: Any) -> None:
    """Install ``rules`` on the calling process (and so on everything it forks from now on)."""
    rules.load()
