"""The fork server: one process (per pool worker) that isolates itself once, then forks a child per call.

Start-up, in order (each layer is optional and recorded in ``isolation``; :func:`main` reads the same):

1. cgroup v1 ``memory`` and ``pids`` groups ``cleaner-sandbox-<pid>`` next to our own cgroup (root;
   :mod:`._cgroups`).
2. ``unshare`` of the mount, network, IPC, UTS and PID namespaces (root; :mod:`._namespaces`), then a
   fork so that the server itself becomes PID 1 of the new PID namespace.  The outer process only waits
   and removes the cgroups afterwards.
3. Preload of heavy modules (numpy, sympy) into this template, then ``gc.freeze()`` so forked children
   do not copy-on-write the template's objects when the collector runs.
4. The filesystem view: a new root with only the interpreter, its libraries and site-packages (read-only),
   a minimal ``/dev``, ``/proc`` of the namespace and private ``/tmp`` + ``/dev/shm`` (root;
   :mod:`._fsview`).
5. The server joins its cgroups (its children are born inside, no per-call migration), then loads the
   seccomp filter (:mod:`._seccomp`), which every child inherits.

Then it answers requests one at a time (:mod:`._call`).  Without root the same server runs with what is
left: a separate process per call with rlimits, the seccomp filter, a process group, child-subreaper
based killing of all descendants, an emptied environment and a temporary work directory (see
``docs/sandbox.md``).  The prototype's findings (PID 1 here reaps slowly, so a subreaper is needed; a
memory cgroup kills runaway allocation in < 1 s where RLIMIT_AS alone needs ~6 s) shaped these choices.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import signal
import sys
import tempfile
import traceback
from typing import Any

from . import _cgroups, _child, _fsview, _linux, _namespaces, _seccomp
from ._call import CallRunner, ServerState, _exit_code, _remove_tree, child_env
from ._types import HEADER_SIZE, SandboxConfig, decode_body, frame_length, write_frame

# ---- protocol ------------------------------------------------------------------------------------------


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


def _hello(state: ServerState) -> dict[str, Any]:
    return {
        "hello": True,
        "isolation": state.layers,
        "uid": state.uid,
        "owner_pid": state.owner_pid,
        "cgroups": [g.path for g in state.cgroups.values()],
        "work_root": None if state.private_root else state.work_root,
        "warnings": state.warnings,
    }


RECOLLAPSE_EVERY = 256


def serve(state: ServerState) -> None:
    write_frame(state.resp_fd, _hello(state))
    while True:
        request = read_frame(state.req_fd)
        if request is None:
            return
        if state.seq % RECOLLAPSE_EVERY == RECOLLAPSE_EVERY - 1:
            huge_page_template()
        try:
            response = CallRunner(state, request).run()
        except Exception:  # noqa: BLE001 - the sandbox failed, not the model code
            response = {"status": "sandbox_error", "stderr": traceback.format_exc(), "exit_code": None}
        write_frame(state.resp_fd, response)


# ---- start-up steps ------------------------------------------------------------------------------------


def _preload(config: SandboxConfig, warnings: list[str]) -> None:
    for name in config.preload:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a missing optional module only costs speed
            warnings.append(f"preload {name}: {type(exc).__name__}: {exc}")
    gc.collect()
    gc.freeze()


def huge_page_template() -> int:
    """Back the template's heap with transparent huge pages (``MADV_COLLAPSE``, Linux 6.1); returns the
    bytes now in huge pages.

    Every call forks the template, and ``fork`` copies one page-table entry per 4 KiB page of its
    ~50 MB heap (numpy + sympy), then the child's exit unmaps them: the largest per-call cost.  A 2 MiB
    page is one entry.  A page the server writes while a child shares it splits back to 4 KiB, so
    :func:`serve` collapses again every ``RECOLLAPSE_EVERY`` calls.
    """
    collapsed = 0
    with open("/proc/self/maps", encoding="ascii", errors="replace") as fh:
        regions = [line.split() for line in fh]
    for fields in regions:
        if fields[1] != "rw-p" or (len(fields) > 5 and fields[5] != "[heap]"):
            continue  # private anonymous memory (the Python and malloc heaps) only
        low, high = (int(x, 16) for x in fields[0].split("-"))
        start = (low + _linux.HUGE_PAGE - 1) & ~(_linux.HUGE_PAGE - 1)
        end = high & ~(_linux.HUGE_PAGE - 1)
        if end - start < _linux.HUGE_PAGE:
            continue
        with contextlib.suppress(OSError):  # EINVAL where a range holds no collapsible page
            _linux.madvise(start, end - start, _linux.MADV_HUGEPAGE)
            _linux.madvise(start, end - start, _linux.MADV_COLLAPSE)
            collapsed += end - start
    return collapsed


def _build_filesystem_view(state: ServerState) -> None:
    """The private root (root with a mount namespace), else a host temp dir for the work dirs."""
    if "mount_namespace" in state.layers and state.pid_ns:
        try:
            _fsview.build_view(state.config)
            state.private_root = True
            state.tmp_keep = frozenset(os.listdir("/tmp"))  # host paths under /tmp bound into the view
            state.work_root = "/tmp"
            state.layers += ["private_root", "readonly_fs", "minimal_dev", "private_tmp"]
            return
        except OSError as exc:
            state.warnings.append(f"filesystem view: {exc}")
    state.work_root = tempfile.mkdtemp(prefix="cleaner-sandbox-")
    os.chmod(state.work_root, 0o711)


def _plan_uid_drop(state: ServerState) -> None:
    """Root runs the code as ``uid_base + owner pid``: unique per server, owning nothing on the host."""
    if os.geteuid() != 0 or not state.config.drop_privileges:
        return
    state.uid = state.gid = state.config.uid_base + state.owner_pid
    state.layers.append("uid_drop")


def _load_seccomp(state: ServerState, rules: Any) -> None:
    if rules is None:
        return
    try:
        _seccomp.load_filter(rules)
        state.layers.append("seccomp")
    except OSError as exc:
        state.warnings.append(f"seccomp: loading the filter failed: {exc}")


def _build_seccomp(state: ServerState) -> Any:
    """Build the filter before the view hides the library's files; ``None`` (with a warning) if absent."""
    if not state.config.seccomp:
        return None
    try:
        rules, skipped = _seccomp.build_filter()
    except (ImportError, RuntimeError, OSError) as exc:
        state.warnings.append(f"seccomp: no filter ({type(exc).__name__}: {exc}); needs pyseccomp and libseccomp.so.2")
        return None
    if skipped:
        state.warnings.append(f"seccomp: this libseccomp does not know {skipped}; they stay allowed")
    return rules


