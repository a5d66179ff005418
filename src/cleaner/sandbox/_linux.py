"""Thin ctypes wrappers over the Linux calls the sandbox needs and Python 3.10/3.11 lacks.

``os.unshare`` only arrived in Python 3.12 and ``mount(2)`` / ``prctl(2)`` are not in the standard
library at all, so they are reached through libc.  Every wrapper raises ``OSError`` with the real errno,
which lets the server fall back layer by layer (the util-linux ``unshare``/``mount`` tools do the same
calls).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MNT_DETACH = 0x2

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

_MOUNT_OPTION_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}


def _libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(None, use_errno=True)  # the running interpreter already links libc
    lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.unshare.argtypes = [ctypes.c_int]
    lib.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    lib.syscall.restype = ctypes.c_long
    lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return lib


_LIBC = _libc()


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    """``unshare(2)``: move the calling process into new namespaces (``os.unshare`` from 3.12)."""
    _check(_LIBC.unshare(flags), f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """``mount(2)`` with str arguments (``None`` passes NULL)."""

    def enc(value: str | None) -> bytes | None:
        return None if value is None else os.fsencode(value)

    _check(_LIBC.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _check(_LIBC.umount2(os.fsencode(target), flags), f"umount {target}")


# pivot_root(2) has no libc wrapper; its number per architecture (asm/unistd.h).
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}


def pivot_root(new_root: str, put_old: str) -> None:
    """``pivot_root(2)``: make ``new_root`` the root of the mount namespace."""
    number = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(0, f"pivot_root: unknown syscall number on {os.uname().machine}")
    result = _LIBC.syscall(ctypes.c_long(number), os.fsencode(new_root), os.fsencode(put_old))
    _check(int(result), "pivot_root")


MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25  # Linux 6.1
HUGE_PAGE = 2 << 20


def madvise(address: int, length: int, advice: int) -> None:
    _check(_LIBC.madvise(address, length, advice), f"madvise({advice})")


def sethostname(name: str) -> None:
    """``sethostname(2)``; only affects the UTS namespace of the caller."""
    raw = name.encode()
    _check(_LIBC.sethostname(raw, len(raw)), "sethostname")


def prctl(option: int, arg2: int = 0) -> None:
    _check(_LIBC.prctl(option, arg2, 0, 0, 0), f"prctl({option})")


@dataclass(frozen=True)
class MountEntry:
    """One line of ``/proc/self/mountinfo`` (proc(5)); ``flags`` are the per-mount ``MS_*`` flags."""

    mount_id: int
    root: str
    mount_point: str
    read_only: bool
    flags: int
    fstype: str
    super_options: tuple[str, ...]


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1 : i + 4]) == 3 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def read_mountinfo(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    entries = []
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            left, _, right = line.rstrip("\n").partition(" - ")
            fields = left.split(" ")
            rfields = right.split(" ")
            options = fields[5].split(",")
            flags = 0
            for opt in options:
                flags |= _MOUNT_OPTION_FLAGS.get(opt, 0)
            entries.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    root=_unescape(fields[3]),
                    mount_point=_unescape(fields[4]),
                    read_only="ro" in options,
                    flags=flags,
                    fstype=rfields[0],
                    super_options=tuple(rfields[2].split(",")) if len(rfields) > 2 else (),
                )
            )
    return entries
