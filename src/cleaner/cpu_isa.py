"""One numerical path on every x86-64 CPU: torch's CPU kernels pinned to AVX2.

PyTorch picks its CPU kernels at run time from the instruction sets the processor has (ATen's dispatch,
oneDNN and MKL each on their own). AVX-512 kernels sum floats in another order than AVX2 kernels, so the same
seeds give different results on different machines; for a 1M-parameter model trained from scratch on the
testbed, whose skills appear abruptly during SFT, that difference is not a rounding error: on 2026-12-04 the same
commit and packages gave SFT Pass@1 74.4% on an AVX-512 machine and 62.5% on the AVX2 machine its README numbers
came from, and a verl test passed on one and failed on the other (`ATEN_CPU_CAPABILITY=avx2` alone made it pass).

Importing :mod:`cleaner` therefore sets, unless the environment already does, the three settings that cap every
kernel family at AVX2, which every x86-64 machine of the last decade has. They must be set before torch runs its
first CPU kernel; ``cleaner`` is imported before torch by every entry point (the ``cleaner`` command, the
Snakemake rules through it, the test suite's conftest). ``CLEANER_CPU_ISA=native`` leaves the processor's own
choice (faster on AVX-512 machines, other numbers). Nothing is set on other architectures.
"""

from __future__ import annotations

import os
import platform

PINNED_AVX2 = {
    "ATEN_CPU_CAPABILITY": "avx2",   # ATen's own vectorised kernels (DispatchStub)
    "ONEDNN_MAX_CPU_ISA": "AVX2",    # oneDNN (MKL-DNN) convolutions, matmuls, layer norms
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",  # MKL BLAS (torch's CPU matmuls)
}


def pin_cpu_isa(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set the AVX2 pins in ``environ`` (default ``os.environ``) where unset; returns what is now in force."""
    env = os.environ if environ is None else environ
    if env.get("CLEANER_CPU_ISA", "avx2").lower() == "native" or platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    for key, value in PINNED_AVX2.items():
        env.setdefault(key, value)
    return {key: env[key] for key in PINNED_AVX2}