def _init_inner(state: ServerState) -> None:
    """Setup inside the namespaces (in the PID-1 server when there is a PID namespace)."""
    config = state.config
    _preload(config, state.warnings)
    if not huge_page_template() and config.preload:
        state.warnings.append("no transparent huge pages for the template (Linux >= 6.1, THP madvise): forks are slower")
    rules = _build_seccomp(state)
    _build_filesystem_view(state)
    if "ipc_namespace" in state.layers:
        _namespaces.restrict_ipc_namespace(state.warnings)
    if "uts_namespace" in state.layers:
        _namespaces.set_hostname()
    if not state.pid_ns:
        try:
            _linux.prctl(_linux.PR_SET_CHILD_SUBREAPER, 1)
            state.layers.append("subreaper")
        except OSError as exc:
            state.warnings.append(f"child subreaper: {exc}")
    _plan_uid_drop(state)
    if state.cgroups:
        state.layers += _cgroups.join_cgroups(state.cgroups, config.max_processes, state.warnings)
        if "memory" in state.cgroups:
            state.memory = _cgroups.MemoryLimit(state.cgroups["memory"])
    state.layers += ["process", "process_group", "rlimits", "no_new_privs", "env_cleared", "private_workdir"]
    _load_seccomp(state, rules)
    prepare_children(state)


def prepare_children(state: ServerState) -> None:
    """What every child needs and inherits: set once here instead of in each child.

    Signal dispositions and mask as a fresh interpreter has them, ``no_new_privs`` (setuid binaries
    cannot raise privileges; also set by the seccomp filter), the code's environment, whose
    ``HOME``/``TMPDIR``/``PWD`` each call points at its work dir (nothing the server does later depends on
    its own environment), and the std stream objects (:func:`._child.prebuild_streams`).
    """
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
    os.environ.clear()
    os.environ.update(child_env(state.config, state.work_root))
    _child.prebuild_streams()


def _cleanup_outer(state: ServerState) -> None:
    for group in state.cgroups.values():
        with contextlib.suppress(OSError):
            if not state.pid_ns:  # we are inside: removing the group would kill us
                group.leave()
            group.remove()
    if state.work_root and not state.private_root:
        _remove_tree(state.work_root)


def _protocol_fds() -> tuple[int, int]:
    """The protocol moves to private fds; 0 and 1 become /dev/null so no library can corrupt it."""
    req_fd = os.dup(0)
    resp_fd = os.dup(1)
    for fd in (req_fd, resp_fd):
        os.set_inheritable(fd, False)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    return req_fd, resp_fd


def main(argv: list[str]) -> int:
    config = SandboxConfig.from_wire(json.loads(argv[0]))
    os.umask(0o022)
    sys.dont_write_bytecode = True
    req_fd, resp_fd = _protocol_fds()
    state = ServerState(config=config, req_fd=req_fd, resp_fd=resp_fd, owner_pid=os.getpid())
    is_root = os.geteuid() == 0
    if config.cgroups and is_root:
        state.cgroups = _cgroups.create_cgroups(state.owner_pid, state.warnings)
    elif config.cgroups:
        state.warnings.append("cgroups need root; running without them")
    if config.namespaces and is_root:
        state.layers += _namespaces.unshare_namespaces(state.warnings)
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
