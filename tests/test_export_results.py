"""scripts/export_results.py: the committed bundle holds what the report needs (and no text), reports the same
numbers as the full results directory, lists the runs still missing, and is additive."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

from report_fixtures import synthetic_config, write_results

ROOT = Path(__file__).resolve().parents[1]


def _export(cfg_path: Path, results: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "export_results.py"), "--config", str(cfg_path),
                           "--results", str(results), "--out", str(out)], capture_output=True, text=True, timeout=300)


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def test_bundle_reports_the_same_numbers_without_text_and_lists_missing_runs(tmp_path):
    from cleaner.config import load_config
    from cleaner.report import build_report

    cfg, cfg_path = synthetic_config(tmp_path, regime="paper")
    results = tmp_path / "results"
    write_results(results)
    write_results(results, regime="paper", acc_shift=0.1)
    traj = results / "cleaner" / "seed0" / "eval" / "test.trajectories.jsonl"
    recs = [json.loads(line) for line in traj.read_text().splitlines()]
    traj.write_text("".join(json.dumps({**r, "messages": [{"role": "assistant", "content": "x" * 500}]}) + "\n"
                            for r in recs))
    held = tmp_path / "held"  # paper_cleaner seed2 has not finished yet
    shutil.move(str(results / "paper_cleaner" / "seed2"), held)

    out = tmp_path / "bundle"
    proc = _export(cfg_path, results, out)
    assert proc.returncode == 0, proc.stderr
    runs = out / "runs"
    assert (runs / "cleaner" / "seed0" / "rl" / "metrics.jsonl").is_file()
    assert (runs / "regimes" / "paper" / "sft" / "eval_saar" / "test.trajectories.jsonl").is_file()
    exported = [json.loads(line) for line in (runs / "cleaner" / "seed0" / "eval" / "test.trajectories.jsonl")
                .read_text().splitlines()]
    assert len(exported) == len(recs) and "messages" not in exported[0] and exported[0]["stats"] == recs[0]["stats"]
    assert (out / "MISSING.txt").read_text() == "paper_cleaner/seed2\n"
    assert (out / "index.html").is_file() and (out / "training_curves.png").is_file()

    # the report over the bundle = the report over the full results (same runs)
    build_report(load_config(cfg_path), results, tmp_path / "full", config_path=cfg_path)
    assert _csv(out / "final_metrics.csv") == _csv(tmp_path / "full" / "final_metrics.csv")
    assert (out / "final_metrics.md").read_text() == (tmp_path / "full" / "final_metrics.md").read_text()

    # additive: the run that finishes later joins, nothing already exported is lost
    shutil.move(str(held), results / "paper_cleaner" / "seed2")
    shutil.rmtree(results / "baseline" / "seed1")  # e.g. the results of an earlier machine are gone
    proc = _export(cfg_path, results, out)
    assert proc.returncode == 0, proc.stderr
    assert (runs / "paper_cleaner" / "seed2" / "eval" / "test.json").is_file()
    assert (runs / "baseline" / "seed1" / "eval" / "test.json").is_file()
    seeds = {(r["experiment"], r["seed"]) for r in _csv(out / "final_metrics.csv")}
    assert ("paper_cleaner", "2") in seeds and ("baseline", "1") in seeds
    # a run already in the bundle is not missing, even when this machine's results no longer hold it
    assert (out / "MISSING.txt").read_text().startswith("none")


def test_nothing_finished_builds_no_report(tmp_path):
    _, cfg_path = synthetic_config(tmp_path)
    (tmp_path / "results").mkdir()
    proc = _export(cfg_path, tmp_path / "results", tmp_path / "bundle")
    assert proc.returncode == 1 and "no finished experiment run" in proc.stderr
    assert not (tmp_path / "bundle" / "index.html").exists()
