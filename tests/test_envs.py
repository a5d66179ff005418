"""The per-rule software environments (envs/*.yaml + envs/*.post-deploy.sh + locks, envs/apptainer/verl.def).

- Deployment as Snakemake does it: Snakemake's own conda code (``snakemake.deployment.conda.Env.create``) copies
  ``envs/eval.yaml`` to ``.snakemake/conda/<hash>.yaml`` and ``envs/eval.post-deploy.sh`` to
  ``<hash>.post-deploy.sh`` and runs the copy inside the new env from its working directory; the package must
  come from the workflow directory all the same (a copy of this repository's pyproject, src and envs, so the
  check cannot pass by finding the test venv's own install). conda itself is not installed here, so a stand-in on
  PATH answers ``conda --version`` / ``info`` / ``config`` and makes the env a plain venv that sees the test
  venv's packages through a .pth (pip, and the dependencies ``pip check`` looks for); the lock is cut to one
  package so nothing is downloaded. What stays unchecked: conda-forge solving the yaml (python + pip), and
  installing the real GPU locks (CUDA wheels, GBs; envs/lock.sh resolved them against PyPI when it wrote them).
- Pins: one torch / transformers / CUDA across the GPU env, its container and the eval env, verl 0.9.1's own pins
  (its installed METADATA) satisfied by the lock, each post-deploy script tied to its lock's digest.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
ENVS = ROOT / "envs"
GPU_LOCKS = ("verl", "eval")


def _lock_versions(path: Path) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s\\;]+)", path.read_text(), flags=re.M)
    return {re.sub(r"[-_.]+", "-", name.split("[")[0]).lower(): version for name, version in pins}


def _script_value(path: Path, name: str) -> str:
    match = re.search(rf"^{name}=(\S+)", path.read_text(), flags=re.M)
    assert match, f"{path} sets no {name}"
    return match.group(1)


# -- pins ------------------------------------------------------------------------------------------------------
def test_no_env_file_installs_a_relative_path():
    for yaml_file in ENVS.glob("*.yaml"):
        text = yaml_file.read_text()
        assert "-e .." not in text and "- .." not in text, f"{yaml_file}: a relative path breaks once Snakemake " \
                                                          "copies the file to .snakemake/conda/<hash>.yaml"
        assert (ENVS / f"{yaml_file.stem}.post-deploy.sh").is_file(), f"{yaml_file} has no post-deploy script"


@pytest.mark.parametrize("env, lock", [("verl", ENVS / "verl.lock"), ("eval", ENVS / "eval.lock"),
                                       ("cpu", ROOT / "requirements.lock")])
def test_post_deploy_scripts_match_their_locks(env, lock):
    """A lock edited without envs/lock.sh would leave Snakemake's env hash (yaml + script) unchanged: stale env."""
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    assert _script_value(ENVS / f"{env}.post-deploy.sh", "LOCK_SHA256") == digest, "run envs/lock.sh (stamp)"


def test_gpu_envs_share_torch_transformers_and_cuda():
    locks = {env: _lock_versions(ENVS / f"{env}.lock") for env in GPU_LOCKS}
    for package in ("torch", "transformers", "nvidia-cuda-runtime", "nvidia-cudnn-cu13", "nvidia-nccl-cu13"):
        versions = {env: lock.get(package) for env, lock in locks.items()}
        assert len(set(versions.values())) == 1 and None not in versions.values(), (package, versions)
    verl = locks["verl"]
    assert verl["torch"] == "2.11.0" and verl["verl"] == "0.9.1" and verl["sglang"] == "0.5.12"
    assert "flash-attn-4" not in verl and "flash-attn" not in verl   # flash-attn: prebuilt, by the script
    # One CUDA: the container's toolkit is the torch wheels' CUDA runtime (major.minor).
    cuda_runtime = ".".join(verl["nvidia-cuda-runtime"].split(".")[:2])
    base = re.search(r"^From:\s*nvidia/cuda:(\d+\.\d+)\.\d+-", (ENVS / "apptainer" / "verl.def").read_text(), re.M)
    assert base and base.group(1) == cuda_runtime, (base and base.group(0), cuda_runtime)


