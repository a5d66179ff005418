"""scripts/paired_diff.py: any two arms, paired by seed and problem, the report's bootstrap."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "paired_diff.py"


def _write(root: Path, arm: str, seed: int, accs: list[list[bool]], fails: list[list[int]]) -> None:
    p = root / arm / f"seed{seed}" / "eval"
    p.mkdir(parents=True)
    rows = [{"problem": prob, "sample": k, "acc": a, "stats": {"tool_failures_before": fails[prob][k]}}
            for prob, samples in enumerate(accs) for k, a in enumerate(samples)]
    (p / "test.trajectories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_difference_is_paired_on_common_seeds_and_reads_stats(tmp_path):
    # per problem and seed, the treatment solves one sample more of 2 than the control (+50 points, no spread) and
    # fails one call less
    for s in (0, 1, 2):
        _write(tmp_path, "t", s, [[True, False], [True, True]], [[0, 0], [0, 0]])
        _write(tmp_path, "c", s, [[False, False], [True, False]], [[1, 0], [0, 1]])
    _write(tmp_path, "t", 7, [[False, False], [False, False]], [[3, 3], [3, 3]])   # unpaired seed: ignored
    out = _run(str(tmp_path), "t", "c")
    assert out.returncode == 0, out.stderr
    assert "seeds 0,1,2" in out.stdout and "+50.0 [+50.0, +50.0] points" in out.stdout
    out = _run(str(tmp_path), "t", "c", "--metric", "tool_failures_before")
    assert out.returncode == 0, out.stderr
    assert "-0.500 [-0.500, -0.500]" in out.stdout


def test_bad_input_is_named(tmp_path):
    out = _run(str(tmp_path), "t", "c")
    assert out.returncode != 0 and "no seed has eval/test.trajectories.jsonl" in out.stderr
    _write(tmp_path, "t", 0, [[True]], [[0]])
    _write(tmp_path, "c", 0, [[True]], [[0]])
    out = _run(str(tmp_path), "t", "c", "--metric", "nope")
    assert out.returncode != 0 and "no field 'nope'" in out.stderr
    bad = tmp_path / "c" / "seed0" / "eval" / "test.trajectories.jsonl"
    bad.write_text('{"problem": 0, "acc": true}\n{"problem": 1, "acc"\n')
    out = _run(str(tmp_path), "t", "c")
    assert out.returncode != 0 and "test.trajectories.jsonl:2: not a JSON record" in out.stderr
