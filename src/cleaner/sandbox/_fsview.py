"""The filesystem view of sandboxed code: a fresh root holding only what the interpreter needs (root only).

Built once per fork server inside its private mount namespace, then made the root with ``pivot_root``;
the host's root is detached, so no path leads back to it (absolute, ``..``, ``/proc/<pid>/cwd`` or
``/root``, symlinks: a link the code creates resolves inside the new root).  Host paths keep their
absolute names, so the template's ``sys.path`` and the ``__file__`` of preloaded modules stay valid:

======================  =================================================================================
``/``                   empty tmpfs, read-only once built
exposed paths           read-only, ``nosuid``, ``nodev`` bind mounts of: the standard library and
                        ``lib-dynload``, the site-packages directories, the package directories of
                        ``SandboxConfig.preload``, the directories of the shared libraries mapped into the
                        server, the interpreter binary (with ``pyvenv.cfg`` and every symlink on the way
                        to it recreated), the dynamic loader, ``/etc/ld.so.cache`` and ``readable_paths``;
                        non-recursive, so no submount of the host shows through
``/dev``                read-only tmpfs with the host's ``null``, ``zero``, ``full``, ``random`` and
                        ``urandom`` bound in, ``fd``/``stdin``/``stdout``/``stderr`` links and ``shm``
``/proc``               the server's PID namespace, ``hidepid=2`` (the server itself is invisible)
``/tmp``, ``/dev/shm``  writable tmpfs of ``max_file_mb`` each, emptied after every call; the per-call
                        work directory is ``/tmp/run-<server>-<n>``
======================  =================================================================================

Everything else of the host (the checkout with its sources, tests and results, ``/root``, ``/home``,
``/run``, ``/etc``, ``/sys``, the venv's other files) does not exist in the view.  Editable installs
(a ``.pth`` pointing into a checkout) are left out on purpose: only directories that hold the standard
library or are site-packages directories are on the exposed part of ``sys.path``.
"""

from __future__ import annotations

import glob
import os
import site
import sys
import sysconfig
from dataclasses import dataclass, field

from . import _linux
from ._types import SandboxConfig

STAGING = "/tmp"  # where the new root is assembled (a tmpfs mounted over it in our namespace only)
DEVICES = ("null", "zero", "full", "random", "urandom")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))
RO_BIND = _linux.MS_REMOUNT | _linux.MS_BIND | _linux.MS_RDONLY | _linux.MS_NOSUID | _linux.MS_NODEV
NOSUID_NODEV = _linux.MS_NOSUID | _linux.MS_NODEV


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


# ---- what to expose ------------------------------------------------------------------------------------


