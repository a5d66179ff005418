"""cleaner.estimate: the expected wall time printed before a run starts (onstart) and by estimate_wall_time.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from cleaner.config import load_config
from cleaner.estimate import DEFAULTS, plan_seconds, rl_run_seconds


@pytest.fixture(scope="module")
def cfg():
    return load_config(Path(__file__).resolve().parents[1] / "config" / "testbed-ablations.yaml")


def test_rl_seconds_follow_steps_and_the_extra_pass_of_multi_update_arms(cfg):
    from cleaner.config import resolve_experiment

    one = rl_run_seconds(resolve_experiment(cfg, "baseline"))
    four = rl_run_seconds(resolve_experiment(cfg, "baseline_4upd"))
    assert one == pytest.approx(120 * DEFAULTS["step_s"])
    assert four == pytest.approx(one * (1 + DEFAULTS["update_share"] / 3))


def test_plan_counts_only_the_jobs_given_and_shares_cores_for_one_thread_jobs(cfg):
    jobs = [("rl", {"exp": "baseline", "seed": "0"}), ("rl", {"exp": "cleaner", "seed": "0"}),
            ("eval", {"exp": "baseline", "seed": "0", "split": "test"}), ("eval_summary", {"exp": "baseline"}),
            ("sft_regime", {"regime": "paper"}), ("testbed_data", {}), ("report", {})]
    plan = plan_seconds(jobs, cfg, cores=2)
    assert plan["rl"] == pytest.approx(120 * DEFAULTS["step_s"])  # two runs side by side
    assert plan["eval"] == pytest.approx(DEFAULTS["eval_s"] / 2)  # summaries cost nothing
    assert plan["sft"] == DEFAULTS["sft_s"] and plan["data"] == DEFAULTS["data_s"]
    assert plan["total"] == pytest.approx(sum(v for k, v in plan.items() if k != "total"))
    assert plan_seconds([], cfg, cores=2)["total"] == 0  # a finished grid: nothing left