def test_gpu_lock_satisfies_verl_0_9_1_pins():
    """verl's own requirements for the extras we install (sglang, fsdp), read from its installed METADATA."""
    verl_lock = _lock_versions(ENVS / "verl.lock")
    assert importlib.metadata.version("verl") == verl_lock["verl"]
    flash_attn = _script_value(ENVS / "verl.post-deploy.sh", "FLASH_ATTN")
    checked = 0
    for line in importlib.metadata.requires("verl"):
        req = Requirement(line)
        extra = re.search(r'extra == "([^"]+)"', str(req.marker)) if req.marker else None
        if not req.specifier or (extra and extra.group(1) not in (
                "sglang", "fsdp", "verl-core", "flash-attn-cu130torch211", "cupy-cu130")):
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        version = flash_attn.split("==")[1] if name == "flash-attn" else verl_lock.get(name)
        assert version is not None and req.specifier.contains(version, prereleases=True), (line, version)
        checked += 1
    assert checked >= 10   # torch, torchvision, torchaudio, sglang, transformers, trl, flash-attn, cupy, ...


def test_gpu_lock_satisfies_sglang_0_5_12_pins_but_the_two_verl_overrides():
    """sglang's own requirements (its wheel's METADATA, kept as a fixture): all met on Linux x86-64 except the two
    verl overrides too (transformers 5.9.0 for sglang's 5.6.0, flash-attn-4 left out)."""
    verl_lock = _lock_versions(ENVS / "verl.lock")
    env = {"sys_platform": "linux", "platform_machine": "x86_64", "python_version": "3.12", "extra": ""}
    unmet = []
    fixture = Path(__file__).parent / "fixtures" / "envs" / "sglang-0.5.12-requires.txt"
    for line in fixture.read_text().splitlines():
        if line.startswith("#"):
            continue
        req = Requirement(line)
        if req.marker and not req.marker.evaluate(env):
            continue
        version = verl_lock.get(re.sub(r"[-_.]+", "-", req.name).lower())
        if version is None or not req.specifier.contains(version, prereleases=True):
            unmet.append((line, version))
    assert unmet == [("flash-attn-4>=4.0.0b9", None), ("transformers==5.6.0", "5.9.0")]


def test_every_top_level_pin_is_in_its_lock():
    for env in GPU_LOCKS:
        lock = _lock_versions(ENVS / f"{env}.lock")
        for line in (ENVS / f"{env}.in").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                req = Requirement(line)
                name = re.sub(r"[-_.]+", "-", req.name).lower()
                assert req.specifier.contains(lock.get(name, "0"), prereleases=True), (env, line, lock.get(name))