def _library_dirs() -> set[str]:
    """Directories of the shared objects mapped into this process (libc, libpython, numpy's libs...):
    extension modules imported later by the code load their dependencies from the same places."""
    dirs = set()
    with open("/proc/self/maps", encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            fields = line.split(maxsplit=5)
            path = fields[5].strip() if len(fields) == 6 else ""
            if path.startswith("/") and (".so" in os.path.basename(path)) and os.path.isfile(path):
                dirs.add(os.path.dirname(path))
    return dirs


def _python_dirs(config: SandboxConfig) -> set[str]:
    """The standard library, the site-packages directories and the preloaded packages."""
    paths = sysconfig.get_paths()
    stdlib = [paths["stdlib"], paths["platstdlib"]]
    site_dirs = [paths["purelib"], paths["platlib"], *site.getsitepackages()]
    roots = [os.path.realpath(p) for p in stdlib + site_dirs if p and os.path.isdir(p)]
    found = set(roots)
    for entry in sys.path:  # lib-dynload, the zipped stdlib; not a checkout's src put there by a .pth
        real = os.path.realpath(entry) if entry else ""
        if real and os.path.exists(real) and any(_under(real, r) for r in roots):
            found.add(real)
    for name in config.preload:
        module = sys.modules.get(name)
        location = getattr(module, "__file__", None)
        if location:
            found.add(os.path.dirname(location) if hasattr(module, "__path__") else location)
    return found


def exposed_paths(config: SandboxConfig) -> list[str]:
    """Host paths the sandboxed interpreter needs (symlinks allowed; resolved by :func:`resolve`)."""
    wanted = _python_dirs(config) | _library_dirs()
    wanted.add(sys.executable)
    wanted.add(os.path.realpath(sys.executable))
    if sys.prefix != sys.base_prefix:  # a venv: its interpreter reads pyvenv.cfg to find site-packages
        wanted.add(os.path.join(sys.prefix, "pyvenv.cfg"))
    wanted.update(glob.glob("/lib*/ld-linux*.so*"))  # the program interpreter named in the ELF header
    wanted.add("/etc/ld.so.cache")
    wanted.update(config.readable_paths)
    return sorted(p for p in wanted if os.path.lexists(p))


@dataclass
class ViewPlan:
    """Symlinks to recreate and real host paths to bind, collected before anything is mounted."""

    links: dict[str, str] = field(default_factory=dict)
    binds: list[str] = field(default_factory=list)


def resolve(path: str, plan: ViewPlan, depth: int = 0) -> None:
    """Walk ``path`` component by component; every symlink met goes to ``plan.links`` (recreated as is)
    and the walk continues at its target; the final real path goes to ``plan.binds``."""
    if depth > 40:
        raise OSError(40, f"too many levels of symbolic links resolving {path}")
    parts = [p for p in os.path.normpath(path).split("/") if p]
    current = "/"
    for index, part in enumerate(parts):
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            target = os.readlink(candidate)
            plan.links[candidate] = target
            rest = parts[index + 1 :]
            resolve(os.path.join(os.path.join(current, target), *rest), plan, depth + 1)
            return
        current = candidate
    plan.binds.append(current)


def plan_view(config: SandboxConfig) -> ViewPlan:
    plan = ViewPlan()
    for path in exposed_paths(config):
        resolve(path, plan)
    kept: list[str] = []
    for path in sorted(set(plan.binds)):
        if not any(_under(path, k) for k in kept):
            kept.append(path)
    plan.binds = kept
    plan.links = {link: target for link, target in plan.links.items() if not any(_under(link, k) for k in kept)}
    return plan


# ---- building it ---------------------------------------------------------------------------------------


def _mountpoint(root: str, host_path: str, is_dir: bool) -> str:
    target = root + host_path
    if is_dir:
        os.makedirs(target, 0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        if not os.path.exists(target):
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    return target


def _bind(source_fd: int, target: str, flags: int) -> None:
    _linux.mount(f"/proc/self/fd/{source_fd}", target, None, _linux.MS_BIND)
    _linux.mount(None, target, None, flags)


def _build_dev(root: str, device_fds: dict[str, int], size: str) -> None:
    dev = root + "/dev"
    os.makedirs(dev, 0o755, exist_ok=True)
    _linux.mount("tmpfs", dev, "tmpfs", _linux.MS_NOSUID | _linux.MS_NOEXEC, "mode=0755,size=64k")
    for name, fd in device_fds.items():
        target = _mountpoint(root, f"/dev/{name}", is_dir=False)
        _bind(fd, target, _linux.MS_REMOUNT | _linux.MS_BIND | _linux.MS_NOSUID | _linux.MS_NOEXEC)
    for name, target in DEV_LINKS:
        os.symlink(target, f"{dev}/{name}")
    os.mkdir(f"{dev}/shm", 0o755)
    _linux.mount("tmpfs", f"{dev}/shm", "tmpfs", NOSUID_NODEV, f"mode=1777,{size}")


def build_view(config: SandboxConfig) -> None:
    """Assemble the new root under :data:`STAGING`, pivot into it and detach the host's root.

    Must run in a private mount namespace, in the process that will be PID 1 of the call's PID
    namespace (``/proc`` is mounted for it).  Raises ``OSError`` when a step fails.
    """
    _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)  # nothing propagates to the host
    plan = plan_view(config)
    # Sources are opened now: the staging tmpfs may cover some of them (a venv under /tmp, say).
    source_fds = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for path in plan.binds}
    device_fds = {name: os.open(f"/dev/{name}", os.O_PATH | os.O_CLOEXEC) for name in DEVICES}
    size = f"size={config.max_file_mb}m"
    try:
        _linux.mount("tmpfs", STAGING, "tmpfs", NOSUID_NODEV, "mode=0755,size=1m")
        root = STAGING
        # The private /tmp first: host paths under /tmp (a venv or a checkout there) are bound inside it, as
        # read-only mounts on root-owned directories, and the per-call cleanup keeps them (ServerState.tmp_keep).
        os.mkdir(root + "/tmp", 0o755)
        _linux.mount("tmpfs", root + "/tmp", "tmpfs", NOSUID_NODEV, f"mode=1777,{size}")
        for link, target in plan.links.items():
            os.makedirs(os.path.dirname(root + link), 0o755, exist_ok=True)
            os.symlink(target, root + link)
        for path, fd in source_fds.items():
            _bind(fd, _mountpoint(root, path, os.path.isdir(f"/proc/self/fd/{fd}")), RO_BIND)
        _build_dev(root, device_fds, size)
        os.mkdir(root + "/proc", 0o555)
        _linux.mount("proc", root + "/proc", "proc", NOSUID_NODEV | _linux.MS_NOEXEC, "hidepid=2")
    finally:
        for fd in (*source_fds.values(), *device_fds.values()):
            os.close(fd)
    os.chdir(root)
    _linux.pivot_root(".", ".")  # the old root is stacked on "." now; detaching it leaves only ours
    _linux.umount(".", _linux.MNT_DETACH)
    os.chdir("/")
    _linux.mount(None, "/", None, _linux.MS_REMOUNT | _linux.MS_RDONLY | NOSUID_NODEV)
    _linux.mount(None, "/dev", None, _linux.MS_REMOUNT | _linux.MS_RDONLY | _linux.MS_NOSUID | _linux.MS_NOEXEC)

