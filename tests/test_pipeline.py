"""The Snakemake pipeline: lint, a dry run of every config, and a real run of the smoke config in a scratch copy
of the workflow, including an RL job killed with SIGKILL and resumed from its last checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
CONFIGS = sorted(p.name for p in (ROOT / "config").glob("*.yaml") if p.name != "schema.yaml")


def _run(args, cwd, timeout=600, check=True):
    proc = subprocess.run(SNAKEMAKE + args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def test_lint_is_clean():
    out = _run(["--lint"], ROOT)
    assert "Congratulations, your workflow is in a good condition" in out.stdout + out.stderr


@pytest.mark.parametrize("config", CONFIGS)
def test_dry_run_plans_every_config(config):
    out = _run(["-n", "--configfile", f"config/{config}"], ROOT, timeout=300)
    text = out.stdout + out.stderr
    assert "Job stats" in text or "Nothing to be done" in text
    assert "MissingInputException" not in text


def test_bad_config_fails_before_any_job(tmp_path):
    bad = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    bad["rl"]["clip_ratio_c"] = 0.5
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    out = _run(["-n", "--configfile", str(tmp_path / "bad.yaml")], ROOT, check=False)
    assert out.returncode != 0
    assert "rl.clip_ratio_c" in out.stdout + out.stderr


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch copy of the workflow (results stay out of the checkout); the package is the installed one."""
    wd = tmp_path_factory.mktemp("workflow")
    for name in ("Snakefile", "rules", "envs", "profiles"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, wd / name)
    (wd / "src").symlink_to(ROOT / "src")
    (wd / "config").mkdir()
    shutil.copy(ROOT / "config" / "smoke.yaml", wd / "config" / "config.yaml")
    (wd / "config" / "schema.yaml").symlink_to(ROOT / "src" / "cleaner" / "schema" / "config.schema.yaml")
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    # An extra experiment whose RL runs long enough to be killed mid-way.
    cfg["experiments"]["resume_probe"] = {"saar": {"enabled": True}, "rl": {"steps": 10, "checkpoint_every": 1}}
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return wd


def _kill_tree(proc: subprocess.Popen, marker: str) -> None:
    import psutil

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for p in psutil.process_iter(["pid", "cmdline"]):  # jobs that left the process group, if any
        if marker in " ".join(p.info["cmdline"] or []) and p.pid != os.getpid():
            p.kill()


@pytest.mark.slow
def test_rl_killed_with_sigkill_resumes_from_last_checkpoint(workdir):
    rl_dir = workdir / "results" / "smoke" / "resume_probe" / "seed0" / "rl"
    target = str(rl_dir.relative_to(workdir) / "summary.json")
    proc = subprocess.Popen(SNAKEMAKE + ["--cores", "2", target], cwd=workdir, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (rl_dir / "checkpoints" / "step_2").exists():
        assert proc.poll() is None, "snakemake ended before the RL job wrote a checkpoint"
        assert time.time() < deadline, "no RL checkpoint within 10 minutes"
        time.sleep(0.05)
    _kill_tree(proc, str(workdir))
    assert not (rl_dir / "summary.json").exists(), "the RL job finished before it could be killed"
    _run(["--unlock"], workdir)
    _run(["--cores", "2", target], workdir)
    log = (workdir / "results" / "smoke" / "logs" / "rl" / "resume_probe_seed0.log").read_text()
    assert "resuming from checkpoint" in log
    resumed_at = int(log.split("(step ")[1].split(" ")[0])
    assert resumed_at >= 2
    steps = [json.loads(line)["step"] for line in (rl_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11)), steps
    assert json.loads((rl_dir / "summary.json").read_text())["complete"]


@pytest.mark.slow
def test_smoke_pipeline_runs_end_to_end(workdir):
    _run(["--cores", "2"], workdir, timeout=1200)
    res = workdir / "results" / "smoke"
    table = (res / "report" / "final_metrics.md").read_text()
    for exp in ("baseline", "cleaner", "notool", "resume_probe", "sft (start)"):
        assert f"| {exp} |" in table
    assert (res / "report" / "training_curves.png").stat().st_size > 10_000
    import csv

    rows = list(csv.DictReader((res / "report" / "final_metrics.csv").open()))
    assert {r["experiment"] for r in rows} >= {"baseline", "cleaner", "notool"}
    for rule in ("testbed_data", "sft", "rl", "eval", "report"):
        assert any((res / "benchmarks").rglob("*.tsv")), rule
    assert (res / "logs" / "sft" / "sft.log").exists()
    # Nothing left to do: the DAG is complete and up to date.
    again = _run(["-n", "--cores", "2"], workdir)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_ablation_config_plans_both_regimes_and_both_saar_modes():
    """config/testbed-ablations.yaml: 6 arms x 2 regimes x 3 seeds, each run evaluated with SAAR off and on,
    the paper regime on its own data and SFT branch."""
    out = _run(["-n", "--configfile", "config/testbed-ablations.yaml"], ROOT, timeout=300)
    text = out.stdout + out.stderr
    counts = {}
    for line in text[text.index("Job stats"):].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    assert counts["rl"] == 36 and counts["eval"] == 36 and counts["eval_saar"] == 36
    for rule in ("testbed_data_regime", "model_init_regime", "sft_regime", "eval_sft_regime", "eval_sft_saar"):
        assert counts[rule] == 1, rule
    assert "--regime paper" in text or "regimes/paper/sft/final" in text
