"""Caller side: fork-server workers, the async ``Sandbox`` pool and the one-shot ``run_python``.

Model code never runs in the caller: every worker is a separate interpreter (the same
``sys.executable``, so the same venv) started with ``-I`` and an emptied environment, so neither the
caller's memory nor its environment variables are ever inherited by sandboxed code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import queue
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from typing import Any

from ._types import (
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT_S,
    HEADER_SIZE,
    ExecResult,
    SandboxConfig,
    decode_body,
    encode_frame,
    frame_length,
    make_request,
)

# Extra wall-clock time the caller grants the server beyond ``timeout_s`` (kill + drain + cleanup).
RESPONSE_GRACE_S = 10.0
CLOSE_GRACE_S = 3.0
_SRC_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOTSTRAP = "import sys; sys.path.insert(0, sys.argv[1]); from cleaner.sandbox._server import main; sys.exit(main(sys.argv[2:]))"
_SERVER_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}


class SandboxProtocolError(RuntimeError):
    """The fork server died or broke the protocol (reported to callers as ``sandbox_error``)."""


class _Worker:
    """One fork server process and its pipe protocol.  Not thread-safe: one call at a time."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.hello: dict[str, Any] | None = None
        self.isolation: tuple[str, ...] = ()
        self._lock = threading.Lock()

    # -- lifecycle --
    def spawn(self) -> None:
        self.hello = None
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOTSTRAP, _SRC_DIR, json.dumps(self.config.to_wire())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            # Only fixed variables plus the caller's temp dir (where the no-namespace fallback puts its
            # work dirs): secrets in the caller's environment never reach the server or the code.
            env={**_SERVER_ENV, "TMPDIR": tempfile.gettempdir()},
            cwd="/",
            close_fds=True,
            start_new_session=True,
            bufsize=0,
        )

    def _ensure_ready(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self._cleanup_after_exit()
            self.spawn()
        if self.hello is None:
            hello = self._read_frame(time.monotonic() + self.config.startup_timeout_s)
            if not hello.get("hello"):
                raise SandboxProtocolError(f"fork server sent {hello!r} instead of its hello")
            self.hello = hello
            self.isolation = tuple(hello.get("isolation", ()))

    def _read_exact(self, n: int, deadline: float) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        chunks, got = [], 0
        while got < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise SandboxProtocolError("fork server did not answer in time")
            chunk = os.read(fd, n - got)
            if not chunk:
                raise SandboxProtocolError(f"fork server exited (status {self.proc.poll()})")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _read_frame(self, deadline: float) -> dict[str, Any]:
        length = frame_length(self._read_exact(HEADER_SIZE, deadline))
        return decode_body(self._read_exact(length, deadline))

    def execute(self, request: dict[str, Any]) -> ExecResult:
        """Run one request; failures of the server itself become ``sandbox_error`` and a restart."""
        with self._lock:
            start = time.monotonic()
            try:
                self._ensure_ready()
                assert self.proc is not None and self.proc.stdin is not None
                payload = encode_frame(request)
                fd = self.proc.stdin.fileno()
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view) :]
                response = self._read_frame(time.monotonic() + request["timeout_s"] + RESPONSE_GRACE_S)
                return ExecResult.from_wire(response, self.isolation)
            except (OSError, ValueError, SandboxProtocolError) as exc:
                self.kill()
                return ExecResult.sandbox_error(
                    f"[sandbox] fork server failure: {type(exc).__name__}: {exc}",
                    self.isolation,
                    time.monotonic() - start,
                )

    def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """EOF on the request pipe makes the server clean up and exit; SIGKILL if it does not."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return
        self._cleanup_after_exit()

    def kill(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)  # the server (and without a PID namespace its group)
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=CLOSE_GRACE_S)
        self._cleanup_after_exit()

    def _cleanup_after_exit(self) -> None:
        """Remove what a server that died without cleaning up left behind (cgroups, host work root)."""
        proc, hello = self.proc, self.hello
        self.proc, self.hello = None, None
        if proc is not None:
            for stream in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError):
                    if stream is not None:
                        stream.close()
        if not hello:
            return
        for path in hello.get("cgroups", ()):
            if not os.path.isdir(path):
                continue
            deadline = time.monotonic() + CLOSE_GRACE_S
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    with open(os.path.join(path, "cgroup.procs"), encoding="ascii") as fh:
                        for pid in fh.read().split():
                            with contextlib.suppress(OSError):
                                os.kill(int(pid), signal.SIGKILL)
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
        work_root = hello.get("work_root")
        if work_root and os.path.isdir(work_root):
            shutil.rmtree(work_root, ignore_errors=True)


def _shutdown(workers: list[_Worker], executor: concurrent.futures.ThreadPoolExecutor, owner_pid: int) -> None:
    if os.getpid() != owner_pid:  # a forked copy of the caller must not stop the parent's servers
        return
    executor.shutdown(wait=False, cancel_futures=True)
    for worker in workers:
        with contextlib.suppress(Exception):
            worker.close()


# A call whose imports are all standard library runs in a template without the preloaded packages.
_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+([A-Za-z_]\w*)|import[ \t]+([^\n#;]+))", re.MULTILINE)
_DYNAMIC_IMPORT = ("__import__", "importlib")


def imports_only_stdlib(code: str) -> bool:
    """Whether every module ``code`` imports by statement is in the standard library (and it imports
    nothing dynamically).  Decides the template only, never the result: a miss costs the import time."""
    if any(word in code for word in _DYNAMIC_IMPORT):
        return False
    for match in _IMPORT.finditer(code):
        if match.group(1):
            names = [match.group(1)]
        else:
            names = [part.split()[0].split(".")[0] for part in match.group(2).split(",") if part.split()]
        if any(name not in sys.stdlib_module_names for name in names):
            return False
    return True


class Sandbox:
    """An async pool of ``workers`` pre-started fork servers; ``await box.run(code, ...)`` per call.

    Safe to call from many asyncio tasks at once (from any event loop): at most ``workers`` calls run
    at the same time, the rest queue in FIFO order.  Each call forks a fresh child from a worker's
    template, so a call costs milliseconds and no state survives it.  With ``config.preload``, each of
    the ``workers`` slots holds two servers: one whose template imported the preloaded packages (numpy,
    sympy) and a plain one; a call whose imports are all standard library (:func:`imports_only_stdlib`)
    goes to the plain one, because forking the ~50 MB preloaded template costs more than the whole
    plain call.  ``close()`` is idempotent and also runs at interpreter exit; ``async with Sandbox() as
    box`` closes on exit.
    """

    def __init__(self, workers: int = 2, *, config: SandboxConfig | None = None) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        if config is not None and not isinstance(config, SandboxConfig):
            raise TypeError(f"config must be a SandboxConfig, got {type(config).__name__}")
        self.config = config or SandboxConfig()
        self.workers = workers
        self._workers = [_Worker(self.config) for _ in range(workers)]
        plain = dataclasses.replace(self.config, preload=()) if self.config.preload else None
        self._plain_workers = [_Worker(plain) for _ in range(workers)] if plain is not None else []
        self._idle: queue.SimpleQueue[int] = queue.SimpleQueue()  # free slots
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="cleaner-sandbox")
        self._closed = False
        every = self._workers + self._plain_workers
        self._finalizer = weakref.finalize(self, _shutdown, every, self._executor, os.getpid())
        for worker in every:
            worker.spawn()  # start all servers now; their preload imports run in parallel
        for slot in range(workers):
            self._idle.put(slot)

    @property
    def isolation(self) -> tuple[str, ...]:
        """Isolation layers of the workers (empty until a worker has started)."""
        return next((w.isolation for w in self._workers + self._plain_workers if w.isolation), ())

    @property
    def warnings(self) -> tuple[str, ...]:
        """What the started workers could not apply (missing privileges, kernel features, modules)."""
        every = self._workers + self._plain_workers
        return tuple(dict.fromkeys(w for x in every if x.hello for w in x.hello.get("warnings", ())))

    @property
    def sandbox_uids(self) -> tuple[int, ...]:
        """The unprivileged uids the started workers run code as (empty without root)."""
        return tuple(
            int(w.hello["uid"])
            for w in self._workers + self._plain_workers
            if w.hello is not None and w.hello.get("uid") is not None
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def _run_blocking(self, request: dict[str, Any]) -> ExecResult:
        slot = self._idle.get()
        worker = self._workers[slot]
        if self._plain_workers and imports_only_stdlib(request["code"]):
            worker = self._plain_workers[slot]
        try:
            if self._closed:
                return ExecResult.sandbox_error("[sandbox] the Sandbox was closed", worker.isolation)
            return worker.execute(request)
        finally:
            self._idle.put(slot)

    def _submit(self, request: dict[str, Any]) -> concurrent.futures.Future[ExecResult]:
        if self._closed:
            raise RuntimeError("Sandbox is closed")
        return self._executor.submit(self._run_blocking, request)

    async def run(
        self,
        code: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_mb: int | None = DEFAULT_MEMORY_MB,
        stdin: str | bytes | None = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    ) -> ExecResult:
        """Run ``code`` like ``python -c`` in a worker and return its ``ExecResult``.

        Raises ``ValueError``/``TypeError`` for bad arguments and ``RuntimeError`` after ``close()``;
        anything the code itself does is reported in the result, never raised.
        """
        request = make_request(
            code, timeout_s=timeout_s, memory_mb=memory_mb, stdin=stdin, max_output_bytes=max_output_bytes
        )
        return await asyncio.wrap_future(self._submit(request))

    def run_sync(
        self,
        code: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_mb: int | None = DEFAULT_MEMORY_MB,
        stdin: str | bytes | None = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    ) -> ExecResult:
        """Blocking variant of ``run`` for threads and scripts without an event loop."""
        request = make_request(
            code, timeout_s=timeout_s, memory_mb=memory_mb, stdin=stdin, max_output_bytes=max_output_bytes
        )
        return self._submit(request).result()

    def close(self) -> None:
        """Stop every worker and remove their cgroups and work dirs; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._finalizer()

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---- the process's pool ------------------------------------------------------------------------------

