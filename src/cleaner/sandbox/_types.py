"""Public value types of the sandbox and the framed-JSON protocol between caller and fork server."""

from __future__ import annotations

import base64
import json
import math
import os
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "error", "timeout", "memory", "output_limit", "sandbox_error"]
STATUSES: tuple[str, ...] = ("ok", "error", "timeout", "memory", "output_limit", "sandbox_error")

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 1024
DEFAULT_MAX_OUTPUT_BYTES = 1 << 20
# What real model code imports most (math/itertools/fractions are cheap stdlib); importing sympy costs
# ~0.3 s per call, while having it in the fork-server template adds ~1 ms to each fork.
DEFAULT_PRELOAD: tuple[str, ...] = ("numpy", "sympy")
MAX_TIMEOUT_S = 24 * 3600.0


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one sandboxed execution, shaped like a ``subprocess.run`` result plus a verdict.

    ``status`` is one of ``ok`` (exit code 0, stderr output allowed, as with the reference interpreter),
    ``error`` (uncaught exception, non-zero exit or fatal signal; ``error_type`` is the exception class
    name such as ``NameError``/``SyntaxError``, ``SystemExit``, ``NonZeroExit`` or the signal name such
    as ``SIGSEGV``), ``timeout`` (wall clock or CPU limit), ``memory`` (``MemoryError`` or killed by the
    memory cgroup, ``error_type`` then names the exception or ``OOMKilled``), ``output_limit`` (stdout or
    stderr exceeded ``max_output_bytes``; the output is truncated) and ``sandbox_error`` (a failure of the
    sandbox itself, never of the model code).  ``exit_code`` follows ``subprocess``: negative signal
    number when killed by a signal, ``None`` when the process was never reaped (sandbox errors).
    ``isolation`` names the layers that were applied to this run (see ``docs/sandbox.md``).
    """

    ok: bool
    status: Status
    exit_code: int | None
    stdout: str
    stderr: str
    error_type: str | None
    duration_s: float
    isolation: tuple[str, ...] = ()
    truncated: bool = False

    @classmethod
    def from_wire(cls, payload: dict[str, Any], isolation: tuple[str, ...]) -> ExecResult:
        status = payload["status"]
        if status not in STATUSES:
            raise ValueError(f"fork server sent an unknown status {status!r}")
        return cls(
            ok=status == "ok",
            status=status,
            exit_code=payload.get("exit_code"),
            stdout=payload.get("stdout", ""),
            stderr=payload.get("stderr", ""),
            error_type=payload.get("error_type"),
            duration_s=float(payload.get("duration_s", 0.0)),
            isolation=isolation,
            truncated=bool(payload.get("truncated", False)),
        )

    @classmethod
    def sandbox_error(cls, message: str, isolation: tuple[str, ...] = (), duration_s: float = 0.0) -> ExecResult:
        return cls(
            ok=False,
            status="sandbox_error",
            exit_code=None,
            stdout="",
            stderr=message,
            error_type=None,
            duration_s=duration_s,
            isolation=isolation,
        )


@dataclass(frozen=True)
class SandboxConfig:
    """How a fork server isolates the code it runs.  Every layer degrades gracefully when unavailable.

    ``namespaces``: new mount/pid/net/ipc/uts namespaces (root only): no network at all and a new root
    holding only the interpreter, its libraries, the site-packages directories and ``readable_paths``
    (read-only), a minimal ``/dev``, ``/proc`` of the namespace and private ``/tmp`` + ``/dev/shm`` (see
    ``_fsview``).  ``cgroups``: cgroup v1 ``memory`` and ``pids`` controllers (root only).
    ``drop_privileges``: run the code as a per-server unprivileged uid/gid ``uid_base + server pid``
    (root only).  ``seccomp``: a system-call filter denying ptrace, mount, namespaces, keyrings, bpf, ...
    (needs pyseccomp and libseccomp; see ``_seccomp``).  ``preload``: modules imported once into the
    fork-server template so calls do not pay for them; each call still runs in a fresh forked child, so no
    state survives a call.
    """

    namespaces: bool = True
    cgroups: bool = True
    drop_privileges: bool = True
    seccomp: bool = True
    max_processes: int = 64
    max_open_files: int = 1024
    max_file_mb: int = 256
    preload: tuple[str, ...] = DEFAULT_PRELOAD
    readable_paths: tuple[str, ...] = ()
    uid_base: int = 2_000_000_000
    startup_timeout_s: float = 120.0
    env: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name in ("max_processes", "max_open_files", "max_file_mb"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SandboxConfig.{name} must be a positive int, got {value!r}")
        if self.max_processes < 2:
            raise ValueError(f"SandboxConfig.max_processes must be >= 2, got {self.max_processes}")
        if not isinstance(self.uid_base, int) or not 1000 <= self.uid_base < 2**31 - 2**23:
            raise ValueError(f"SandboxConfig.uid_base must be an int in [1000, 2**31 - 2**23), got {self.uid_base!r}")
        if not self.startup_timeout_s > 0:
            raise ValueError(f"SandboxConfig.startup_timeout_s must be > 0, got {self.startup_timeout_s!r}")
        for name in ("preload", "readable_paths"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"SandboxConfig.{name} must be a tuple of str, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for path in self.readable_paths:
            if not os.path.isabs(path):
                raise ValueError(f"SandboxConfig paths must be absolute, got {path!r}")
        object.__setattr__(self, "env", tuple((str(k), str(v)) for k, v in dict(self.env).items()))

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, payload: dict[str, Any]) -> SandboxConfig:
        payload = dict(payload)
        payload["env"] = tuple(tuple(kv) for kv in payload.get("env", ()))
        return cls(**payload)


def make_request(
    code: str,
    *,
    timeout_s: float,
    memory_mb: int | None,
    stdin: str | bytes | None,
    max_output_bytes: int,
) -> dict[str, Any]:
    """Validate the arguments of one run (``ValueError``/``TypeError`` name the bad one) into a request."""
    if not isinstance(code, str):
        raise TypeError(f"code must be str, got {type(code).__name__}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
        raise TypeError(f"timeout_s must be a number, got {type(timeout_s).__name__}")
    if not (math.isfinite(timeout_s) and 0 < timeout_s <= MAX_TIMEOUT_S):
        raise ValueError(f"timeout_s must be in (0, {MAX_TIMEOUT_S:g}], got {timeout_s!r}")
    if memory_mb is not None:
        if isinstance(memory_mb, bool) or not isinstance(memory_mb, int):
            raise TypeError(f"memory_mb must be an int or None, got {type(memory_mb).__name__}")
        if memory_mb < 16:
            raise ValueError(f"memory_mb must be >= 16 (MiB), got {memory_mb}")
    if isinstance(max_output_bytes, bool) or not isinstance(max_output_bytes, int):
        raise TypeError(f"max_output_bytes must be an int, got {type(max_output_bytes).__name__}")
    if max_output_bytes < 0:
        raise ValueError(f"max_output_bytes must be >= 0, got {max_output_bytes}")
    if stdin is None:
        stdin_b64 = None
    elif isinstance(stdin, str):
        stdin_b64 = base64.b64encode(stdin.encode("utf-8", "surrogateescape")).decode("ascii")
    elif isinstance(stdin, (bytes, bytearray, memoryview)):
        stdin_b64 = base64.b64encode(bytes(stdin)).decode("ascii")
    else:
        raise TypeError(f"stdin must be str, bytes or None, got {type(stdin).__name__}")
    return {
        "code": code,
        "timeout_s": float(timeout_s),
        "memory_mb": memory_mb,
        "stdin_b64": stdin_b64,
        "max_output_bytes": max_output_bytes,
    }


# ---- framing: 4-byte big-endian length + UTF-8 JSON, over raw file descriptors ----------------------

_HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30


def encode_frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    return _HEADER.pack(len(body)) + body


def write_frame(fd: int, message: dict[str, Any]) -> None:
    view = memoryview(encode_frame(message))
    while view:
        written = os.write(fd, view)
        view = view[written:]


def decode_body(body: bytes) -> dict[str, Any]:
    message = json.loads(body.decode("utf-8", "surrogatepass"))
    if not isinstance(message, dict):
        raise ValueError("protocol frame is not a JSON object")
    return message


def frame_length(header: bytes) -> int:
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ValueError(f"protocol frame of {length} bytes exceeds {MAX_FRAME}")
    return length


HEADER_SIZE = _HEADER.size
