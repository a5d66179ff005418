"""The Snakemake pipeline: lint, a dry run of every config, and a real run of the smoke config in a scratch copy
of the workflow, including an RL job killed with SIGKILL and resumed from its last checkpoint."""

from __future__ import annotations

import importlib.util
import json
import os
import re
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


PAPER_CONFIGS = ("paper-qwen3-4b.yaml", "paper-qwen2.5-7b.yaml")


def _job_stats(text: str) -> dict[str, int]:
    """The "Job stats" table of a dry run: {rule: count}."""
    table = text.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    rows = [line.split() for line in table.splitlines()[3:]]
    return {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[0] != "total"}


@pytest.mark.parametrize("config", PAPER_CONFIGS)
def test_paper_smoke_plans_every_gpu_stage_small(config):
    """paper_smoke: SFT, (7B) difficulty rollouts, one RL run per arm, one eval per benchmark, all --smoke."""
    out = _run(["-n", "paper_smoke", "--configfile", f"config/{config}"], ROOT, timeout=300)
    stats = _job_stats(out.stdout)
    assert stats["smoke_sft"] == 1 and stats["smoke_rl"] == 3 and stats["smoke_eval"] == 4, stats
    assert ("smoke_difficulty" in stats) == ("7b" in config)
    assert not {"sft", "rl", "eval", "eval_sft", "difficulty_rollouts"} & set(stats)  # nothing at full scale
    commands = [line for line in out.stdout.splitlines() if "verl overrides" in line]
    assert len(commands) == sum(v for k, v in stats.items() if k.startswith("smoke_"))
    assert all("--smoke" in line for line in commands)
    for exp in ("tools_baseline", "cleaner", "notool"):
        assert f"paper_smoke/{exp}/rl/final" in out.stdout
    # Every verl eval call says its test-time SAAR: on for the benchmarks (the paper configs evaluate with it),
    # off for the difficulty rollouts.
    evals = [line for line in commands if "--stage eval" in line]
    assert evals and all("--saar " in line for line in evals)
    assert sum("--saar on" in line for line in evals) == stats["smoke_eval"]


@pytest.mark.parametrize("config", PAPER_CONFIGS)
def test_paper_configs_evaluate_every_tool_arm_both_ways(config):
    """eval/ (SAAR off) and eval_saar/ (SAAR on) for every run of a tool arm and for the SFT model, on every
    benchmark; the no-tool arm only in eval/; no separate SAAR-at-test-time experiment."""
    from cleaner.config import load_config, resolve_experiment

    cfg = load_config(ROOT / "config" / config)
    assert "cleaner_saar_eval" not in cfg["experiments"]
    tool_arms = [e for e in cfg["experiments"] if resolve_experiment(cfg, e)["rollout"]["tools_enabled"]]
    splits = cfg["eval"]["splits"]
    out = _run(["-n", "-p", "all", "--configfile", f"config/{config}"], ROOT, timeout=600)
    stats = _job_stats(out.stdout)
    assert stats["eval"] == len(cfg["experiments"]) * len(splits)
    assert stats["eval_saar"] == len(tool_arms) * len(splits) and stats["eval_saar_summary"] == len(tool_arms)
    assert stats["eval_sft"] == stats["eval_sft_saar"] == len(splits)
    name = cfg["name"]
    for exp in tool_arms:
        assert f"results/{name}/{exp}/seed0/eval_saar.json" in out.stdout, exp
    assert f"results/{name}/notool/seed0/eval_saar" not in out.stdout
    commands = [line for line in out.stdout.splitlines() if "verl overrides" in line and "--stage eval" in line]
    saar_on = [line for line in commands if "--saar on" in line]
    assert len(saar_on) == stats["eval_saar"] + stats["eval_sft_saar"]
    assert all("/eval_saar/" in line for line in saar_on)
    assert all("--saar off" in line for line in commands if line not in saar_on)


def _paper_workflow(tmp_path: Path, config: str) -> Path:
    wd = tmp_path / "wf"
    wd.mkdir()
    for name in ("Snakefile", "rules", "envs", "profiles"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, wd / name)
    (wd / "src").symlink_to(ROOT / "src")
    (wd / "config").mkdir()
    shutil.copy(ROOT / "config" / config, wd / "config" / config)
    (wd / "config" / "schema.yaml").symlink_to(ROOT / "src" / "cleaner" / "schema" / "config.schema.yaml")
    return wd