DEFAULT_SHARED_WORKERS = 2  # the config schema's sandbox_workers default
_shared: dict[str, Any] = {"pid": None, "box": None}
_shared_lock = threading.Lock()


def _default_shared_workers() -> int:
    raw = os.environ.get("CLEANER_SANDBOX_WORKERS", "")
    if not raw:
        return DEFAULT_SHARED_WORKERS
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"CLEANER_SANDBOX_WORKERS must be a positive integer, got {raw!r}")
    return int(raw)


def shared_sandbox(workers: int | None = None, *, config: SandboxConfig | None = None) -> Sandbox:
    """The one long-lived pool of this process, shared by tool calls and code rewards.

    Started on first use with ``workers`` servers (default: ``$CLEANER_SANDBOX_WORKERS``, else 2, the
    ``sandbox_workers`` default of the config schema) and ``config`` (default ``SandboxConfig()``:
    numpy and sympy preloaded); later calls get the same pool whatever they pass, so the first user
    sizes it.  A forked child of the process gets a pool of its own (the parent's servers answer the
    parent only); a closed pool is replaced.  It closes at interpreter exit like any ``Sandbox``.
    """
    with _shared_lock:
        box = _shared["box"]
        if _shared["pid"] != os.getpid() or box is None or box.closed:
            box = Sandbox(workers or _default_shared_workers(), config=config)
            _shared.update(pid=os.getpid(), box=box)
        return box


def run_python(
    code: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int | None = DEFAULT_MEMORY_MB,
    stdin: str | bytes | None = None,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    config: SandboxConfig | None = None,
) -> ExecResult:
    """Run ``code`` once in a fresh fork server (no pool, no preloaded modules by default).

    Same isolation and result as ``Sandbox.run``; costs an interpreter start per call, so use a
    ``Sandbox`` pool for throughput.
    """
    request = make_request(
        code, timeout_s=timeout_s, memory_mb=memory_mb, stdin=stdin, max_output_bytes=max_output_bytes
    )
    if config is not None and not isinstance(config, SandboxConfig):
        raise TypeError(f"config must be a SandboxConfig, got {type(config).__name__}")
    worker = _Worker(config or SandboxConfig(preload=()))
    try:
        return worker.execute(request)
    finally:
        worker.close()
