"""scripts/rl_windows.py: window means of the per-step RL logs, validation points kept apart from training rows."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "rl_windows.py"


def _write_run(root: Path, exp: str, seed: int, rows: list[dict]) -> None:
    p = root / exp / f"seed{seed}" / "rl"
    p.mkdir(parents=True)
    (p / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_window_means_split_validation_from_training(tmp_path):
    rows = [{"step": 0, "val/pass@1": 0.5}]
    for s in range(1, 5):
        rows.append({"step": s, "acc": s / 10, "grad_norm": float(s)})
    rows[2]["val/pass@1"] = 0.75          # validation logged on a training step (step 2)
    rows.append({"step": 4, "val/pass@1": 0.25})   # and on its own row
    _write_run(tmp_path, "arm", 3, rows)
    out = _run(str(tmp_path), "arm", "--windows", "1-2,3-4", "--metrics", "grad_norm")
    assert out.returncode == 0, out.stderr
    line = [l for l in out.stdout.splitlines() if l.startswith("| arm |")][0]
    cells = [c.strip() for c in line.strip("|").split("|")]
    # exp, seed, val0, val 1-2, val 3-4, grad_norm 1-2, grad_norm 3-4
    assert cells == ["arm", "3", "0.500", "0.750", "0.250", "1.500", "3.500"]


def test_missing_runs_and_bad_windows_fail_clearly(tmp_path):
    out = _run(str(tmp_path), "nothing")
    assert out.returncode == 1 and "nothing/seed*/rl/metrics.jsonl" in out.stderr
    _write_run(tmp_path, "arm", 0, [{"step": 1, "acc": 1.0}])
    out = _run(str(tmp_path), "arm", "--windows", "20-1")
    assert out.returncode != 0 and "ends before it starts" in out.stderr
    # a last line cut by a kill is skipped, as the report skips it
    (tmp_path / "arm" / "seed0" / "rl" / "metrics.jsonl").write_text('{"step": 1, "acc": 1.0}\n{"step": 2, "ac\n')
    out = _run(str(tmp_path), "arm", "--windows", "1-2", "--metrics", "acc")
    assert out.returncode == 0, out.stderr
    assert "| arm | 0 | nan | nan | 1.000 |" in out.stdout
