"""The report page in headless Chromium, on synthetic results (fast). The smoke run's page is checked the same way
in tests/test_pipeline.py (test_smoke_report_page_in_browser), which reuses the DAG that file already runs."""

from __future__ import annotations

from pathlib import Path

import pytest

import report_browser
from report_browser import check_report_page, chromium_paths
from report_fixtures import synthetic_config, write_results

from cleaner.report import build_report


def test_synthetic_report_renders_in_chromium(tmp_path):
    cfg, cfg_path = synthetic_config(tmp_path)
    write_results(tmp_path / "results")
    build_report(cfg, tmp_path / "results", tmp_path / "report", config_path=cfg_path)
    checked = check_report_page(tmp_path / "report", tmp_path / "report" / "index.png")
    assert checked["images"] == 2
    assert checked["tables"] == 1
    assert checked["cells_checked"] == 40  # 5 arms (sft start, off and on, included) x 8 metrics, all with values
    assert "Paired differences to the control" in checked["text"]


def test_a_wrong_number_on_the_page_is_caught(tmp_path):
    """The table check compares what the browser shows with the CSV: edit one cell and it must fail."""
    cfg, cfg_path = synthetic_config(tmp_path)
    write_results(tmp_path / "results", saar_eval=False)
    build_report(cfg, tmp_path / "results", tmp_path / "report", config_path=cfg_path)
    rows = (tmp_path / "report" / "final_metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    first = rows[1].split(",")
    first[header.index("pass@1")] = "0.0"  # the CSV now disagrees with the page for baseline's Pass@1
    (tmp_path / "report" / "final_metrics.csv").write_text("\n".join([rows[0], ",".join(first), *rows[2:]]) + "\n")
    with pytest.raises(AssertionError, match="pass@1"):
        check_report_page(tmp_path / "report", tmp_path / "report" / "index.png")


def test_missing_chromium_skips_outside_ci_and_fails_in_ci(monkeypatch):
    monkeypatch.setattr(report_browser.shutil, "which", lambda name: None)
    monkeypatch.setattr(report_browser, "Path", lambda p: Path("/nonexistent") / Path(p).name)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium chromium-driver"):
        chromium_paths()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        chromium_paths()
