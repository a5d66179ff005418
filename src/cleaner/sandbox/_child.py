"""What runs inside the forked child of the fork server: confine it, then execute the model's code.

Execution follows ``python -c`` (``sys.argv == ["-c"]``, ``sys.path[0] == ""``, traceback on stderr, exit
status 1 on an uncaught exception, ``SystemExit`` handled like the interpreter) plus the REPL rule that a
bare last expression is shown through ``sys.displayhook`` (``1+1`` prints ``2``, ``None`` prints nothing),
as the paper's code-interpreter tool does.  Nothing here may ever return into the server's code: every
path ends in ``os._exit``.
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import linecache
import os
import resource
import signal
import sys
import types
from dataclasses import dataclass

from . import _linux

STATUS_FD = 3
SETUP_FAILED_EXIT = 125
SOURCE_NAME = "<string>"


@dataclass(frozen=True)
class ChildPlan:
    """Everything the child needs, prepared by the server before ``fork``."""

    code: str
    workdir: str
    stdin_fd: int
    stdout_fd: int
    stderr_fd: int
    status_fd: int
    uid: int | None
    gid: int | None
    rlimit_as: int | None
    rlimit_cpu: int
    rlimit_nproc: int | None
    rlimit_fsize: int
    rlimit_nofile: int
    die_with_server: bool  # PR_SET_PDEATHSIG; a PID namespace already dies with its PID 1, the server


def _report(payload: dict) -> None:
    try:
        os.write(STATUS_FD, json.dumps(payload).encode())
    except OSError:
        pass


def _set_limit(which: int, value: int, hard_extra: int = 0) -> None:
    """Set soft = value and hard = value + hard_extra (so the code cannot raise them), never above an
    inherited hard limit."""
    _, inherited = resource.getrlimit(which)
    hard = value + hard_extra
    if inherited != resource.RLIM_INFINITY:
        value, hard = min(value, inherited), min(hard, inherited)
    resource.setrlimit(which, (value, hard))


def _confine(plan: ChildPlan) -> None:
    # A process group of its own, not a session: setsid() also creates a scheduler autogroup, which
    # stalls for milliseconds now and then (p90 3.6 ms here); killpg needs only the group, and there is
    # no terminal to detach from (the server has none).
    os.setpgid(0, 0)
    if plan.die_with_server:
        _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if plan.uid is not None:  # the server is exempt from the memory group's OOM killer; the call is not
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
    # Signal dispositions, the signal mask, no_new_privs and the environment come from the server, which
    # set them once for its children (see _server.prepare_children): less to do per call.
    os.dup2(plan.stdin_fd, 0)
    os.dup2(plan.stdout_fd, 1)
    os.dup2(plan.stderr_fd, 2)
    if plan.status_fd != STATUS_FD:
        os.dup2(plan.status_fd, STATUS_FD)
    os.set_inheritable(STATUS_FD, False)
    os.closerange(STATUS_FD + 1, max(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 1024))
    os.chdir(plan.workdir)

    if plan.rlimit_as is not None:
        _set_limit(resource.RLIMIT_AS, plan.rlimit_as)
    _set_limit(resource.RLIMIT_CPU, plan.rlimit_cpu, hard_extra=1)  # SIGXCPU first, SIGKILL 1 s later
    _set_limit(resource.RLIMIT_FSIZE, plan.rlimit_fsize)
    _set_limit(resource.RLIMIT_NOFILE, plan.rlimit_nofile)
    _set_limit(resource.RLIMIT_CORE, 0)
    _set_limit(resource.RLIMIT_MSGQUEUE, 0)
    if plan.rlimit_nproc is not None:
        _set_limit(resource.RLIMIT_NPROC, plan.rlimit_nproc)

    if plan.uid is not None and plan.gid is not None:
        os.setgroups([])
        os.setresgid(plan.gid, plan.gid, plan.gid)
        os.setresuid(plan.uid, plan.uid, plan.uid)
        if os.getuid() != plan.uid or os.geteuid() != plan.uid:
            raise OSError("privilege drop did not take effect")


def _new_streams() -> tuple[io.TextIOWrapper, io.TextIOWrapper, io.TextIOWrapper]:
    """stdin, stdout, stderr over fds 0, 1, 2 as the child will have them (line buffering keeps the
    output printed before a timeout kill visible to the model)."""
    stdin = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(0, "rb", closefd=False)), encoding="utf-8", errors="surrogateescape"
    )
    stdout = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(1, "wb", closefd=False)),
        encoding="utf-8",
        errors="surrogateescape",
        line_buffering=True,
    )
    stderr = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(2, "wb", closefd=False)),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )
    return stdin, stdout, stderr


_PREBUILT: list[io.TextIOWrapper] = []


def prebuild_streams() -> None:
    """Build the child's std streams once, in the server (saves each child ~0.2 ms).

    The objects only name fds 0-2 and cache whether each is seekable, so they are built while 0 is
    seekable (``/dev/null``; a call's stdin is ``/dev/null`` or a memfd) and 1 and 2 are a pipe (a call's
    stdout and stderr are pipes); the server never writes through them, so every child inherits them empty.
    """
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    read_end, write_end = os.pipe()
    try:
        os.dup2(null, 0)
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        _PREBUILT[:] = _new_streams()
    finally:
        for fd, copy in zip((0, 1, 2), saved):
            os.dup2(copy, fd)
        for fd in (*saved, read_end, write_end, null):
            os.close(fd)


def _fresh_interpreter_state() -> types.ModuleType:
    """Reset what a fresh ``python -c`` would have differently from the forked template."""
    stdin, stdout, stderr = _PREBUILT or _new_streams()
    sys.stdin = sys.__stdin__ = stdin
    sys.stdout = sys.__stdout__ = stdout
    sys.stderr = sys.__stderr__ = stderr
    sys.argv = ["-c"]
    sys.path[0:1] = [""]
    sys.dont_write_bytecode = True
    if "numpy.random" in sys.modules:  # numpy's global generator is not reseeded on fork (random is)
        try:
            sys.modules["numpy.random"].seed()
        except Exception:  # noqa: BLE001 - a broken numpy must not break unrelated code
            pass
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    return main


def _compile(code: str) -> tuple[types.CodeType, types.CodeType | None]:
    tree = ast.parse(code, SOURCE_NAME, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Interactive(body=[tree.body.pop()])
    body = compile(tree, SOURCE_NAME, "exec", dont_inherit=True)
    shown = compile(last, SOURCE_NAME, "single", dont_inherit=True) if last is not None else None
    return body, shown


def _exit_code_of(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:  # noqa: BLE001
        pass
    return 1


def _execute(code: str, main: types.ModuleType, main_pid: int) -> int:
    linecache.cache[SOURCE_NAME] = (len(code), None, code.splitlines(True), SOURCE_NAME)
    error: dict | None = None
    exit_code = 0
    try:
        try:
            body, shown = _compile(code)
        except BaseException as exc:  # SyntaxError, ValueError (NUL bytes), RecursionError, MemoryError
            import traceback

            traceback.print_exception(type(exc), exc, None)
            error = {"error_type": type(exc).__name__, "memory": isinstance(exc, MemoryError)}
            exit_code = 1
        else:
            exec(body, main.__dict__)
            if shown is not None:
                exec(shown, main.__dict__)
    except SystemExit as exc:
        exit_code = _exit_code_of(exc)
        if exit_code != 0:
            error = {"error_type": "SystemExit", "memory": False}
    except BaseException as exc:  # noqa: BLE001 - report exactly what the interpreter would
        error = {"error_type": type(exc).__name__, "memory": isinstance(exc, MemoryError)}
        exit_code = 1
        try:
            import traceback

            tb = exc.__traceback__
            tb = tb.tb_next if tb is not None else None  # hide this wrapper's frame
            traceback.print_exception(type(exc), exc, tb)
        except BaseException:  # noqa: BLE001 - e.g. MemoryError while formatting
            try:
                os.write(2, f"{type(exc).__name__}\n".encode())
            except OSError:
                pass
    # Join non-daemon threads like the interpreter's exit does, which also looks threading up in
    # sys.modules only: a program that never imported it started no thread it would wait for.
    threading = sys.modules.get("threading")
    if threading is not None:
        try:
            threading._shutdown()  # type: ignore[attr-defined]
        except BaseException:  # noqa: BLE001
            pass
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass
    if os.getpid() == main_pid:
        _report({"exit_code": exit_code, **(error or {})})
    return exit_code


def run_child(plan: ChildPlan) -> None:
    """Entry point right after ``fork()`` in the child; never returns."""
    exit_code = SETUP_FAILED_EXIT
    try:
        main_pid = os.getpid()
        try:
            _confine(plan)
            main = _fresh_interpreter_state()
        except BaseException as exc:  # noqa: BLE001
            _report({"sandbox_error": f"child setup failed: {type(exc).__name__}: {exc}"})
            os._exit(SETUP_FAILED_EXIT)
        exit_code = _execute(plan.code, main, main_pid)
    finally:
        os._exit(exit_code)
