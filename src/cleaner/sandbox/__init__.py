"""Sandboxed Python interpreter for tool calls and code rewards (the paper's code-interpreter tool).

The agent's ``code_interpreter`` tool (CLEANER, arXiv 2601.15141: the model writes Python, the
environment runs it and returns the output or the error) and the code-reward judge both run model code
here.  ``status`` encodes SAAR's failure test (non-zero exit, exception, timeout, memory limit; stderr
on an exit-0 run is not a failure, as in the reference code).  Execution follows the reference
interpreter: ``python -c`` semantics, traceback on stderr, a bare last expression printed like the REPL.

Public API::

    run_python(code, *, timeout_s=10.0, memory_mb=1024, stdin=None, max_output_bytes=1 << 20,
               config=None) -> ExecResult
    async with Sandbox(workers=4) as box:
        result = await box.run(code, timeout_s=5.0, memory_mb=512, stdin="1 2\\n")
    shared_sandbox(workers=None) -> Sandbox   # the process's one pool (tool calls and code rewards)

``ExecResult.status`` is one of ``STATUSES``; ``ExecResult.isolation`` names the layers applied
(namespaces, read-only filesystem, cgroups, uid drop, ... depending on what the host allows).  See
``docs/sandbox.md`` for the layers, their fallbacks and the benchmark.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._types import (
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MEMORY_MB,
    DEFAULT_PRELOAD,
    DEFAULT_TIMEOUT_S,
    STATUSES,
    ExecResult,
    SandboxConfig,
    Status,
)

if TYPE_CHECKING:
    from ._pool import Sandbox, run_python, shared_sandbox


def __getattr__(name: str) -> Any:
    # The pool (asyncio, threads, subprocess) is imported on first use only, so that the fork server,
    # which imports this package too, starts fast (PEP 562 lazy attribute).
    if name in ("Sandbox", "run_python", "shared_sandbox"):
        from . import _pool

        return getattr(_pool, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_MAX_OUTPUT_BYTES",
    "DEFAULT_MEMORY_MB",
    "DEFAULT_PRELOAD",
    "DEFAULT_TIMEOUT_S",
    "STATUSES",
    "ExecResult",
    "Sandbox",
    "SandboxConfig",
    "Status",
    "run_python",
    "shared_sandbox",
]
