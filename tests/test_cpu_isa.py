"""cleaner.cpu_isa: importing cleaner pins torch's CPU kernels to AVX2 (one numerical path on x86-64)."""

import os
import platform
import subprocess
import sys

import pytest

from cleaner.cpu_isa import PINNED_AVX2, pin_cpu_isa

X86 = platform.machine().lower() in ("x86_64", "amd64")
PROBE = "import cleaner, torch; print(torch.backends.cpu.get_cpu_capability())"


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in PINNED_AVX2 and k != "CLEANER_CPU_ISA"}
    return {**env, **extra}


def test_pins_are_set_only_where_unset():
    env = {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}
    in_force = pin_cpu_isa(env)
    if X86:
        assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
        assert env["MKL_ENABLE_INSTRUCTIONS"] == "SSE4_2"  # the user's own setting wins
        assert in_force == env
    assert pin_cpu_isa({"CLEANER_CPU_ISA": "native"}) == {}


@pytest.mark.skipif(not X86, reason="the pins exist for x86-64 only")
def test_importing_cleaner_before_torch_runs_avx2_kernels():
    out = subprocess.run([sys.executable, "-c", PROBE], env=clean_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "AVX2"


@pytest.mark.skipif(not X86, reason="the pins exist for x86-64 only")
def test_native_opt_out_leaves_the_processors_choice():
    native = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                            env=clean_env(), capture_output=True, text=True, check=True).stdout.strip()
    out = subprocess.run([sys.executable, "-c", PROBE], env=clean_env(CLEANER_CPU_ISA="native"),
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == native
