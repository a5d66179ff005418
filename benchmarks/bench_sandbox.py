"""Throughput and latency of ``cleaner.sandbox`` against a fresh interpreter per call, in the same run.

Modes (each call runs one program and must succeed):
  * ``fresh python -S -c`` / ``fresh python -I -c``: ``subprocess.run([sys.executable, flag, "-c", code])``
    per call, no isolation at all (the baseline).  ``-S`` skips ``site`` (the fastest start, but no
    site-packages); the import-heavy programs need site-packages, so their baseline is ``-I``;
  * ``Sandbox``: a pool of pre-started fork servers with its default configuration (numpy + sympy
    preloaded, a plain template beside it for standard-library-only code) and every isolation layer the
    host allows (namespaces, private root, cgroups, uid drop, seccomp, rlimits; printed);
  * ``run_python`` (``--one-shot``): one fresh fork server per call.

Both sides run at the same concurrency (``--workers`` calls in flight, ``--workers`` pool servers);
the pool is also measured with 8x as many calls in flight.  Latency is what the caller observes per
call (queueing included), throughput is calls / wall time.  ``--rounds`` repeats every measurement
and prints each round's ratio (pool calls/s / fresh-interpreter calls/s) with the best and the spread,
since on a shared machine the load of other processes moves both.  Usage::

    python benchmarks/bench_sandbox.py [--calls 300] [--workers 2] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from cleaner.sandbox import Sandbox, SandboxConfig, run_python

# name -> (code, fresh-interpreter flag that can run it)
PROGRAMS = {
    "trivial": ("print(1 + 1)", "-S"),
    "numeric": ("import math\nprint(sum(math.isqrt(i) for i in range(20000)))", "-S"),
    "numpy": ("import numpy as np\nprint(round(float(np.linalg.det(np.arange(16.0).reshape(4, 4) + np.eye(4))), 3))", "-I"),
    "sympy": ("import sympy\nx = sympy.symbols('x')\nprint(sympy.solve(x**2 - 4, x))", "-I"),
}


@dataclass(frozen=True)
class Row:
    round: int
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


def _row(rnd: int, mode: str, program: str, concurrency: int, latencies: list[float], wall: float) -> Row:
    lat = sorted(latencies)
    return Row(rnd, mode, program, concurrency, len(lat), len(lat) / wall,
               _percentile(lat, 0.5) * 1e3, _percentile(lat, 0.99) * 1e3)  # fmt: skip


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


def bench_fresh(code: str, flag: str, calls: int, concurrency: int) -> tuple[list[float], float]:
    def call() -> bool:
        done = subprocess.run([sys.executable, flag, "-c", code], capture_output=True, timeout=120)
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


def fresh_calls(program: str, calls: int) -> int:
    """Fewer calls where a fresh interpreter takes long (an import of sympy: ~0.5 s each)."""
    return max(20, calls // (12 if PROGRAMS[program][1] == "-I" else 4))


async def run_round(rnd: int, box: Sandbox, args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    for name in args.programs:
        code, flag = PROGRAMS[name]
        latencies, wall = bench_fresh(code, flag, fresh_calls(name, args.calls), args.workers)
        rows.append(_row(rnd, f"fresh python {flag} -c", name, args.workers, latencies, wall))
        if args.one_shot:
            latencies, wall = bench_run_python(code, fresh_calls(name, args.calls), args.workers)
            rows.append(_row(rnd, "run_python", name, args.workers, latencies, wall))
        for _ in range(2 * args.workers):  # warm: first calls of each server
            await box.run(code)
        for concurrency in (args.workers, 8 * args.workers):
            latencies, wall = await bench_pool(box, code, args.calls, concurrency)
            rows.append(_row(rnd, f"Sandbox(workers={args.workers})", name, concurrency, latencies, wall))
    return rows


def ratios(rows: list[Row], workers: int) -> dict[str, list[float]]:
    """Per program, pool calls/s over fresh-interpreter calls/s at equal concurrency, one per round."""
    out: dict[str, list[float]] = {}
    for name in dict.fromkeys(r.program for r in rows):
        for rnd in sorted({r.round for r in rows}):
            fresh = next(r for r in rows if r.round == rnd and r.program == name and r.mode.startswith("fresh"))
            pool = next(r for r in rows if r.round == rnd and r.program == name and r.mode.startswith("Sandbox")
                        and r.concurrency == workers)  # fmt: skip
            out.setdefault(name, []).append(pool.calls_per_s / fresh.calls_per_s)
    return out


def format_table(rows: list[Row]) -> str:
    lines = [
        "| round | mode | program | concurrency | calls | calls/s | p50 ms | p99 ms |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.round} | {r.mode} | {r.program} | {r.concurrency} | {r.calls} | {r.calls_per_s:.1f} "
            f"| {r.p50_ms:.1f} | {r.p99_ms:.1f} |"
        )
    return "\n".join(lines)


def format_ratios(by_program: dict[str, list[float]]) -> str:
    lines = ["| program | ratio per round | best | median | worst |", "|---|---|---:|---:|---:|"]
    for name, values in by_program.items():
        each = ", ".join(f"{v:.2f}" for v in values)
        lines.append(f"| {name} | {each} | {max(values):.2f}x | {statistics.median(values):.2f}x | {min(values):.2f}x |")
    return "\n".join(lines)


async def run_all(args: argparse.Namespace) -> tuple[list[Row], dict[str, object]]:
    start = time.perf_counter()
    async with Sandbox(workers=args.workers, config=SandboxConfig()) as box:
        await asyncio.gather(*(box.run("pass") for _ in range(args.workers)))
        await asyncio.gather(*(box.run("import numpy") for _ in range(args.workers)))  # both templates up
        info: dict[str, object] = {"startup_s": time.perf_counter() - start, "isolation": list(box.isolation),
                                   "warnings": list(box.warnings)}  # fmt: skip
        rows: list[Row] = []
        for rnd in range(1, args.rounds + 1):
            rows += await run_round(rnd, box, args)
    return rows, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per pool measurement (default 300)")
    parser.add_argument("--workers", type=int, default=2, help="pool servers = calls in flight (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of every measurement (default 3)")
    parser.add_argument("--one-shot", action="store_true", help="also measure run_python (a server per call)")
    parser.add_argument("--programs", default=",".join(PROGRAMS), help=f"comma-separated subset of {list(PROGRAMS)}")
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this path (atomically)")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.workers < 1 or args.rounds < 1:
        parser.error("--calls, --workers and --rounds must be positive")
    args.programs = [p for p in args.programs.split(",") if p]
    unknown = sorted(set(args.programs) - set(PROGRAMS))
    if unknown or not args.programs:
        parser.error(f"--programs: unknown {unknown}; known: {list(PROGRAMS)}")

    load_before = os.getloadavg()[0]
    rows, info = asyncio.run(run_all(args))
    by_program = ratios(rows, args.workers)
    print(f"cpus={os.cpu_count()} python={sys.version.split()[0]} load={load_before:.2f}->{os.getloadavg()[0]:.2f} "
          f"uid={os.geteuid()}")  # fmt: skip
    print(f"isolation: {' '.join(info['isolation'])}")  # type: ignore[arg-type]
    if info["warnings"]:
        print(f"warnings: {info['warnings']}")
    print(format_table(rows))
    print(f"\npool calls/s over a fresh interpreter's at concurrency {args.workers}:")
    print(format_ratios(by_program))
    print(f"pool start-up to first results (numpy + sympy preloaded): {info['startup_s']:.2f} s")
    if args.json:
        payload = {"rows": [asdict(r) for r in rows], "ratios": by_program, **info, "cpus": os.cpu_count()}
        directory = os.path.dirname(os.path.abspath(args.json))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".bench_sandbox.", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
