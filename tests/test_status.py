"""cleaner status on a synthetic results directory: finished, running, failed and rerunning jobs of the embedded
and verl engines (verl's console lines written by verl's own formatter). The smoke run's status is checked in
tests/test_pipeline.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from report_fixtures import write_results

from cleaner.cli import main
from cleaner.status import collect_status, format_table

NOW = 2_000_000_000.0


def _touch(path: Path, mtime: float) -> None:
    os.utime(path, (mtime, mtime))


@pytest.fixture()
def run(tmp_path) -> Path:
    res = tmp_path / "results" / "synth"
    write_results(res)  # finished: sft, rl and eval of baseline/cleaner x 3 seeds (benchmarks + logs)
    for p in res.rglob("*"):
        if p.is_file():
            _touch(p, NOW - 600 + (10 if p.suffix == ".tsv" else 0))  # benchmarks written after their logs
    # A running embedded RL job: 3 of 10 steps, no benchmark yet.
    rl = res / "probe" / "seed0" / "rl"
    rl.mkdir(parents=True)
    rows = [{"step": 0, "val/pass@1": 0.1}] + [
        {"step": s, "reward": 0.1 * s, "acc": 0.2 * s, "step_time_s": 10.0 * s, "elapsed_s": 60.0} for s in (1, 2, 3)]
    (rl / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "rew')
    (rl / "config.json").write_text(json.dumps({"rl": {"steps": 10}}))
    log = res / "logs" / "rl" / "probe_seed0.log"
    log.write_text("rl:  30%|███       | 3/10 [01:00<02:20, 20.0s/it]")
    _touch(log, NOW - 5)
    # A failed eval job and a running SFT rerun (its log is newer than the old benchmark).
    (res / "logs" / "eval" / "probe_seed0_test.log").write_text(
        "eval test:  50%|█████     | 8/16 [00:04<00:04]\n"
        "Traceback (most recent call last):\n  ...\nValueError: bad\n")
    sft_log = res / "logs" / "sft" / "sft.log"
    sft_log.write_text("Loading weights: 100%|██████████| 291/291 [00:00<00:00]\n"
                       "sft:  45%|████▌     | 9/20 [00:09<00:11,  1.0s/it, loss=4.3]\r"
                       "Writing model shards: 100%|██████████| 1/1 [00:00<00:00]\n")
    _touch(sft_log, NOW - 1)
    return res


def _by_job(jobs):
    return {(j.stage, j.job): j for j in jobs}


def test_states_progress_and_time_left(run):
    jobs = _by_job(collect_status(run, now=NOW))
    done = jobs[("rl", "baseline_seed1")]
    assert (done.state, done.step, done.total, done.elapsed_s, done.eta_s) == ("done", 6, 6, 31.0, 0.0)
    probe = jobs[("rl", "probe_seed0")]
    assert (probe.state, probe.step, probe.total) == ("running", 3, 10)
    assert (probe.reward, probe.acc) == (pytest.approx(0.3), pytest.approx(0.6))  # the last complete row
    assert probe.elapsed_s == 60.0
    assert probe.eta_s == pytest.approx(7 * 20.0)  # 7 steps left x mean step time (10, 20, 30 s)
    assert probe.last_write_s == pytest.approx(5.0)
    failed = jobs[("eval", "probe_seed0_test")]
    assert (failed.state, failed.step, failed.total) == ("failed", 8, 16)
    sft = jobs[("sft", "sft")]  # rerunning: the job's own bar, not the libraries' (weights, shards)
    assert (sft.state, sft.step, sft.total, sft.eta_s) == ("running", 9, 20, 11.0)


def test_verl_rl_job_from_its_console_log(run):
    from verl.utils.logger.aggregate_logger import concat_dict_to_str

    lines = [concat_dict_to_str({"critic/rewards/mean": 0.1 * s, "critic/score/mean": 0.1 * s,
                                 "cleaner/acc/mean": 0.05 * s, "timing_s/step": 100.0 + s}, step=s) for s in (1, 2)]
    (run / "logs" / "rl" / "big_seed0.log").write_text("(TaskRunner pid=1) " + "\n(TaskRunner pid=1) ".join(lines))
    (run / "big" / "seed0" / "rl" / "run").mkdir(parents=True)
    (run / "big" / "seed0" / "rl" / "run" / "overrides.txt").write_text(
        "trainer.total_epochs=1\ntrainer.total_training_steps=235\n")
    job = _by_job(collect_status(run, now=NOW))[("rl", "big_seed0")]
    assert (job.state, job.step, job.total) == ("running", 2, 235)
    assert job.reward == pytest.approx(0.2) and job.acc == pytest.approx(0.1)
    assert job.eta_s == pytest.approx(233 * 101.5)


def test_cli_prints_one_line_per_job_and_json(run, capsys):
    assert main(["status", str(run.parent)]) == 0  # a folder of runs
    out = capsys.readouterr().out
    jobs = collect_status(run)
    assert len([line for line in out.splitlines() if line.startswith("synth ")]) == len(jobs)
    assert "probe_seed0" in out and "3/10" in out
    assert out.splitlines()[-1].startswith(f"{len(jobs)} jobs: ")
    assert main(["status", "--json", str(run)]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert {(j["stage"], j["job"]) for j in parsed} == {(j.stage, j.job) for j in jobs}


def test_missing_results_dir_is_a_clear_error(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert "results directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["status", str(tmp_path / "empty")]) == 2
    assert "no run here" in capsys.readouterr().err


def test_table_counts_states(run):
    table = format_table(collect_status(run, now=NOW))
    assert table.splitlines()[0].split()[:5] == ["run", "stage", "job", "state", "step/total"]
    assert "1 failed" in table and "2 running" in table
