"""``cleaner status [RESULTS_DIR]``: one table of every job of a run, read from the files the jobs write.

A job is a ``logs/<stage>/<job>.log`` or ``benchmarks/<stage>/<job>.tsv`` under ``results/<config name>/`` (every
rule writes both: the log while it runs, the benchmark when it ends). For each job:

- state: ``done`` (benchmark written after the log), ``failed`` (no benchmark and the log ends in an error),
  ``running`` otherwise (a job killed without a trace, e.g. by SLURM's OOM killer, also reads ``running``: the
  age of its last log write, column ``last write``, tells);
- step / total, latest reward and accuracy: the embedded RL trainer's ``<exp>/seed<k>/rl/metrics.jsonl`` (total
  from ``rl/config.json``); verl's console lines (``step:N - key:value - ...``, total from the run's
  ``overrides.txt``); else the last tqdm progress bar in the log (SFT, eval, data);
- elapsed: the benchmark's wall time when done; else the trainer's own clock (metrics; verl: steps x mean
  ``timing_s/step``) or tqdm's; estimated time left: the mean of the last 10 step times x the steps left
  (tqdm's estimate otherwise).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = ["JobStatus", "collect_status", "format_table", "find_runs"]

ERROR_PATTERNS = re.compile(r"Traceback \(most recent call last\)|\berror\b|\bKilled\b|CANCELLED|DUE TO TIME LIMIT"
                            r"|out of memory", re.I)
# A tqdm bar: "desc:  45%|####      | 9/20 [00:09<00:11, ...]" -> desc, step, total, elapsed, left.
TQDM = re.compile(r"^(?P<desc>[^|\n]*?):?\s*\d+%\|[^|\n]*\| *(\d+)/(\d+) "
                  r"\[(\d+(?::\d+){1,2})<(\d+(?::\d+){1,2}|\?)", re.M)
# Progress bars of libraries (transformers' weight loading and saving, datasets' map): not the job's own.
LIBRARY_BARS = ("Writing model shards", "Loading", "Fetching", "Downloading", "Map", "Generating", "Saving",
                "Filter", "Resolving", "Processing")
VERL_STEP = re.compile(r"(?:^|\s)step:(\d+) - (.*)$")
RL_JOB = re.compile(r"(?P<exp>.+)_seed(?P<seed>\d+)$")


@dataclass
class JobStatus:
    """Where one job stands; None where the job's files do not say."""

    run: str
    stage: str
    job: str
    state: str
    step: int | None = None
    total: int | None = None
    reward: float | None = None
    acc: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    last_write_s: float | None = None


# ------------------------------------------------------------------------------------------------ discovery


def find_runs(path: Path) -> list[Path]:
    """``path`` itself when it is one run (results/<name> with logs/ or benchmarks/), else its runs."""
    if (path / "logs").is_dir() or (path / "benchmarks").is_dir():
        return [path]
    runs = sorted(p for p in path.iterdir() if p.is_dir() and ((p / "logs").is_dir() or (p / "benchmarks").is_dir()))
    if not runs:
        raise FileNotFoundError(f"{path}: no run here (expected results/<name>/logs or benchmarks, "
                                "or a folder of them)")
    return runs


def _jobs(run: Path) -> list[tuple[str, str]]:
    found = {(p.parent.name, p.stem) for p in (run / "logs").glob("*/*.log")}
    found |= {(p.parent.name, p.stem) for p in (run / "benchmarks").glob("*/*.tsv")}
    return sorted(found, key=lambda sj: (_STAGE_ORDER.get(sj[0], 99), sj[0], sj[1]))


_STAGE_ORDER = {"data": 0, "model": 1, "sft": 2, "rl": 3, "eval": 4, "lm_eval": 5, "report": 6}


# ------------------------------------------------------------------------------------------------ readers


def _tail(path: Path, size: int = 16_384) -> str:
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - size))
        return fh.read().decode("utf-8", errors="replace")


def _benchmark_seconds(path: Path) -> float | None:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if len(lines) < 2:
        return None
    header, last = lines[0].split("\t"), lines[-1].split("\t")
    try:
        return float(last[header.index("s")])
    except (ValueError, IndexError):
        return None


def _clock(text: str) -> float | None:
    if text == "?":
        return None
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def _state(log: Path, bench: Path) -> str:
    if bench.exists() and (not log.exists() or log.stat().st_mtime <= bench.stat().st_mtime + 1.0):
        return "done"
    if log.exists():
        last_lines = _tail(log, 4096).replace("\r", "\n").strip().splitlines()[-15:]
        if any(ERROR_PATTERNS.search(line) for line in last_lines):
            return "failed"
    return "running"


def _from_tqdm(text: str) -> dict[str, Any]:
    matches = [m for m in TQDM.findall(text.replace("\r", "\n")) if not m[0].strip().startswith(LIBRARY_BARS)]
    if not matches:
        return {}
    _, step, total, elapsed, eta = matches[-1]
    return {"step": int(step), "total": int(total), "elapsed_s": _clock(elapsed), "eta_s": _clock(eta)}