def test_python_and_torch_agree_with_the_locks():
    def yaml_python(env):
        return re.search(r"python=(\d+\.\d+)", (ENVS / f"{env}.yaml").read_text()).group(1)

    gpu_python = re.search(r"--python-version (\S+)", (ENVS / "lock.sh").read_text()).group(1)
    assert yaml_python("verl") == yaml_python("eval") == gpu_python
    assert f"python{gpu_python}" in (ENVS / "apptainer" / "verl.def").read_text()
    cpu_python = re.search(r"--python-version (\S+)", (ROOT / "scripts" / "env" / "lock.sh").read_text()).group(1)
    assert yaml_python("cpu") == cpu_python
    make_torch = re.search(r"^TORCH\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert _script_value(ENVS / "cpu.post-deploy.sh", "TORCH") == make_torch
    # The container installs with the conda env's script, not with its own pip lines.
    recipe = (ENVS / "apptainer" / "verl.def").read_text()
    assert "envs/verl.post-deploy.sh" in recipe and "pip install" not in recipe


# -- deployment as Snakemake does it ---------------------------------------------------------------------------
CONDA_STAND_IN = textwrap.dedent(
    """\
    #!/usr/bin/env bash
    # Stand-in for conda (not installed here): what Snakemake's deployment code calls, envs as plain venvs.
    set -euo pipefail
    prefix=$(cd "$(dirname "$0")/.." && pwd)
    case "$1" in
        --version) echo "conda 24.11.3" ;;
        info) echo "{\\"conda_prefix\\": \\"$prefix\\", \\"platform\\": \\"linux-64\\"}" ;;
        config) echo '{"get": {"channel_priority": "strict"}}' ;;
        clean) ;;
        env)  # conda env create --quiet --no-default-packages --file "<f>" --prefix "<p>"
            while [ $# -gt 0 ]; do
                case "$1" in --file) file=$2; shift ;; --prefix) env=$2; shift ;; esac; shift
            done
            cp "$file" "$env.created-from"
            "$BASE_PYTHON" -m venv --without-pip "$env"   # pip and the dependencies: the test venv's, via a .pth
            site=$("$env/bin/python" -c 'import site; print(site.getsitepackages()[0])')
            echo "$TEST_SITE_PACKAGES" > "$site/test.pth"
            ;;
        *) echo "conda stand-in: unsupported: $*" >&2; exit 2 ;;
    esac
    """
)
ACTIVATE_STAND_IN = 'source "$1/bin/activate"\n'


def _workflow_copy(tmp_path: Path) -> Path:
    """The repository's pyproject, src and env files, with envs/eval.lock cut to one package (re-stamped)."""
    wf = tmp_path / "workflow"
    (wf / "envs").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", wf)
    shutil.copytree(ROOT / "src", wf / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("eval.yaml", "eval.post-deploy.sh", "lock.sh"):
        shutil.copy(ENVS / name, wf / "envs" / name)
    one = re.search(r"^packaging==.*?(?=^\S)", (ROOT / "requirements.lock").read_text(), flags=re.M | re.S)
    (wf / "envs" / "eval.lock").write_text(one.group(0))
    script = wf / "envs" / "eval.post-deploy.sh"
    digest = hashlib.sha256((wf / "envs" / "eval.lock").read_bytes()).hexdigest()
    script.write_text(re.sub(r"^LOCK_SHA256=.*$", f"LOCK_SHA256={digest}", script.read_text(), flags=re.M))
    (wf / "Snakefile").write_text(textwrap.dedent(
        """\
        import os
        # What rules/common.smk does for the post-deploy scripts: where the workflow (and the package) lives.
        if config.get("export_workflow_dir", True):
            os.environ["CLEANER_WORKFLOW_DIR"] = workflow.basedir

        rule env_check:
            output: "cleaner_location.txt"
            conda: "envs/eval.yaml"
            shell: "python -c 'import cleaner; print(cleaner.__file__)' > {output}"
        """))
    return wf


def _run_snakemake(wf: Path, workdir: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    conda_bin = tmp_path / "conda" / "bin"
    conda_bin.mkdir(parents=True, exist_ok=True)
    (conda_bin / "conda").write_text(CONDA_STAND_IN)
    (conda_bin / "conda").chmod(0o755)
    (conda_bin / "activate").write_text(ACTIVATE_STAND_IN)
    site_packages = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    env = {**os.environ, "PATH": f"{conda_bin}:{os.environ['PATH']}", "BASE_PYTHON": sys._base_executable,
           "TEST_SITE_PACKAGES": site_packages, "PIP_NO_INDEX": "1"}
    env.pop("CLEANER_WORKFLOW_DIR", None)
    env.pop("PYTHONPATH", None)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(wf / "Snakefile"), "-d", str(workdir), "-c1",
           "--sdm", "conda", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_snakemake_deploys_the_env_and_the_package_comes_from_the_workflow(tmp_path):
    wf = _workflow_copy(tmp_path)
    workdir = tmp_path / "run"          # Snakemake's working directory: neither the workflow nor the env file's
    proc = _run_snakemake(wf, workdir, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    deployed = list((workdir / ".snakemake" / "conda").glob("*.yaml"))
    assert len(deployed) == 1 and deployed[0].read_text() == (ENVS / "eval.yaml").read_text()
    assert deployed[0].with_suffix(".post-deploy.sh").read_text() == (wf / "envs" / "eval.post-deploy.sh").read_text()
    location = Path((workdir / "cleaner_location.txt").read_text().strip())
    # The job's `python` is the env's, and its `cleaner` is the workflow's source, not a copy under .snakemake/.
    assert location == wf / "src" / "cleaner" / "__init__.py"


@pytest.mark.slow
def test_post_deploy_names_the_problem(tmp_path):
    wf = _workflow_copy(tmp_path)
    # Without the workflow directory exported, from a working directory that is not the workflow: refused.
    proc = _run_snakemake(wf, tmp_path / "run1", tmp_path, "--config", "export_workflow_dir=0")
    assert proc.returncode != 0 and "set CLEANER_WORKFLOW_DIR to the repository root" in proc.stdout + proc.stderr
    # A lock edited without re-stamping the script: refused, with the command that fixes it.
    (wf / "envs" / "eval.lock").write_text((wf / "envs" / "eval.lock").read_text() + "\n")
    proc = _run_snakemake(wf, tmp_path / "run2", tmp_path)
    assert proc.returncode != 0 and "run envs/lock.sh" in proc.stdout + proc.stderr
