"""cleaner.report on a synthetic results directory: the page's sections, its numbers against cleaner.stats computed
independently from the files, the paper's numbers, test-time SAAR rows, grading modes and provenance."""

from __future__ import annotations

import csv
import hashlib
import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from report_fixtures import synthetic_config, write_results

from cleaner.config import load_config
from cleaner.report import build_report, control_of, load_paper_results
from cleaner.stats import load_per_problem, mean_ci, paired_bootstrap_diff

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """The report of three seeds x (baseline, cleaner, cleaner with SAAR at test time)."""
    tmp = tmp_path_factory.mktemp("synth")
    cfg, cfg_path = synthetic_config(tmp)
    write_results(tmp / "results")
    summary = build_report(cfg, tmp / "results", tmp / "report", config_path=cfg_path)
    return {"tmp": tmp, "cfg": cfg, "summary": summary, "html": (tmp / "report" / "index.html").read_text(),
            "md": (tmp / "report" / "final_metrics.md").read_text(),
            "csv": list(csv.DictReader((tmp / "report" / "final_metrics.csv").open()))}


def _table(page: str, key: str) -> str:
    match = re.search(rf'<table id="table-{re.escape(key)}">.*?</table>', page, re.S)
    assert match, f"no table {key}"
    return match.group()


def _row(table_html: str, first_cell: str) -> list[str]:
    for row in re.findall(r"<tr>(.*?)</tr>", table_html, re.S):
        cells = [re.sub(r"<[^>]+>", " ", c).split() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
        cells = [" ".join(c) for c in cells]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r}")


def test_page_is_self_contained_with_every_section(synth):
    page = synth["html"]
    for key in ("metrics-test", "paired-test", "test-time-saar", "steps", "saar-rollouts", "timing"):
        assert f'id="table-{key}"' in page, key
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == 2
    assert not re.search(r'(src|href)="(https?:)?//', page), "external resource"
    assert "<script" not in page and "<link" not in page


def test_seed_interval_is_the_t_interval_of_the_per_seed_values(synth):
    values = [float(r["pass@1"]) for r in synth["csv"] if r["arm"] == "baseline"]
    iv = mean_ci(values)
    cells = _row(_table(synth["html"], "metrics-test"), "baseline")
    assert cells[1] == "3"
    assert cells[2] == f"{100 * iv.mean:.1f} [{100 * iv.lo:.1f}, {100 * iv.hi:.1f}]"
    assert f"| baseline | 3 | {cells[2]} |" in synth["md"]  # the markdown carries the same interval


def test_paired_difference_is_the_bootstrap_over_the_trajectory_files(synth):
    res = synth["tmp"] / "results"
    treat = [load_per_problem(res / "cleaner" / f"seed{s}" / "eval" / "test.trajectories.jsonl") for s in range(3)]
    ctrl = [load_per_problem(res / "baseline" / f"seed{s}" / "eval" / "test.trajectories.jsonl") for s in range(3)]
    iv = paired_bootstrap_diff(treat, ctrl)
    cells = _row(_table(synth["html"], "paired-test"), "cleaner")
    assert cells[1:3] == ["baseline", "3"]
    assert cells[3] == f"{100 * iv.mean:+.1f} [{100 * iv.lo:+.1f}, {100 * iv.hi:+.1f}]"
    assert cells[5] == "yes" and iv.lo > 0  # the synthetic cleaner arm is far better


def test_test_time_saar_rows_and_the_latency_it_adds(synth):
    metrics = _table(synth["html"], "metrics-test")
    assert "cleaner [SAAR at test time]" in metrics
    cells = _row(_table(synth["html"], "test-time-saar"), "test")
    assert cells[1] == "cleaner"
    assert cells[5:] == ["0.50", "0.80", "+0.30"]  # wall s / problem: off, on, added


def test_no_test_time_saar_section_without_eval_saar_files(tmp_path):
    cfg, cfg_path = synthetic_config(tmp_path)
    write_results(tmp_path / "results", saar_eval=False, grading=None)
    build_report(cfg, tmp_path / "results", tmp_path / "report", config_path=cfg_path)
    page = (tmp_path / "report" / "index.html").read_text()
    assert "SAAR at test time" not in page
    assert "<th>grading</th>" not in page  # no eval recorded a grading mode


def test_grading_mode_is_shown_when_evals_record_it(synth):
    assert "<th>grading</th>" in _table(synth["html"], "metrics-test")
    assert _row(_table(synth["html"], "metrics-test"), "baseline")[-1] == "reference"
    assert {r["grading"] for r in synth["csv"]} == {"reference"}


