#!/usr/bin/env python
"""Show the ``sbatch`` request of every job a ``--profile slurm`` run would submit, without submitting.

    .venv/bin/python scripts/slurm/plan_sbatch.py --configfile config/paper-qwen3-4b.yaml
    .venv/bin/python scripts/slurm/plan_sbatch.py --configfile ... --test-only   # ask slurmctld, run nothing

It plans the DAG with ``snakemake -n --profile <profile>`` (the real CLI, so the profile, the workflow profile
and the rules' resources are resolved exactly as in a real run), then builds each job's sbatch arguments with
snakemake-executor-plugin-slurm's own functions: ``get_submit_command`` (time, memory, nodes, CPUs),
``set_gres_string`` (``--gpus=<model>:<n>`` / ``--gres``), ``validate_slurm_extra`` and the partition
auto-selection from the profile's ``slurm-partition-config`` (``get_best_partition``). Only the parts of the
call that depend on the run (job name, log path, ``--wrap``) are left out.

``--test-only`` passes every distinct request to ``sbatch --test-only``: slurmctld checks that a node and
partition could ever satisfy it (``Requested node configuration is not available`` otherwise) and nothing runs.
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
_RULE_RE = re.compile(r"^(?:local)?rule (\w+):$")
_FIELD_RE = re.compile(r"^    (\w+): (.*)$")


class JobResources(dict):
    """A job's resources with both access styles the plugin uses (``.get("gpu")`` and ``.runtime``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class PlannedJob:
    """One job of a dry run: what the SLURM plugin reads from a Snakemake job."""

    rule: str
    threads: int
    resources: JobResources
    wildcards: dict[str, str] = field(default_factory=dict)
    local: bool = False

    @property
    def name(self) -> str:
        return self.rule

    def is_group(self) -> bool:
        return False


def _parse_value(text: str) -> int | str:
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def parse_dry_run(text: str) -> list[PlannedJob]:
    """Parse the job blocks (``rule x:`` + indented fields) that ``snakemake -n`` prints."""
    jobs: list[PlannedJob] = []
    current: PlannedJob | None = None
    for line in text.splitlines():
        m = _RULE_RE.match(line)
        if m:
            current = PlannedJob(rule=m.group(1), threads=1, resources=JobResources(),
                                 local=line.startswith("localrule"))
            jobs.append(current)
            continue
        if current is None:
            continue
        f = _FIELD_RE.match(line)
        if not f:
            if not line.startswith("    "):
                current = None
            continue
        key, value = f.groups()
        if key == "threads":
            current.threads = int(value)
        elif key == "resources":
            for item in value.split(", "):
                name, _, raw = item.partition("=")
                current.resources[name] = _parse_value(raw)
        elif key == "wildcards":
            current.wildcards = dict(item.split("=", 1) for item in value.split(", "))
    return jobs


def dry_run(configfile: Path, profile: str = "slurm", workdir: Path | None = None,
            extra_args: tuple[str, ...] = (), timeout_s: float = 300) -> list[PlannedJob]:
    """Plan every job of ``configfile`` with ``snakemake -n --profile <profile>`` from the repository root.

    ``workdir`` (default: a fresh temporary directory) gets the ``results/`` of the plan, so jobs whose outputs
    already exist in the checkout are planned too. Raises RuntimeError with Snakemake's output on failure
    (missing inputs, invalid config, bad profile).
    """
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "snakemake", "-n", "--profile", profile,
               "--configfile", str(Path(configfile).resolve()), "-d", str(workdir or tmp), *extra_args]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake dry run failed ({shlex.join(cmd)}):\n{out[-4000:]}")
    return parse_dry_run(out)


def profile_settings(profile: str = "slurm") -> dict[str, Any]:
    """The profile's config.yaml as a mapping (``profile`` is a directory relative to the repository)."""
    return yaml.safe_load((REPO / profile / "config.yaml").read_text())


def load_partitions(profile: str = "slurm") -> list[Any]:
    """The partitions of the profile's ``slurm-partition-config``, read by the plugin's own reader."""
    from snakemake_executor_plugin_slurm.partitions import read_partition_file

    path = profile_settings(profile).get("slurm-partition-config")
    if not path:
        raise ValueError(f"{profile}/config.yaml sets no slurm-partition-config")
    return read_partition_file(REPO / profile / path)


def sbatch_args(job: PlannedJob, partitions: list[Any]) -> str:
    """The sbatch options the plugin would use for ``job`` (``Executor.run_job`` minus name, log and wrap)."""
    from snakemake_executor_plugin_slurm.partitions import get_best_partition
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    validate_slurm_extra(job)
    partition = job.resources.get("slurm_partition") or get_best_partition(
        partitions, job, logging.getLogger("plan_sbatch"))
    account = job.resources.get("slurm_account")
    params = {
        "run_uuid": "RUN",
        "slurm_logfile": "LOG",
        "comment_str": f"rule_{job.rule}",
        "account": f" -A {shlex.quote(str(account))}" if account else "",
        "partition": f" -p {shlex.quote(str(partition))}" if partition else "",
        "workdir": None,
    }
    call = get_submit_command(job, params) + set_gres_string(job)
    head = "sbatch --parsable --job-name RUN --output LOG --export=ALL --comment "
    return call.removeprefix(head).split(" ", 1)[1].strip()


def plan(configfile: Path, profile: str = "slurm") -> list[tuple[PlannedJob, str]]:
    """Every submitted job of the plan (target rules without a command stay local) with its sbatch options."""
    partitions = load_partitions(profile)
    jobs = [j for j in dry_run(configfile, profile) if not j.local and j.rule != "all"]
    return [(job, sbatch_args(job, partitions)) for job in jobs]


def test_only(args: str) -> subprocess.CompletedProcess[str]:
    """``sbatch --test-only`` for one request: slurmctld's verdict, no job is queued."""
    return subprocess.run(["sbatch", "--test-only", *shlex.split(args), "--wrap", "true"],
                          capture_output=True, text=True, timeout=60)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configfile", required=True, type=Path)
    ap.add_argument("--profile", default="slurm", help="profile directory relative to the repository")
    ap.add_argument("--test-only", action="store_true", help="check every request with sbatch --test-only")
    ns = ap.parse_args(argv)
    planned = plan(ns.configfile, ns.profile)
    for job, args in planned:
        wc = ",".join(f"{k}={v}" for k, v in job.wildcards.items())
        print(f"{job.rule}{'[' + wc + ']' if wc else ''}: sbatch {args}")
    if ns.test_only:
        failed = 0
        for args in sorted({a for _, a in planned}):
            proc = test_only(args)
            verdict = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            ok = proc.returncode == 0
            failed += not ok
            print(f"{'ok ' if ok else 'REJECTED'} sbatch --test-only {args}: {verdict[0]}")
        if failed:
            print(f"{failed} request(s) rejected by slurmctld", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
