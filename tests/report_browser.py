"""Open the report page in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven
by Selenium. Shared by tests/test_report_browser.py (synthetic results) and tests/test_pipeline.py (the smoke run).

Checks what a reader would hit: console errors, images that do not decode, numbers in the tables that differ
from final_metrics.csv, anything loaded from outside the page. Saves a full-page screenshot.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"
# Header of a per-arm table -> (column of final_metrics.csv, scale, digits): how the page prints the mean.
METRIC_HEADERS = {"Pass@1 %": ("pass@1", 100.0, 1), "Pass@k %": ("pass@k", 100.0, 1),
                  "tool failures / traj": ("tool_failures_per_trajectory", 1.0, 3),
                  "tool calls / traj": ("tool_calls_per_trajectory", 1.0, 2),
                  "first call fails %": ("first_call_failure_rate", 100.0, 1),
                  "failed-then-correct %": ("recovered_correct_rate", 100.0, 1),
                  "no-failure correct %": ("clean_correct_rate", 100.0, 1),
                  "response tokens": ("response_length", 1.0, 1)}


def chromium_paths() -> tuple[str, str]:
    """Chromium and chromedriver, or skip (outside CI) / fail (CI=true: .ci/run installs them)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    debian_driver = Path("/usr/bin/chromedriver")
    driver = shutil.which("chromedriver") or (str(debian_driver) if debian_driver.exists() else None)
    if browser and driver:
        return browser, driver
    missing = ", ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if not p)
    message = f"headless Chromium not found ({missing} missing); install it with: {CHROMIUM_INSTALL}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {message} (.ci/run does this before make test)")
    pytest.skip(message)


def open_browser(width: int = 1300, height: int = 900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


def _csv_means(csv_path: Path) -> dict[tuple[str, str, str], float]:
    """(split, arm, column) -> mean over the seeds' rows of final_metrics.csv."""
    values: dict[tuple[str, str, str], list[float]] = {}
    for row in csv.DictReader(csv_path.open()):
        for col, _, _ in METRIC_HEADERS.values():
            if row.get(col) not in (None, ""):
                values.setdefault((row["split"], row["arm"], col), []).append(float(row[col]))
    return {key: sum(v) / len(v) for key, v in values.items()}


_TABLES_JS = """
return [...document.querySelectorAll('table[id^="table-metrics-"]')].map(t => ({
  split: t.id.slice('table-metrics-'.length),
  headers: [...t.querySelectorAll('thead th')].map(h => h.innerText.trim()),
  rows: [...t.querySelectorAll('tbody tr')].map(r => [...r.children].map(c => c.innerText.trim()))}));
"""


def check_tables_match_csv(tables: list[dict[str, Any]], csv_path: Path) -> int:
    """Every metric cell's mean (its first line) equals the CSV's mean over seeds, as the page rounds it."""
    means = _csv_means(csv_path)
    checked = 0
    for table in tables:
        for cells in table["rows"]:
            arm = cells[0]
            for header, text in zip(table["headers"], cells):
                if header not in METRIC_HEADERS:
                    continue
                col, scale, digits = METRIC_HEADERS[header]
                key = (table["split"], arm, col)
                shown = text.split("\n")[0].strip()
                if key not in means:
                    assert shown == "-", f"{key}: page shows {shown!r}, the CSV has no value"
                    continue
                assert shown == f"{means[key] * scale:.{digits}f}", f"{key}: page {shown!r}, CSV mean {means[key]}"
                checked += 1
    return checked


def check_report_page(report_dir: Path, screenshot: Path) -> dict[str, Any]:
    """Load report_dir/index.html in headless Chromium and assert it is whole; returns what was checked."""
    page = report_dir / "index.html"
    driver = open_browser()
    try:
        driver.get(page.resolve().as_uri())
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, f"console errors on {page}: {errors}"
        images = driver.execute_script(
            "return [...document.images].map(i => ({src: i.src.slice(0, 22), complete: i.complete, "
            "width: i.naturalWidth}))")
        assert images, "the page has no figures"
        for img in images:
            assert img["complete"] and img["width"] > 0, f"image not decoded: {img}"
            assert img["src"].startswith("data:image/png;base64"), f"image not inline: {img['src']}"
        external = driver.execute_script(
            "return [...document.querySelectorAll('script[src],link[href],iframe,object,embed')].length"
            " + performance.getEntriesByType('resource').length")
        assert external == 0, "the page loads resources; it must be self-contained"
        tables = driver.execute_script(_TABLES_JS)
        assert tables, "no per-arm metrics table (table-metrics-<split>)"
        checked = check_tables_match_csv(tables, report_dir / "final_metrics.csv")
        assert checked > 0
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1300, min(int(height) + 40, 16000))
        driver.save_screenshot(str(screenshot))
        text = driver.execute_script("return document.body.innerText")
    finally:
        driver.quit()
    assert screenshot.stat().st_size > 20_000
    return {"images": len(images), "cells_checked": checked, "tables": len(tables), "text": text}


def first_number(text: str) -> float:
    match = re.search(r"[-+]?\d+(?:\.\d+)?", text)
    assert match, f"no number in {text!r}"
    return float(match.group())