def test_rl_steps_and_saar_statistics(synth):
    steps = _row(_table(synth["html"], "steps"), "cleaner")
    # baseline's final val moving average (2 points): mean over seeds of (0.5 + 0.6) / 2 + 0.01 * seed = 56.0%
    assert steps[1:3] == ["baseline", "56.0"]
    # the control itself: seed0 ends at 55% < the 56% mean, so it never reaches its own mean
    assert steps[3:] == ["seed0: 6, seed1: 4, seed2: 4", "3/3", "seed0: not reached, seed1: 6, seed2: 6"]
    saar = _row(_table(synth["html"], "saar-rollouts"), "cleaner")
    assert saar[1] == "0.300"  # saar_triggered
    assert "zero-advantage groups" in _table(synth["html"], "saar-rollouts")


def test_provenance_names_commit_lock_versions_machine_and_stage_times(synth):
    page = synth["html"]
    lock = hashlib.sha256((ROOT / "requirements.lock").read_bytes()).hexdigest()
    assert f"<dd>{lock}</dd>" in page
    assert re.search(r"<dt>git commit</dt><dd>[0-9a-f]{40}", page)
    assert f"<dt>pandas</dt><dd>{metadata.version('pandas')}</dd>" in page
    assert "<dt>cpu count</dt>" in page
    rl = _row(_table(page, "timing"), "rl")
    assert rl[1:3] == ["6", "3:06"]  # 2 arms x seeds 30, 31, 32 s


def test_paper_numbers_come_from_the_data_file_not_the_code():
    paper = load_paper_results()
    qwen3 = paper["configs"]["paper-qwen3-4b"]["results"]
    assert qwen3["tools baseline"]["aime24"] == {"pass@1": 66.7, "pass@16": 84.4}
    assert paper["configs"]["paper-qwen2.5-7b"]["results"]["+ CLEANER"]["livecodebench"]["pass@1"] == 13.1
    assert "2601.15141" in paper["source"]["paper"]
    code = (ROOT / "src" / "cleaner" / "report.py").read_text()
    assert "66.7" not in code and "84.4" not in code


def test_paper_config_puts_published_numbers_beside_ours(tmp_path):
    cfg, cfg_path = synthetic_config(tmp_path, "paper-qwen3-4b", baseline="tools_baseline", split="aime24", k=16)
    write_results(tmp_path / "results", baseline="tools_baseline", split="aime24", k=16)
    build_report(cfg, tmp_path / "results", tmp_path / "report", config_path=cfg_path)
    page = (tmp_path / "report" / "index.html").read_text()
    rows = list(csv.DictReader((tmp_path / "report" / "final_metrics.csv").open()))
    ours = sum(float(r["pass@1"]) for r in rows if r["arm"] == "tools_baseline") / 3
    ours16 = sum(float(r["pass@k"]) for r in rows if r["arm"] == "tools_baseline") / 3  # k = 16 here
    cells = _row(_table(page, "paper"), "aime24")
    assert cells[1] == "tools baseline (tools_baseline)"
    assert cells[3] == "66.7" and cells[6] == "84.4"
    assert cells[4] == f"{100 * ours - 66.7:+.1f}"
    assert cells[7] == f"{100 * ours16 - 84.4:+.1f}"  # Pass@16 from the trajectories matches the eval's own


def test_paper_results_yaml_is_valid_for_every_paper_config():
    paper = load_paper_results()
    for name, pc in paper["configs"].items():
        cfg = yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())
        for setting, exp in pc["arms"].items():
            assert exp in cfg["experiments"], (name, exp)
            assert set(pc["results"][setting]) <= set(cfg["eval"]["splits"]), (name, setting)


# ----------------------------------------------------------------------------------------- regimes and controls


@pytest.fixture(scope="module")
def regimes(tmp_path_factory):
    """Default regime + a 'paper' regime whose arms all sit 0.1 higher: a report that compared paper_cleaner with
    the default baseline (or started it from the default SFT model) would show it."""
    tmp = tmp_path_factory.mktemp("regimes")
    cfg, cfg_path = synthetic_config(tmp, regime="paper")
    write_results(tmp / "results")
    write_results(tmp / "results", regime="paper", acc_shift=0.1)
    summary = build_report(cfg, tmp / "results", tmp / "report", config_path=cfg_path)
    return {"tmp": tmp, "cfg": cfg, "summary": summary, "html": (tmp / "report" / "index.html").read_text(),
            "csv": list(csv.DictReader((tmp / "report" / "final_metrics.csv").open()))}


