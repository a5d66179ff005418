"""The SLURM profile (`--profile slurm`), the sbatch requests it yields, and the Ray-on-SLURM launcher.

The dry-run tests plan the real DAG with the real Snakemake CLI and the user-facing profile, then build every
job's sbatch options with snakemake-executor-plugin-slurm's own functions (scripts/slurm/plan_sbatch.py), so
they check what a cluster would actually be asked for. The real-cluster run (scripts/slurm/e2e.sh) is the
`slurm`-marked test at the end, on only with CLEANER_SLURM_E2E=1 (root, apt-get, a few minutes).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

pytest.importorskip("snakemake", reason="snakemake is not installed")
pytest.importorskip("snakemake_executor_plugin_slurm", reason="snakemake-executor-plugin-slurm is not installed")

from snakemake_interface_common.exceptions import WorkflowError  # noqa: E402

from cleaner.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "slurm"
SCRIPTS = REPO / "scripts" / "slurm"
GPU_RULES = {"sft", "rl", "eval", "eval_sft"}


def _load_plan_sbatch():
    spec = importlib.util.spec_from_file_location("plan_sbatch", SCRIPTS / "plan_sbatch.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["plan_sbatch"] = module
    spec.loader.exec_module(module)
    return module


ps = _load_plan_sbatch()


def _opts(args: str) -> dict[str, str]:
    """sbatch options as a mapping: ``-p gpu --gpus=h200:4`` -> {"-p": "gpu", "--gpus": "h200:4"}."""
    out: dict[str, str] = {}
    tokens = args.split()
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if "=" in tok:
            key, value = tok.split("=", 1)
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("-"):
            key, value = tok, tokens[i + 1]
            i += 1
        else:
            key, value = tok, ""
        out[key] = value
        i += 1
    return out


@pytest.fixture(scope="module")
def smoke_plan():
    return ps.plan(REPO / "config" / "smoke.yaml")


@pytest.fixture(scope="module")
def verl_1node_plan():
    return ps.plan(FIXTURES / "verl-1node.yaml")


@pytest.fixture(scope="module")
def verl_2node_plan():
    return ps.plan(FIXTURES / "verl-2node.yaml")


def test_profile_settings_and_partitions():
    profile = ps.profile_settings("slurm")
    assert profile["executor"] == "slurm"
    # Site settings: partitions come from one file the plugin reads; no rule or profile line pins a partition,
    # so the engine decides (an embedded rl job is a CPU job, a verl rl job a GPU job).
    assert "slurm_partition" not in profile.get("default-resources", {})
    assert "set-resources" not in profile
    partitions = {p.name: p.limits for p in ps.load_partitions("slurm")}
    assert partitions["cpu"].max_gpu == 0
    assert partitions["gpu"].max_gpu >= 4 and "h200" in partitions["gpu"].available_gpu_models
    assert profile["default-resources"]["cpus_per_gpu"] * 4 == 16  # the verl rules' 16 threads per 4 GPUs


@pytest.mark.parametrize("fixture", ["verl-1node.yaml", "verl-2node.yaml"])
def test_fixtures_are_valid_verl_configs(fixture):
    config = load_config(FIXTURES / fixture)
    assert config["engine"] == "verl"
    assert config["verl"]["nnodes"] == (2 if "2node" in fixture else 1)


def test_parse_dry_run_reads_rule_threads_resources_and_wildcards():
    text = (
        "[Fri Nov 27 11:52:24 2026]\n"
        "rule rl:\n"
        "    input: a, b\n"
        "    wildcards: exp=cleaner, seed=0\n"
        "    threads: 16\n"
        "    resources: tmpdir=/tmp, mem_mb=512000, mem=512 GB, runtime=4320, gpu=4, gpu_model=h200, nodes=2\n"
        "Shell command: x\n"
        "localrule all:\n"
        "    input: y\n"
    )
    rl, all_ = ps.parse_dry_run(text)
    assert (rl.rule, rl.threads, rl.wildcards, rl.local) == ("rl", 16, {"exp": "cleaner", "seed": "0"}, False)
    assert rl.resources == {"tmpdir": "/tmp", "mem_mb": 512000, "mem": "512 GB", "runtime": 4320, "gpu": 4,
                            "gpu_model": "h200", "nodes": 2}
    assert rl.resources.runtime == 4320
    assert (all_.rule, all_.local) == ("all", True)


def test_smoke_plan_sends_every_job_to_the_cpu_partition(smoke_plan):
    rules = Counter(job.rule for job, _ in smoke_plan)
    assert rules == {"testbed_data": 1, "model_init": 1, "sft": 1, "eval_sft": 1, "rl": 3, "eval": 3,
                     "eval_summary": 3, "report": 1}
    for job, args in smoke_plan:
        opts = _opts(args)
        assert opts["-p"] == "cpu", (job.rule, args)
        assert not {"--gpus", "--gres", "--cpus-per-gpu"} & opts.keys(), (job.rule, args)
        assert opts["--cpus-per-task"] == str(job.threads)
        assert opts["--mem"] == str(job.resources["mem_mb"]) and opts["-t"] == str(job.resources["runtime"])


def _assert_gpu_request(job, args, nodes: int = 1, count: int = 4):
    opts = _opts(args)
    assert opts["-p"] == "gpu", (job.rule, args)
    assert opts["--cpus-per-gpu"] == "4", (job.rule, args)
    if nodes == 1:
        # One node: the plugin's --gpus=<model>:<count> from gpu=<count>, gpu_model="h200".
        assert opts.get("--gpus") == f"h200:{count}", (
            f"{job.rule}: expected --gpus=h200:{count} (resources gpu={count}, gpu_model='h200'), got: {args}")
        assert opts.get("--nodes", "1") == "1"
    else:
        # --gpus is a total for the whole job: N nodes x 4 H200 must be asked per node (--gres is per node).
        assert opts.get("--nodes") == str(nodes), (job.rule, args)
        assert opts.get("--gres") == f"gpu:h200:{count}" and "--gpus" not in opts, (
            f"{job.rule} on {nodes} nodes: expected --gres=gpu:h200:{count} per node (resources "
            f"gres='gpu:h200:{count}', nodes={nodes}, no gpu/gpu_model), got: {args}")


def _check_verl_plan(plan, rl_nodes: int = 1):
    """verl engine: sft, rl, eval, eval_sft ask for 4 H200 (rl on rl_nodes nodes) in the GPU partition; any
    other job asking for GPUs asks for H200 there too; every other job goes to the CPU partition."""
    assert {job.rule for job, _ in plan} >= GPU_RULES
    for job, args in plan:
        gpus = job.resources.get("gpu") or 0
        if job.rule in GPU_RULES:
            _assert_gpu_request(job, args, nodes=rl_nodes if job.rule == "rl" else 1)
        elif gpus:
            _assert_gpu_request(job, args, count=gpus)
        else:
            opts = _opts(args)
            assert opts["-p"] == "cpu" and "--gpus" not in opts and "--gres" not in opts, (job.rule, args)


def test_verl_plan_asks_for_four_h200_per_gpu_job(verl_1node_plan):
    rules = Counter(job.rule for job, _ in verl_1node_plan)
    # 2 experiments x 2 seeds; 2 eval splits.
    assert (rules["sft"], rules["rl"], rules["eval"], rules["eval_sft"]) == (1, 4, 8, 2)
    _check_verl_plan(verl_1node_plan)


def test_multi_node_rl_asks_for_four_h200_on_each_node(verl_2node_plan):
    _check_verl_plan(verl_2node_plan, rl_nodes=2)


@pytest.mark.parametrize("name", ["paper-qwen3-4b.yaml", "paper-qwen2.5-7b.yaml"])
def test_paper_config_plan(name):
    path = REPO / "config" / name
    if not path.is_file():
        pytest.skip(f"config/{name} does not exist yet")
    config = load_config(path)
    plan = ps.plan(path)
    _check_verl_plan(plan, rl_nodes=config["verl"]["nnodes"])
    # Every tool arm is also evaluated with SAAR at test time: the same 4 H200 per job as eval.
    saar_jobs = [(job, args) for job, args in plan if job.rule in ("eval_saar", "eval_sft_saar")]
    assert {job.rule for job, _ in saar_jobs} == {"eval_saar", "eval_sft_saar"}
    for job, args in saar_jobs:
        _assert_gpu_request(job, args)


@pytest.mark.parametrize("extra", ["--gres=gpu:h200:4", "--gpus=4", "--gpus h200:4"])
def test_plugin_refuses_gpu_flags_in_slurm_extra(extra):
    """Why the profile and rules express GPUs as gpu/gpu_model/gres resources, never inside slurm_extra."""
    job = ps.PlannedJob(rule="rl", threads=16, resources=ps.JobResources(
        gpu=4, gpu_model="h200", mem_mb=1000, runtime=10, slurm_extra=extra))
    with pytest.raises(WorkflowError, match="not allowed in the 'slurm_extra'"):
        ps.sbatch_args(job, ps.load_partitions("slurm"))


def test_shell_scripts_parse():
    for script in sorted(SCRIPTS.glob("*.sh")):
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script.name}: {proc.stderr}"


def _env_without_slurm() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CLEANER_RAY"))}


def test_ray_on_slurm_runs_the_command_directly_on_one_node(tmp_path):
    """Single-node runs skip Ray-on-SLURM: the command runs as is (exit status and stdout passed through)."""
    script = SCRIPTS / "ray_on_slurm.sh"
    proc = subprocess.run(["bash", str(script), "--", sys.executable, "-c", "import os, sys; print(os.environ.get("
                           "'RAY_ADDRESS', 'no-ray')); sys.exit(3)"],
                          capture_output=True, text=True, env=_env_without_slurm(), timeout=60)
    assert (proc.returncode, proc.stdout.strip()) == (3, "no-ray")


def test_ray_on_slurm_force_needs_an_allocation():
    env = _env_without_slurm() | {"CLEANER_RAY_ON_SLURM": "force"}
    proc = subprocess.run([str(SCRIPTS / "ray_on_slurm.sh"), "true"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 2
    assert "needs a SLURM allocation" in proc.stderr


def test_ray_on_slurm_usage_error():
    proc = subprocess.run([str(SCRIPTS / "ray_on_slurm.sh")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr


# -- Ray's CPUs and address under SLURM ---------------------------------------------------------------------
# Stand-ins for the SLURM CLI and the ray CLI (no SLURM here; the real ones run in e2e.sh): squeue / scontrol
# describe a 2-node allocation, srun runs its command on this host, `ray start` records its arguments and
# blocks until ray_on_slurm.sh stops it, `ray status` lists one node per `ray start` so far.
STAND_INS = {
    "squeue": 'echo "2 node[1-2]"\n',
    "scontrol": 'echo node1; echo node2\n',
    "srun": 'while [ $# -gt 0 ]; do case $1 in -w) shift 2 ;; -*) shift ;; *) break ;; esac; done\nexec "$@"\n',
    "ray": ('if [ "$1" = status ]; then echo Active:; sed "s/.*/ 1 node_x/" "$RAY_LOG" 2>/dev/null; '
            'echo Pending:; exit 0; fi\n'     # a node is up once its `ray start` ran
            'echo "$*" >> "$RAY_LOG"\nexec sleep 300\n'),
}


def _ray_on_slurm(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in STAND_INS.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body)
        (bin_dir / name).chmod(0o755)
    ray_log = tmp_path / "ray_starts.log"
    ray_log.unlink(missing_ok=True)
    full_env = _env_without_slurm() | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "7",
                                       "RAY": str(bin_dir / "ray"), "RAY_LOG": str(ray_log)} | env
    cmd = [str(SCRIPTS / "ray_on_slurm.sh"), "bash", "-c", 'echo "$RAY_ADDRESS"; exit 4']
    # 60 s: a Ray step left running after the script exits holds stderr open, and this times out.
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=60)
    return proc, sorted(ray_log.read_text().splitlines()) if ray_log.exists() else []


def test_ray_on_slurm_gives_ray_the_jobs_cpus_and_the_loopback_address(tmp_path):
    proc, starts = _ray_on_slurm(tmp_path, SLURM_CPUS_PER_TASK="12", SLURM_CPUS_ON_NODE="16",
                                 CLEANER_RAY_NODE_IP="127.0.0.2")
    assert proc.returncode == 4 and proc.stdout.strip() == "127.0.0.2:6379", proc.stderr   # the command's own
    [head] = [line for line in starts if "--head" in line]
    [worker] = [line for line in starts if "--address" in line]
    assert "--node-ip-address=127.0.0.2" in head and "--num-cpus=12" in head
    assert "--address=127.0.0.2:6379" in worker and "--node-ip-address=127.0.0.2" in worker
    assert "--num-cpus=12" in worker


def test_ray_on_slurm_falls_back_to_the_cpus_on_the_node_and_the_heads_address(tmp_path):
    proc, starts = _ray_on_slurm(tmp_path, SLURM_CPUS_ON_NODE="16")
    head_ip = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()[0]
    assert proc.returncode == 4 and proc.stdout.strip() == f"{head_ip}:6379", proc.stderr
    assert all("--num-cpus=16" in line for line in starts) and len(starts) == 2
    assert not any("--node-ip-address" in line for line in starts if "--head" not in line)


def test_ray_on_slurm_refuses_an_address_ray_would_rewrite(tmp_path):
    proc, starts = _ray_on_slurm(tmp_path, CLEANER_RAY_NODE_IP="127.0.0.1")
    assert proc.returncode == 2 and "use another loopback address such as 127.0.0.2" in proc.stderr
    assert starts == []


@pytest.mark.parametrize("nnodes, expected", [(1, 16), (2, None)])
def test_single_node_ray_gets_the_jobs_cpus(nnodes, expected, tmp_path, monkeypatch):
    """verl's main_ppo passes ray_kwargs.ray_init to ray.init (resolved there, in the job): the job's CPUs on one
    node; on several nodes nothing (ray_on_slurm.sh's `ray start --num-cpus` has set them, and ray.init refuses
    num_cpus when it joins a cluster)."""
    from omegaconf import OmegaConf

    from cleaner.engines.verl.overrides import build_ppo_overrides, compose_ppo_config

    cfg = load_config(REPO / "config" / "paper-qwen3-4b.yaml")
    cfg["verl"]["nnodes"] = nnodes
    experiment = next(iter(cfg["experiments"]))
    config = compose_ppo_config(build_ppo_overrides(cfg, experiment, train_files=["/d/train.parquet"],
                                                    val_files=["/d/val.parquet"], output_dir=tmp_path,
                                                    model_path="/models/sft"))
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "16")

    def ray_init_num_cpus():   # verl/trainer/main_ppo.py run_ppo, as it builds ray.init's arguments
        ray_init_kwargs = config.ray_kwargs.get("ray_init", {})
        return OmegaConf.to_container(OmegaConf.create({**ray_init_kwargs, "runtime_env": {}}))["num_cpus"]

    assert ray_init_num_cpus() == expected
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "12")
    assert ray_init_num_cpus() == (12 if expected else None)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    monkeypatch.delenv("SLURM_CPUS_ON_NODE")
    assert ray_init_num_cpus() is None   # outside SLURM: Ray counts the machine's CPUs, as before


@pytest.mark.slurm
@pytest.mark.timeout(1800)
def test_real_cluster_end_to_end(tmp_path):
    """scripts/slurm/e2e.sh: real slurmctld + slurmd, the smoke DAG as SLURM jobs, GPU and Ray checks."""
    if os.environ.get("CLEANER_SLURM_E2E") != "1":
        pytest.skip("real SLURM run: set CLEANER_SLURM_E2E=1 (root, installs slurm-wlm with apt-get)")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM daemons run as root")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("no slurmctld and no apt-get to install it")
    proc = subprocess.run(["timeout", "-k", "30", "1500", str(SCRIPTS / "e2e.sh"), str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert re.search(r"smoke: \d+ SLURM jobs, all in partition cpu", proc.stderr)
    assert "ray_2node.json: Ray at" in proc.stderr
