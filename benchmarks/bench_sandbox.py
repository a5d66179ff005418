"""Throughput and latency of ``cleaner.sandbox`` against a plain ``python -c`` subprocess baseline.

Modes (each call runs one program and must succeed):
  * ``subprocess``: ``subprocess.run([sys.executable, "-c", code])``, no isolation at all (the baseline);
  * ``run_python``: one fresh fork server per call (full isolation, no pool);
  * ``Sandbox``: a pool of pre-started fork servers (numpy + sympy preloaded unless ``preload=()``).

Latency is what the caller observes per call (queueing included), throughput is calls / wall time with
``concurrency`` calls in flight.  Usage::

    python benchmarks/bench_sandbox.py [--calls 200] [--workers 2] [--json out.json]

The numbers depend on the machine's load; run it on a quiet machine and report the core count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from cleaner.sandbox import Sandbox, SandboxConfig, run_python

PROGRAMS = {
    "trivial": "print(1 + 1)",
    "numeric": "import math\nprint(sum(math.isqrt(i) for i in range(20000)))",
    "numpy": "import numpy as np\nprint(round(float(np.linalg.det(np.arange(16.0).reshape(4, 4) + np.eye(4))), 3))",
}


@dataclass(frozen=True)
class Row:
    mode: str
    program: str
    concurrency: int
    calls: int
    calls_per_s: float
    p50_ms: float
    p99_ms: float


def _percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def _row(mode: str, program: str, concurrency: int, latencies: list[float], wall: float) -> Row:
    lat = sorted(latencies)
    return Row(mode, program, concurrency, len(lat), len(lat) / wall, _percentile(lat, 0.5) * 1e3, _percentile(lat, 0.99) * 1e3)


def _threaded(call: Callable[[], bool], calls: int, concurrency: int) -> tuple[list[float], float]:
    def timed(_: int) -> float:
        start = time.perf_counter()
        if not call():
            raise RuntimeError("benchmark call failed")
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(timed, range(calls)))
    return latencies, time.perf_counter() - start


def bench_subprocess(code: str, calls: int, concurrency: int) -> tuple[list[float], float]:
    def call() -> bool:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
        return done.returncode == 0

    return _threaded(call, calls, concurrency)


def bench_run_python(code: str, calls: int, concurrency: int) -> tuple[list[float], float]:
    return _threaded(lambda: run_python(code, timeout_s=60).ok, calls, concurrency)


async def bench_pool(box: Sandbox, code: str, calls: int, concurrency: int) -> tuple[list[float], float]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one() -> None:
        async with gate:
            start = time.perf_counter()
            result = await box.run(code, timeout_s=60)
            latencies.append(time.perf_counter() - start)
            if not result.ok:
                raise RuntimeError(f"benchmark call failed: {result.status} {result.stderr[-300:]}")

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    return latencies, time.perf_counter() - start


async def run_all(calls: int, workers: int) -> tuple[list[Row], dict[str, float]]:
    rows: list[Row] = []
    slow_calls = max(20, calls // 4)  # the per-call-interpreter modes are 10-50x slower
    for name, code in PROGRAMS.items():
        rows.append(_row("subprocess python -c", name, workers, *bench_subprocess(code, slow_calls, workers)))
        rows.append(_row("run_python", name, workers, *bench_run_python(code, slow_calls, workers)))
    startup: dict[str, float] = {}
    for label, config in (("Sandbox", SandboxConfig()), ("Sandbox preload=()", SandboxConfig(preload=()))):
        start = time.perf_counter()
        async with Sandbox(workers=workers, config=config) as box:
            await asyncio.gather(*(box.run("pass") for _ in range(workers)))
            startup[label] = time.perf_counter() - start
            for name, code in PROGRAMS.items():
                for _ in range(workers):  # warm: first call of each worker touches the cgroup
                    await box.run(code)
                for concurrency in (workers, 8 * workers):
                    latencies, wall = await bench_pool(box, code, calls, concurrency)
                    rows.append(_row(f"{label}(workers={workers})", name, concurrency, latencies, wall))
            isolation = box.isolation
    startup["isolation_layers"] = len(isolation)
    return rows, startup


def format_table(rows: list[Row]) -> str:
    lines = [
        "| mode | program | concurrency | calls | calls/s | p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.mode} | {r.program} | {r.concurrency} | {r.calls} | {r.calls_per_s:.1f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per pool measurement (default 200)")
    parser.add_argument("--workers", type=int, default=2, help="pool workers = baseline threads (default 2)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this path (atomically)")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.workers < 1:
        parser.error("--calls and --workers must be positive")

    rows, startup = asyncio.run(run_all(args.calls, args.workers))
    print(f"cpus={os.cpu_count()} python={sys.version.split()[0]} load={os.getloadavg()[0]:.2f}")
    print(format_table(rows))
    print("pool start-up to first results: " + ", ".join(f"{k} {v:.2f} s" for k, v in startup.items() if k != "isolation_layers"))
    if args.json:
        payload = {"rows": [asdict(r) for r in rows], "startup_s": startup, "cpus": os.cpu_count()}
        directory = os.path.dirname(os.path.abspath(args.json))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".bench_sandbox.", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
