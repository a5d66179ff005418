"""Tests of the ``cleaner`` command: ``--version`` and ``purify`` over real JSONL files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cleaner import __version__
from cleaner.cli import main

CODE = "import math\nprint(math.sqrt(16))"
FIXED = "import math\nprint(math.sqrt(16.0))"


def asst(content: str, code: str | None = None) -> dict:
    msg: dict = {"role": "assistant", "content": content}
    if code is not None:
        msg["tool_calls"] = [{"id": "c", "type": "function", "function": {"name": "code_interpreter", "arguments": {"code": code}}}]
    return msg


def trajectory() -> list[dict]:
    return [
        {"role": "user", "content": "sqrt(16)?"},
        asst("compute", CODE),
        {"role": "tool", "content": "NameError: name 'math' is not defined", "status": "error"},
        asst("fix", FIXED),
        {"role": "tool", "content": "4.0", "status": "ok"},
        asst("\\boxed{4}"),
    ]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"cleaner {__version__}"


def test_no_subcommand_is_usage_error(capsys):
    assert main([]) == 2
    assert "purify" in capsys.readouterr().err


def test_purify_list_and_object_lines(tmp_path, capsys):
    src = write_lines(
        tmp_path / "in.jsonl",
        [
            json.dumps(trajectory()),
            "",
            json.dumps({"id": "q7", "reward": 1.0, "messages": trajectory(), "purify_stats": "stale"}),
        ],
    )
    out = tmp_path / "sub" / "out.jsonl"
    assert main(["purify", str(src), str(out)]) == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 2
    for rec in records:
        msgs = rec["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant"]
        assert msgs[1]["content"] == "compute" and msgs[1]["tool_calls"][0]["function"]["arguments"]["code"] == FIXED
        assert rec["purify_stats"]["shallow"] == 1 and rec["purify_stats"]["tool_failures_after"] == 0
    assert records[1]["id"] == "q7" and records[1]["reward"] == 1.0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["trajectories"] == 2 and summary["recovered"] == 2 and summary["malformed_lines"] == 0
    assert summary["tool_failures_per_trajectory_before"] == 1.0 and summary["tool_failures_per_trajectory_after"] == 0.0
    assert summary["config"]["gamma"] == 0.5
    assert captured.err == ""
    assert [p.name for p in out.parent.iterdir()] == ["out.jsonl"]  # no temp file left behind


def test_purify_reports_malformed_lines_and_skips_them(tmp_path, capsys):
    src = write_lines(
        tmp_path / "in.jsonl",
        [
            json.dumps(trajectory()),
            "{not json",
            json.dumps({"no_messages": []}),
            json.dumps(42),
            json.dumps([{"role": "wizard", "content": "x"}]),
            json.dumps({"messages": trajectory()}),
        ],
    )
    out = tmp_path / "out.jsonl"
    assert main(["purify", str(src), str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{src}:2: not valid JSON")
    assert err[1] == f"{src}:3: object has no 'messages' field"
    assert err[2].startswith(f"{src}:4: expected a list of messages")
    assert err[3].startswith(f"{src}:5: message 0 has role 'wizard'")
    assert err[4] == "cleaner purify: skipped 4 malformed line(s) of 6"
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2


def test_purify_all_lines_bad_is_an_error(tmp_path, capsys):
    src = write_lines(tmp_path / "in.jsonl", ["nope", "[1]"])
    out = tmp_path / "out.jsonl"
    assert main(["purify", str(src), str(out)]) == 2
    assert "no valid trajectory" in capsys.readouterr().err
    assert not out.exists()


def test_purify_missing_input(tmp_path, capsys):
    assert main(["purify", str(tmp_path / "missing.jsonl"), str(tmp_path / "out.jsonl")]) == 2
    assert "input file not found" in capsys.readouterr().err


def test_purify_bad_option_values(tmp_path, capsys):
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(trajectory())])
    assert main(["purify", str(src), str(tmp_path / "o.jsonl"), "--gamma", "1.5"]) == 2
    assert "SaarConfig.gamma" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["purify", str(src), str(tmp_path / "o.jsonl"), "--replacement", "random"])
    assert exc.value.code == 2


def test_purify_options_reach_the_algorithm(tmp_path, capsys):
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(trajectory())] * 40)
    out = tmp_path / "out.jsonl"
    assert main(["purify", str(src), str(out), "--replacement", "deep", "--rollback-probability", "0.5", "--seed", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["deep"] == summary["gate_open"] and summary["shallow"] == 0
    assert 5 < summary["gate_open"] < 35
    first = out.read_bytes()
    assert main(["purify", str(src), str(out), "--replacement", "deep", "--rollback-probability", "0.5", "--seed", "3"]) == 0
    assert out.read_bytes() == first  # seeded: reproducible
    capsys.readouterr()
    assert main(["purify", str(src), str(out), "--max-retries", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["triggered"] == 0


def test_console_script_runs(tmp_path):
    """The installed ``cleaner`` entry point (pyproject [project.scripts]) in a real subprocess."""
    exe = Path(sys.executable).with_name("cleaner")
    if not exe.exists():
        pytest.skip("cleaner console script not installed in this environment")
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(trajectory())])
    out = tmp_path / "out.jsonl"
    proc = subprocess.run(
        [str(exe), "purify", str(src), str(out), "--gamma", "0.9"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["recovered"] == 1
    assert json.loads(out.read_text(encoding="utf-8"))["purify_stats"]["gate_open"] is True


def test_atomic_writes_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    import os

    from cleaner.fsutil import atomic_write, write_text_atomic

    old = os.umask(0o022)
    try:
        p = write_text_atomic(tmp_path / "sub" / "a.json", "{}")
        q = atomic_write(tmp_path / "b.csv", lambda tmp: open(tmp, "w").write("x"), suffix=".csv")
    finally:
        os.umask(old)
    assert p.read_text() == "{}" and q.read_text() == "x"
    assert (p.stat().st_mode & 0o777) == 0o644 and (q.stat().st_mode & 0o777) == 0o644
    assert sorted(x.name for x in tmp_path.rglob("*") if x.is_file()) == ["a.json", "b.csv"]  # no temp left


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    import pytest

    from cleaner.fsutil import atomic_write

    target = tmp_path / "metrics.json"
    target.write_text("old")

    def boom(tmp):
        open(tmp, "w").write("partial")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old" and [x.name for x in tmp_path.iterdir()] == ["metrics.json"]
