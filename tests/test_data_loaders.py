"""Training-data loaders on fixtures shaped like the real sources (tests/fixtures/datasets)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleaner import prompts
from cleaner.data.loaders import (
    load_dapo_math,
    load_megascience,
    load_open_agentrl,
    load_skywork_code,
    load_skywork_math,
    numeric_reference_answer,
)
from cleaner.data.schema import DataError, validate_rl_row
from cleaner.data.sft import load_sft
from cleaner.data.sources import SourceSpec, read_table

FIX = Path(__file__).parent / "fixtures" / "datasets"


def _all_valid(rows: list[dict]) -> None:
    for row in rows:
        assert validate_rl_row(row) == [], row


def test_dapo_dedup_rewrite_and_bad_row_report() -> None:
    rows, problems = load_dapo_math({"path": str(FIX / "dapo_math_17k.parquet")}, max_bad_fraction=0.25)
    _all_valid(rows)
    assert [r["extra_info"]["index"] for r in rows] == [f"a1f4c1c2-0000-4000-8000-00000000000{i}" for i in (1, 2, 3, 4)]
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["2", "9", "-7", "55"]
    content = rows[0]["prompt"][0]["content"]
    assert "Answer: $Answer" not in content and 'after "Answer:"' not in content
    assert content.startswith(prompts.MATH_PREAMBLE + "Find the remainder when $2^{10}$ is divided by $7$.")
    assert "\\boxed{" in content
    assert {r["data_source"] for r in rows} == {"math_dapo"} and {r["ability"] for r in rows} == {"math"}
    assert len(problems) == 1
    assert (problems[0].row, problems[0].field) == (12, "prompt[0].content")  # the raw row position
    with pytest.raises(DataError, match=r"dapo_math: 1 of 5 rows .* dapo_math row 12: prompt\[0\]\.content"):
        load_dapo_math(str(FIX / "dapo_math_17k.parquet"), max_bad_fraction=0.1)


def test_skywork_math_unwraps_json_list_ground_truth() -> None:
    loaded = load_skywork_math(str(FIX / "skywork_or1_math.parquet"), max_bad_fraction=0.2)
    _all_valid(loaded.rows)
    by_index = {r["extra_info"]["index"]: r for r in loaded.rows}
    assert by_index["1"]["reward_model"]["ground_truth"] == "15625"
    assert by_index["2"]["reward_model"]["ground_truth"] == "\\frac{3}{4}"
    assert by_index["4"]["reward_model"]["ground_truth"] == "12"  # first of several answers
    assert by_index["0"]["data_source"] == "train-math-numinamath1.5_olympiads"
    assert by_index["0"]["prompt"][0]["content"].startswith(prompts.MATH_PREAMBLE + "Find $x$ if $2x + 3 = 11$.")
    assert [(p.row, p.field) for p in loaded.problems] == [(8, "reward_model.ground_truth")]
    assert loaded.summary()["bad_rows"] == 1 and loaded.n_source == 9


def test_skywork_code_accepts_both_ground_truth_shapes() -> None:
    loaded = load_skywork_code(str(FIX / "skywork_or1_code.parquet"), max_bad_fraction=0.2)
    _all_valid(loaded.rows)
    types = {r["extra_info"]["index"]: r["extra_info"]["test_type"] for r in loaded.rows}
    assert types == {"0": "stdin", "1": "stdin", "2": "call", "3": "check", "4": "check", "5": "check"}
    taco = loaded.rows[0]
    assert json.loads(taco["reward_model"]["ground_truth"]) == {"inputs": ["1 2\n", "5 7\n"], "outputs": ["3\n", "12\n"]}
    assert taco["ability"] == "code" and taco["prompt"][0]["content"].endswith(prompts.CODE_SUBMIT_NOTE)
    assert [(p.row, p.reason) for p in loaded.problems] == [(6, "2 inputs but 1 outputs")]


def test_megascience_numeric_selection_rule() -> None:
    loaded = load_megascience(str(FIX / "megascience.parquet"), max_question_chars=300)
    _all_valid(loaded.rows)
    answers = [r["reward_model"]["ground_truth"] for r in loaded.rows]
    assert answers == ["60", "2", "44.1", "2.0", "-1.602e-19", "1200"]
    assert loaded.n_unselected == 6 and loaded.problems == []
    assert {r["data_source"] for r in loaded.rows} == {"mega-science"} and loaded.rows[0]["ability"] == "science"
    assert "following physics problem" in loaded.rows[0]["prompt"][0]["content"]
    assert loaded.rows[0]["extra_info"]["index"] == "0" and loaded.rows[-1]["extra_info"]["index"] == "7"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("42", "42"), (" -3.5. ", "-3.5"), ("$1,200$", "1200"), ("+6.02E23", "6.02E23"), (".5", ".5"),
     ("10 m/s", None), ("\\frac{1}{2}", None), ("1-2", None), ("", None), ("nan", None), (None, None), ("1,20", None)],
)
def test_numeric_reference_answer(text, expected) -> None:
    assert numeric_reference_answer(text) == expected


def test_open_agentrl_30k_gets_reference_prompts() -> None:
    loaded = load_open_agentrl(str(FIX / "open_agentrl_30k.parquet"))
    _all_valid(loaded.rows)
    by_source = {r["data_source"]: r for r in loaded.rows}
    assert by_source["math_dapo"]["prompt"][0]["content"].endswith(prompts.NO_UNITS_NOTE_30K)
    assert by_source["train-math-deepscaler"]["prompt"][0]["content"].startswith(prompts.MATH_PREAMBLE)
    assert by_source["mega-science"]["ability"] == "science"
    assert by_source["train-code-leetcode-Easy"]["extra_info"]["test_type"] == "check"
    # indices are row positions (the published file reuses index values across sources)
    assert [r["extra_info"]["index"] for r in loaded.rows] == [str(i) for i in range(6)]
    assert loaded.rows[5]["extra_info"]["source_index"] == "3"


def test_sft_loader_normalises_and_rejects_orphan_tool_message(tmp_path) -> None:
    loaded = load_sft(str(FIX / "open_agentrl_sft_3k.parquet"), max_bad_fraction=0.5)
    assert len(loaded.rows) == 2
    second = loaded.rows[1]["messages"]
    assert second[1]["content"] == "" and second[1]["tool_calls"][0]["function"]["arguments"] == {"code": "print(sum(range(1, 101))"}
    assert loaded.rows[0]["tools"][0]["function"]["name"] == "code_interpreter"
    assert [(p.row, p.field) for p in loaded.problems] == [(2, "messages[1]")]
    assert "tool message without a preceding tool call" in loaded.problems[0].reason
    # arguments stored as a JSON string (OpenAI style) and a missing tools column are accepted
    rows = pq.read_table(FIX / "open_agentrl_sft_3k.parquet").to_pylist()[:1]
    for m in rows[0]["messages"]:
        if m["tool_calls"]:
            m["tool_calls"][0]["function"]["arguments"] = json.dumps(m["tool_calls"][0]["function"]["arguments"])
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"messages": rows[0]["messages"]}) + "\n")
    loaded = load_sft(str(path), max_bad_fraction=0.0)
    assert loaded.rows[0]["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"code": "print(2**20)"}
    assert loaded.rows[0]["tools"] == prompts.tool_schemas()


def test_missing_field_is_reported_with_row_and_field(tmp_path) -> None:
    rows = pq.read_table(FIX / "skywork_or1_math.parquet").to_pylist()[:4]
    del rows[2]["prompt"]  # parquet stores the absent field as null
    path = tmp_path / "sky.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    loaded = load_skywork_math(str(path), max_bad_fraction=0.5)
    assert [(p.row, p.field, p.reason) for p in loaded.problems] == [(2, "prompt", "missing")]
    with pytest.raises(DataError, match=r"1 of 4 rows.*skywork_math row 2: prompt: missing"):
        load_skywork_math(str(path), max_bad_fraction=0.0)


def test_source_spec_parsing_and_errors(tmp_path, monkeypatch) -> None:
    assert SourceSpec.parse("x.parquet") == SourceSpec(path="x.parquet")
    assert SourceSpec.parse({"hub": "a/b", "files": "test6.jsonl"}).files == ("test6.jsonl",)
    with pytest.raises(DataError, match="exactly one of 'hub' or 'path'"):
        SourceSpec.parse({"hub": "a/b", "path": "x", "split": "train"})
    with pytest.raises(DataError, match="needs a 'split'"):
        SourceSpec.parse({"hub": "a/b"})
    with pytest.raises(DataError, match="unknown source spec key"):
        SourceSpec.parse({"path": "x", "spilt": "train"})
    with pytest.raises(DataError, match="no data file found"):
        read_table({"path": str(tmp_path / "missing.parquet")})
    # a directory means all its table files, concatenated in name order
    for i in range(2):
        pq.write_table(pa.table({"a": [i]}), tmp_path / f"part{i}.parquet")
    assert read_table(str(tmp_path)).column("a").to_pylist() == [0, 1]
    # gated hub sources fail before any download without a token
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(DataError, match="Idavidrein/gpqa is a gated dataset.*HF_TOKEN"):
        read_table({"hub": "Idavidrein/gpqa", "config": "gpqa_diamond", "split": "train"}, cache_dir=str(tmp_path), gated=True)