def _eta(step: int | None, total: int | None, step_times: Sequence[float]) -> float | None:
    if step is None or total is None or not step_times:
        return None
    recent = list(step_times)[-10:]
    return max(0, total - step) * sum(recent) / len(recent)


def _from_metrics(rl_dir: Path) -> dict[str, Any]:
    """The embedded trainer's metrics.jsonl (one row per step; step 0 is the first validation only)."""
    rows = []
    for line in (rl_dir / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    steps = [r for r in rows if r.get("step", 0) >= 1 and "reward" in r]
    total = None
    if (rl_dir / "config.json").exists():
        total = int(json.loads((rl_dir / "config.json").read_text())["rl"]["steps"])
    if not steps:
        return {"step": 0, "total": total}
    last = steps[-1]
    step_times = [float(r["step_time_s"]) for r in steps if r.get("step_time_s") is not None]
    return {"step": int(last["step"]), "total": total, "reward": last.get("reward"), "acc": last.get("acc"),
            "elapsed_s": last.get("elapsed_s"), "eta_s": _eta(int(last["step"]), total, step_times)}


def _verl_total(run_dir: Path) -> int | None:
    overrides = run_dir / "overrides.txt"
    if overrides.exists():
        m = re.search(r"^trainer\.total_training_steps=(\d+)", overrides.read_text(), re.M)
        if m:
            return int(m.group(1))
    return None


def _from_verl_log(text: str, run_dir: Path) -> dict[str, Any]:
    """verl's console logger: ``step:N - key:value - ...`` per training step."""
    steps: list[tuple[int, dict[str, float]]] = []
    for line in text.replace("\r", "\n").splitlines():
        m = VERL_STEP.search(line)
        if not m:
            continue
        values = {}
        for item in m.group(2).split(" - "):
            key, _, value = item.rpartition(":")
            try:
                values[key.strip()] = float(value)
            except ValueError:
                continue
        steps.append((int(m.group(1)), values))
    if not steps:
        return {}
    step, last = steps[-1]
    total = _verl_total(run_dir)
    times = [v["timing_s/step"] for _, v in steps if "timing_s/step" in v]
    acc_keys = [k for k in last if re.search(r"(^|/)acc(/mean)?$", k) and not k.startswith("val")]
    return {"step": step, "total": total, "reward": last.get("critic/rewards/mean", last.get("critic/score/mean")),
            "acc": last[acc_keys[0]] if acc_keys else None,
            # the log is read from its tail: step x mean step time, not the sum of the steps it still shows
            "elapsed_s": step * sum(times) / len(times) if times else None,
            "eta_s": _eta(step, total, times)}


# ------------------------------------------------------------------------------------------------ status


def job_status(run: Path, stage: str, job: str, now: float | None = None) -> JobStatus:
    now = time.time() if now is None else now
    log, bench = run / "logs" / stage / f"{job}.log", run / "benchmarks" / stage / f"{job}.tsv"
    status = JobStatus(run=run.name, stage=stage, job=job, state=_state(log, bench))
    text = _tail(log, 1_000_000) if log.exists() else ""
    progress: dict[str, Any] = {}
    rl = RL_JOB.match(job)
    if stage == "rl" and rl:
        rl_dir = run / rl["exp"] / f"seed{rl['seed']}" / "rl"
        if (rl_dir / "metrics.jsonl").exists():
            progress = _from_metrics(rl_dir)
        else:
            progress = _from_verl_log(text, rl_dir / "run")
    progress = {**_from_tqdm(text), **{k: v for k, v in progress.items() if v is not None}}
    for key, value in progress.items():
        setattr(status, key, value)
    if status.state == "done":
        status.elapsed_s = _benchmark_seconds(bench) or status.elapsed_s
        status.eta_s = 0.0
        if status.total is not None:
            status.step = status.step if status.step is not None else status.total
    if log.exists():
        status.last_write_s = max(0.0, now - log.stat().st_mtime)
    return status


def collect_status(path: str | Path, now: float | None = None) -> list[JobStatus]:
    """Every job of the run at ``path`` (or of every run under it)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"results directory not found: {path}")
    return [job_status(run, stage, job, now) for run in find_runs(path) for stage, job in _jobs(run)]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s >= 86_400:
        return f"{s // 86_400}d{s % 86_400 // 3600:02d}h"
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def format_table(jobs: Sequence[JobStatus]) -> str:
    """A plain-text table, one line per job, plus a count per state."""
    headers = ["run", "stage", "job", "state", "step/total", "reward", "acc", "elapsed", "left", "last write"]
    rows = [[j.run, j.stage, j.job, j.state,
             "-" if j.step is None else f"{j.step}/{j.total if j.total is not None else '?'}",
             _num(j.reward), _num(j.acc), _duration(j.elapsed_s), _duration(j.eta_s),
             "-" if j.last_write_s is None else _duration(j.last_write_s) + " ago"] for j in jobs]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [headers, *rows]]
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.state] = counts.get(j.state, 0) + 1
    lines.append(f"{len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines)
