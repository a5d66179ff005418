"""``cleaner data ...`` subcommands end to end on the fixtures (real files in, parquet + reports out)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from cleaner.data.cli import add_commands, default_config_path, load_data_config, main
from cleaner.data.schema import read_parquet_rows, row_uid

FIX = Path(__file__).parent / "fixtures" / "datasets"


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    doc = {
        "experiment": "fixture",  # other sections of a full config are ignored
        "data": {
            "cache_dir": str(tmp_path / "resources"),
            "rl_mix": {
                "seed": 0,
                "max_bad_fraction": 0.25,
                "sources": {
                    "dapo_math": {"source": {"path": str(FIX / "dapo_math_17k.parquet")}, "count": 3},
                    "skywork_code": {"source": {"path": str(FIX / "skywork_or1_code.parquet")},
                                     "subsets": {"train-code-taco-*": 2, "train-code-leetcode-*": 1}},
                },
            },
            "rl_mix_published": {"sources": {"open_agentrl_30k": {"source": str(FIX / "open_agentrl_30k.parquet")}}},
            "eval": {
                "sets": {
                    "aime24": {"source": {"path": str(FIX / "aime_2024.parquet")}},
                    "aime25": {"source": {"path": str(FIX / "aime25_test.jsonl")}},
                    "gpqa_diamond": {"source": {"path": str(FIX / "gpqa_diamond.csv")}, "options": {"seed": 0}},
                    "livecodebench": {"source": {"path": str(FIX / "lcb_test6.jsonl")},
                                      "options": {"start_date": "2025-02-01", "end_date": "2025-05-31"}},
                }
            },
            "sft": {"source": {"path": str(FIX / "open_agentrl_sft_3k.parquet")}, "max_bad_fraction": 0.5},
            "difficulty_filter": {"seed": 0, "n_rollouts": 8},
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_prepare_rl_and_filter(config: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "rl.parquet"
    assert main(["data", "prepare-rl", "--config", str(config), "--out", str(out)]) == 0
    rows = read_parquet_rows(out)
    assert len(rows) == 6
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["total"] == 6 and report["sources"]["dapo_math"]["sample"]["realised"] == 3
    assert "wrote 6 RL rows" in capsys.readouterr().out
    counts = {row_uid(r): (1 if r["ability"] == "code" else 5) for r in rows}
    counts_path = tmp_path / "passes.json"
    counts_path.write_text(json.dumps(counts))
    filtered = tmp_path / "rl_filtered.parquet"
    assert main(["data", "filter-difficulty", "--config", str(config), "--rows", str(out), "--pass-counts",
                 str(counts_path), "--out", str(filtered)]) == 0
    kept = read_parquet_rows(filtered)
    assert sum(r["ability"] == "math" for r in kept) == 3 and sum(r["ability"] == "code" for r in kept) == 2  # 0.8 * 3
    published = tmp_path / "published.parquet"
    assert main(["data", "prepare-rl", "--config", str(config), "--mix", "rl_mix_published", "--out", str(published)]) == 0
    assert len(read_parquet_rows(published)) == 6


def test_prepare_eval_and_sft(config: Path, tmp_path: Path, capsys) -> None:
    out_dir, raw_dir = tmp_path / "eval", tmp_path / "raw"
    assert main(["data", "prepare-eval", "--config", str(config), "--out-dir", str(out_dir), "--raw-dir", str(raw_dir)]) == 0
    sizes = {name: len(read_parquet_rows(out_dir / f"{name}.parquet")) for name in ("aime24", "aime25", "gpqa_diamond", "livecodebench")}
    assert sizes == {"aime24": 3, "aime25": 3, "gpqa_diamond": 3, "livecodebench": 3}
    report = json.loads((out_dir / "eval_sets.report.json").read_text())
    assert report["sets"]["livecodebench"]["unselected_rows"] == 1
    assert sorted(p.name for p in raw_dir.iterdir()) == ["aime24.jsonl", "aime25.jsonl", "gpqa_diamond_cot_zeroshot.jsonl"]
    gpqa_raw = [json.loads(line) for line in (raw_dir / "gpqa_diamond_cot_zeroshot.jsonl").read_text().splitlines()]
    assert gpqa_raw[0]["Correct Answer"] == "Electron" and "Incorrect Answer 3" in gpqa_raw[0]
    only = tmp_path / "only"
    assert main(["data", "prepare-eval", "--config", str(config), "--out-dir", str(only), "--only", "aime25"]) == 0
    assert sorted(p.name for p in only.iterdir()) == ["aime25.parquet", "eval_sets.report.json"]
    assert main(["data", "prepare-eval", "--config", str(config), "--out-dir", str(only), "--only", "aime26"]) == 2
    assert "error: eval set(s) ['aime26'] not in the config" in capsys.readouterr().err
    sft = tmp_path / "sft.parquet"
    assert main(["data", "prepare-sft", "--config", str(config), "--out", str(sft)]) == 0
    assert len(read_parquet_rows(sft)) == 2
    assert json.loads(sft.with_suffix(".report.json").read_text())["bad_rows"] == 1


def test_help_and_packaged_config(capsys) -> None:
    parser = argparse.ArgumentParser(prog="cleaner")
    add_commands(parser.add_subparsers(dest="command"))
    for sub in ("prepare-rl", "prepare-eval", "prepare-sft", "filter-difficulty", "lm-eval"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["data", sub, "--help"])
        assert exc.value.code == 0
        assert "usage: cleaner data " + sub in capsys.readouterr().out
    paper = load_data_config(default_config_path())
    counts = paper["rl_mix"]["sources"]
    assert sum(counts["skywork_math"]["subsets"].values()) == 4901
    assert sum(counts["skywork_code"]["subsets"].values()) == 3455 + 855
    assert counts["megascience"]["count"] == 3000


def test_recipe_with_a_local_source_replaces_the_hub_source(tmp_path: Path, capsys) -> None:
    """What docs/data.md tells an offline user to write: `recipe: paper` plus a local `source: {path: ...}`."""
    local = str(FIX / "aime_2024.parquet")
    doc = {"data": {"recipe": "paper", "cache_dir": str(tmp_path / "resources"),
                    "eval": {"sets": {"aime24": {"source": {"path": local}}}},
                    "rl_mix": {"sources": {"megascience": {"options": {"max_question_chars": 100}}}}}}
    path = tmp_path / "offline.yaml"
    path.write_text(yaml.safe_dump(doc))
    cfg = load_data_config(path)
    assert cfg["eval"]["sets"]["aime24"]["source"] == {"path": local}                 # not {hub, split, path}
    assert cfg["eval"]["sets"]["aime25"]["source"]["hub"] == "math-ai/aime25"          # the recipe's, untouched
    megascience = cfg["rl_mix"]["sources"]["megascience"]
    assert megascience["options"] == {"max_question_chars": 100} and megascience["count"] == 3000  # other keys merge
    assert main(["data", "prepare-eval", "--config", str(path), "--out-dir", str(tmp_path / "eval"),
                 "--only", "aime24"]) == 0
    assert len(read_parquet_rows(tmp_path / "eval" / "aime24.parquet")) == 3


def test_prepare_eval_failure_keeps_finished_sets_and_says_what_is_left(config: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "gpqa_broken.csv"
    lines = (FIX / "gpqa_diamond.csv").read_text().splitlines()
    broken.write_text("\n".join(lines[:2] + ["only,three,columns"] + lines[2:]) + "\n")
    doc = yaml.safe_load(config.read_text())
    doc["data"]["eval"]["sets"]["gpqa_diamond"]["source"] = {"path": str(broken)}
    config.write_text(yaml.safe_dump(doc))
    out_dir = tmp_path / "eval"
    assert main(["data", "prepare-eval", "--config", str(config), "--out-dir", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{broken}: cannot read as csv" in err                                 # the CSV error names the file
    assert f"Kept (complete): aime24 -> {out_dir / 'aime24.parquet'}, aime25 -> {out_dir / 'aime25.parquet'}" in err
    assert "Not attempted: livecodebench" in err and "Finish with --only gpqa_diamond,livecodebench" in err
    assert sorted(p.name for p in out_dir.glob("*.parquet")) == ["aime24.parquet", "aime25.parquet"]
    assert len(read_parquet_rows(out_dir / "aime25.parquet")) == 3                # kept files are whole
    report = json.loads((out_dir / "eval_sets.report.json").read_text())
    assert report["complete"] is False and list(report["sets"]) == ["aime24", "aime25"]
    assert list(report["failed"]) == ["gpqa_diamond"] and report["not_attempted"] == ["livecodebench"]
    # The command the message gives finishes the job once the file is fixed.
    doc["data"]["eval"]["sets"]["gpqa_diamond"]["source"] = {"path": str(FIX / "gpqa_diamond.csv")}
    config.write_text(yaml.safe_dump(doc))
    assert main(["data", "prepare-eval", "--config", str(config), "--out-dir", str(out_dir),
                 "--only", "gpqa_diamond,livecodebench"]) == 0
    assert len(list(out_dir.glob("*.parquet"))) == 4
    assert json.loads((out_dir / "eval_sets.report.json").read_text())["complete"] is True


def test_prepare_eval_checks_every_entry_before_writing(config: Path, tmp_path: Path, capsys) -> None:
    doc = yaml.safe_load(config.read_text())
    doc["data"]["eval"]["sets"]["livecodebench"]["source"] = {"hub": "x/y", "path": "/z"}
    config.write_text(yaml.safe_dump(doc))
    assert main(["data", "prepare-eval", "--config", str(config), "--out-dir", str(tmp_path / "eval")]) == 2
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("name, text, where", [
    ("passes.json", '{"a": 1,', "passes.json: not valid JSON"),
    ("passes.jsonl", '{"uid": "a", "passes": 1}\n{"uid": "b", passes: 2}\n', "passes.jsonl:2: not valid JSON"),
])
def test_corrupt_pass_counts_name_the_file(config: Path, tmp_path: Path, capsys, name, text, where) -> None:
    rows = tmp_path / "rl.parquet"
    assert main(["data", "prepare-rl", "--config", str(config), "--out", str(rows)]) == 0
    counts = tmp_path / name
    counts.write_text(text)
    assert main(["data", "filter-difficulty", "--rows", str(rows), "--pass-counts", str(counts),
                 "--out", str(tmp_path / "kept.parquet")]) == 2
    assert f"{tmp_path}/{where}" in capsys.readouterr().err
    assert not (tmp_path / "kept.parquet").exists()
