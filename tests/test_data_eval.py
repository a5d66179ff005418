"""Eval-set loaders: AIME24/25, GPQA-Diamond (gated, deterministic shuffle), LiveCodeBench (compressed tests)."""

from __future__ import annotations

import base64
import csv
import json
import pickle
import zlib
from pathlib import Path

import pytest

from cleaner import prompts
from cleaner.data.eval_sets import (
    decode_lcb_tests,
    load_aime24,
    load_aime25,
    load_gpqa_diamond,
    load_livecodebench,
    shuffle_gpqa_choices,
)
from cleaner.data.loaders import BadRow
from cleaner.data.schema import DataError, validate_rl_row

FIX = Path(__file__).parent / "fixtures" / "datasets"


def test_aime_sets() -> None:
    a24 = load_aime24(str(FIX / "aime_2024.parquet")).rows
    a25 = load_aime25(str(FIX / "aime25_test.jsonl")).rows
    for row in a24 + a25:
        assert validate_rl_row(row) == []
    assert [r["reward_model"]["ground_truth"] for r in a24] == ["111", "222", "333"]
    assert [r["extra_info"]["index"] for r in a24] == ["2024-I-1", "2024-I-2", "2024-I-3"]
    assert a24[0]["prompt"][0]["content"] == prompts.aime_user_prompt("Find the value of $1 \\cdot 111$.")
    assert [r["reward_model"]["ground_truth"] for r in a25] == ["8", "27", "64"]
    assert {r["data_source"] for r in a25} == {"aime25"} and a25[0]["extra_info"]["split"] == "test"


def test_gpqa_rows_and_deterministic_shuffle(tmp_path) -> None:
    rows = load_gpqa_diamond(str(FIX / "gpqa_diamond.csv"), seed=0).rows
    assert len(rows) == 3
    for row in rows:
        assert validate_rl_row(row) == []
        letter = row["reward_model"]["ground_truth"]
        choices = row["extra_info"]["choices"]
        assert letter in "ABCD" and len(set(choices)) == 4
        assert f"({letter}) {choices[ord(letter) - 65]}" in row["prompt"][0]["content"]
        assert row["prompt"][0]["content"].endswith(prompts.CHOICE_LETTER_NOTE)
    correct = {r["extra_info"]["index"]: r["extra_info"]["choices"][ord(r["reward_model"]["ground_truth"]) - 65] for r in rows}
    assert correct == {"recA1b2C3d4E5f6G7h": "Electron", "recH8i9J0k1L2m3N4o": "Na", "recP5q6R7s8T9u0V1w": "Nucleus"}
    assert "Golgi apparatus" in rows[2]["extra_info"]["choices"]  # double spaces cleaned as lm-eval does
    # the same seed gives the same order, whatever the row order; another seed reshuffles
    with (FIX / "gpqa_diamond.csv").open(newline="") as fh:
        table = list(csv.reader(fh))
    reversed_csv = tmp_path / "rev.csv"
    with reversed_csv.open("w", newline="") as fh:
        csv.writer(fh).writerows([table[0]] + table[1:][::-1])
    again = {r["extra_info"]["index"]: r["extra_info"]["choices"] for r in load_gpqa_diamond(str(reversed_csv), seed=0).rows}
    assert again == {r["extra_info"]["index"]: r["extra_info"]["choices"] for r in rows}
    raw = {"Question": "q", "Correct Answer": "c", "Incorrect Answer 1": "w1", "Incorrect Answer 2": "w2",
           "Incorrect Answer 3": "w3", "Record ID": "r"}
    orders = {tuple(shuffle_gpqa_choices(raw, seed=s)[0]) for s in range(20)}
    assert len(orders) > 5
    assert shuffle_gpqa_choices(raw, seed=3) == shuffle_gpqa_choices(dict(raw), seed=3)


def test_gpqa_hub_needs_token(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(DataError, match="gated dataset.*export HF_TOKEN"):
        load_gpqa_diamond({"hub": "Idavidrein/gpqa", "config": "gpqa_diamond", "split": "train"}, cache_dir=str(tmp_path))


def test_livecodebench_window_tests_and_judge_fields() -> None:
    loaded = load_livecodebench({"path": str(FIX / "lcb_test6.jsonl")}, start_date="2025-02-01", end_date="2025-05-31")
    assert [r["extra_info"]["index"] for r in loaded.rows] == ["abc390_a", "3456", "2070A"]
    assert loaded.n_unselected == 1  # abc380_b (2024-11) is outside the window
    for row in loaded.rows:
        assert validate_rl_row(row) == []
        assert row["data_source"] == "livecodebench" and row["ability"] == "code"
    stdin_row, call_row, plain_row = loaded.rows
    assert json.loads(stdin_row["reward_model"]["ground_truth"]) == [
        {"input": "1 2\n", "output": "3\n", "testtype": "stdin"},
        {"input": "5 7\n", "output": "12\n", "testtype": "stdin"},
        {"input": "0 0\n", "output": "0\n", "testtype": "stdin"},
    ]
    assert stdin_row["extra_info"]["fn_name"] == "" and stdin_row["extra_info"]["starter_code"] == ""
    assert prompts.LCB_WITHOUT_STARTER_CODE in stdin_row["prompt"][0]["content"]
    assert call_row["extra_info"]["fn_name"] == "maxSum"
    assert call_row["extra_info"]["starter_code"].startswith("class Solution:")
    assert "def maxSum(self, nums: List[int], k: int) -> int:" in call_row["prompt"][0]["content"]
    assert [t["testtype"] for t in json.loads(call_row["reward_model"]["ground_truth"])] == ["functional", "functional"]
    assert len(json.loads(plain_row["reward_model"]["ground_truth"])) == 3  # private tests stored as plain JSON
    wide = load_livecodebench(str(FIX / "lcb_test6.jsonl"), start_date=None, end_date=None)
    assert len(wide.rows) == 4
    with pytest.raises(DataError, match="date window is empty"):
        load_livecodebench(str(FIX / "lcb_test6.jsonl"), start_date="2025-06-01", end_date="2025-05-01")


def test_decode_lcb_tests_refuses_pickled_objects() -> None:
    tests = [{"input": "1\n", "output": "1\n", "testtype": "stdin"}]
    encoded = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()
    assert decode_lcb_tests(encoded) == tests
    evil = base64.b64encode(zlib.compress(pickle.dumps(Path("/tmp")))).decode()
    with pytest.raises(BadRow, match="refusing to load global"):
        decode_lcb_tests(evil)
    with pytest.raises(BadRow, match="neither JSON nor base64"):
        decode_lcb_tests("not-base64!!")
    with pytest.raises(BadRow, match="testtype"):
        decode_lcb_tests(json.dumps([{"input": "1", "output": "1", "testtype": "weird"}]))