@pytest.mark.skipif(importlib.util.find_spec("sglang") is not None, reason="this environment can run the GPU jobs")
def test_gpu_jobs_without_their_environment_stop_before_any_job(tmp_path):
    """Without --sdm conda/apptainer the GPU rules would run in this (CPU) venv: refused at start, nothing runs."""
    wd = _paper_workflow(tmp_path, "paper-qwen3-4b.yaml")
    args = ["--cores", "1", "paper_smoke", "--configfile", "config/paper-qwen3-4b.yaml"]
    out = _run(args, wd, check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "lacks 'sglang'" in text and "--sdm conda" in text, text[-2000:]
    assert not (wd / "results").exists()  # no job ran, not even the CPU data jobs
    out = _run(args + ["--sdm", "apptainer"], wd, check=False)
    assert out.returncode != 0 and "needs verl.container" in out.stdout + out.stderr
    # A dry run still plans (CI and scripts/slurm/plan_sbatch.py dry-run the paper configs without --sdm).
    assert _run(["-n"] + args, wd).returncode == 0


def test_rl_jobs_resubmit_with_the_site_walltime():
    """verl RL jobs: sbatch -t from verl.rl_job_hours and Snakemake retries from verl.rl_job_retries."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    for config in PAPER_CONFIGS:
        cfg = yaml.safe_load((ROOT / "config" / config).read_text())
        with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
            wf = api.workflow(resource_settings=ResourceSettings(cores=1),
                              config_settings=ConfigSettings(configfiles=[ROOT / "config" / config]),
                              snakefile=ROOT / "Snakefile", workdir=ROOT)
            rule = wf._workflow.get_rule("rl")
            assert rule._restart_times == cfg["verl"]["rl_job_retries"] > 0
            assert rule.resources["runtime"] == cfg["verl"]["rl_job_hours"] * 60


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


@pytest.fixture(scope="module")
def smoke_run(workdir) -> Path:
    """The whole smoke DAG, run once for this module (after the resume test, which needs it unfinished)."""
    out = _run(["--cores", "2"], workdir, timeout=1200)
    (workdir / "smoke_run.out").write_text(out.stdout + out.stderr)
    return workdir / "results" / "smoke"


@pytest.mark.slow
def test_smoke_pipeline_runs_end_to_end(workdir, smoke_run):
    res = smoke_run
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
    # onstart printed the expected wall time of the jobs it was about to run (the resume test ran some already)
    assert re.search(r"expected wall time on 2 cores .*: \d+\.\d\d h \(", (workdir / "smoke_run.out").read_text())
    # Nothing left to do: the DAG is complete and up to date.
    again = _run(["-n", "--cores", "2"], workdir)
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_smoke_report_page_in_browser(smoke_run):
    """index.html of the smoke run in headless Chromium: no console errors, figures decoded, the tables' numbers
    equal final_metrics.csv; the screenshot stays with the run's outputs (report/index.png)."""
    from report_browser import check_report_page

    report = smoke_run / "report"
    checked = check_report_page(report, report / "index.png")
    assert checked["images"] == 2 and checked["tables"] == 1
    assert checked["cells_checked"] >= 4 * 5  # baseline, cleaner, notool, resume_probe, sft: Pass@1, Pass@k, ...
    assert "Paired differences to the control" in checked["text"]
    assert "Wall time per stage" in checked["text"]


@pytest.mark.slow
def test_snakemake_report_zip(workdir, smoke_run):
    """`snakemake --report report.zip`: the outputs marked report() with their rendered captions and categories."""
    import zipfile

    _run(["--report", "report.zip"], workdir, timeout=300)
    archive = zipfile.ZipFile(workdir / "report.zip")
    files = [Path(n).name for n in archive.namelist() if "/data/raw/" in n]  # stored under content hashes
    assert sorted(f for f in files if not f.endswith(".json")) == ["final_metrics.csv", "index.html",
                                                                   "training_curves.png"]
    assert files.count("test.json") == 5  # eval: baseline, cleaner, notool, resume_probe, sft (start)
    assert files.count("summary.json") == 4  # one per RL run
    page = archive.read("report/report.html").decode()
    for text in ("1. Report", "2. RL", "3. Evaluation", "self-contained (figures inline)",
                 'RL run of <tt class=\\"docutils literal\\">cleaner</tt>'):
        assert text in page, text


@pytest.mark.slow
def test_status_of_the_smoke_run(smoke_run):
    from cleaner.status import collect_status

    jobs = {(j.stage, j.job): j for j in collect_status(smoke_run)}
    assert {j.state for j in jobs.values()} == {"done"}
    for exp, steps in (("baseline", 2), ("cleaner", 2), ("notool", 1), ("resume_probe", 10)):
        rl = jobs[("rl", f"{exp}_seed0")]
        assert (rl.step, rl.total) == (steps, steps), rl
        assert rl.reward is not None and rl.acc is not None and rl.elapsed_s > 0
    assert (jobs[("sft", "sft")].step, jobs[("sft", "sft")].total) == (20, 20)
    assert ("report", "report") in jobs and ("eval", "cleaner_seed0_test") in jobs


def test_ablation_config_plans_both_regimes_and_both_saar_modes():
    """config/testbed-ablations.yaml: 6 arms x 2 regimes x 3 seeds, each run evaluated with SAAR off and on,
    the paper regime on its own data and SFT branch."""
    # --forceall: the plan of the whole grid, whatever results/testbed-ablations/ already holds in this checkout
    out = _run(["-n", "--forceall", "--configfile", "config/testbed-ablations.yaml"], ROOT, timeout=300)
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