def test_control_is_the_baseline_of_the_same_regime_unless_set():
    cfg = {"experiments": {"baseline": {}, "cleaner": {}, "baseline_4upd": {}, "cleaner_4upd": {"control": "baseline_4upd"},
                           "paper_baseline": {"regime": "paper"}, "paper_cleaner": {"regime": "paper"},
                           "other_cleaner": {"regime": "other"}}}
    assert control_of(cfg, "cleaner") == "baseline"
    assert control_of(cfg, "cleaner_4upd") == "baseline_4upd"
    assert control_of(cfg, "paper_cleaner") == "paper_baseline"
    assert control_of(cfg, "baseline") is None  # the baseline is nobody's treatment
    assert control_of(cfg, "other_cleaner") is None  # regime without a baseline: no cross-regime fallback


@pytest.mark.parametrize("control, message", [
    ("nope", "unknown experiment 'nope'"), ("cleaner", "an experiment cannot be its own control"),
    ("paper_baseline", "'paper_baseline' is in regime paper, 'cleaner' in default")])
def test_a_bad_control_is_refused_naming_the_field(tmp_path, control, message):
    from cleaner.config import ConfigError

    cfg, _ = synthetic_config(tmp_path, regime="paper")
    cfg["experiments"]["cleaner"]["control"] = control
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=re.escape(f"experiments.cleaner.control: {message}")):
        load_config(bad)


def test_each_regime_is_compared_with_its_own_baseline_and_sft_start(regimes):
    rows = {(r["arm"], r["regime"]) for r in regimes["csv"]}
    assert ("sft (start, paper regime)", "paper") in rows and ("sft (start)", "default") in rows
    assert ("sft (start, paper regime) [SAAR at test time]", "paper") in rows
    res = regimes["tmp"] / "results"
    treat = [load_per_problem(res / "paper_cleaner" / f"seed{s}" / "eval" / "test.trajectories.jsonl") for s in range(3)]
    ctrl = [load_per_problem(res / "paper_baseline" / f"seed{s}" / "eval" / "test.trajectories.jsonl") for s in range(3)]
    iv = paired_bootstrap_diff(treat, ctrl)
    cells = _row(_table(regimes["html"], "paired-test"), "paper_cleaner")
    assert cells[1:4] == ["paper_baseline", "3", f"{100 * iv.mean:+.1f} [{100 * iv.lo:+.1f}, {100 * iv.hi:+.1f}]"]
    steps = _row(_table(regimes["html"], "steps"), "paper_cleaner")
    assert steps[1:3] == ["paper_baseline", "66.0"]  # the paper baseline's final val average, not the default's 56.0
    assert "paper_baseline" not in [c[0] for c in _rows(_table(regimes["html"], "paired-test"))]


def test_an_arm_with_saar_at_test_time_is_compared_with_its_control_both_ways(regimes):
    rows = [c for c in _rows(_table(regimes["html"], "paired-test")) if c[0] == "cleaner [SAAR at test time]"]
    # the fixture evaluates only cleaner with SAAR at test time, so the control's SAAR-off arm is the one present
    assert [c[1] for c in rows] == ["baseline"]
    res = regimes["tmp"] / "results"
    treat = [load_per_problem(res / "cleaner" / f"seed{s}" / "eval_saar" / "test.trajectories.jsonl") for s in range(3)]
    ctrl = [load_per_problem(res / "baseline" / f"seed{s}" / "eval" / "test.trajectories.jsonl") for s in range(3)]
    iv = paired_bootstrap_diff(treat, ctrl)
    assert rows[0][3] == f"{100 * iv.mean:+.1f} [{100 * iv.lo:+.1f}, {100 * iv.hi:+.1f}]"


def test_test_time_saar_rows_include_each_sft_start(regimes):
    starts = [c for c in _rows(_table(regimes["html"], "test-time-saar")) if c[1].startswith("sft (start")]
    assert sorted(c[1] for c in starts) == ["sft (start)", "sft (start, paper regime)"]
    assert all(c[4] != "n/a" for c in starts)  # paired over the SFT trajectories (seed -1 on both sides)


def _rows(table_html: str) -> list[list[str]]:
    out = []
    for row in re.findall(r"<tr>(.*?)</tr>", table_html, re.S):
        cells = [" ".join(re.sub(r"<[^>]+>", " ", c).split()) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
        if cells and not row.lstrip().startswith("<th>arm") and "<td" in row:
            out.append(cells)
    return out
