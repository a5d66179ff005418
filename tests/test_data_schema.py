"""Schema validation, bad-row accounting and atomic writers of cleaner.data.schema."""

from __future__ import annotations

import copy
import json

import datasets
import pytest

from cleaner import prompts
from cleaner.data.schema import (
    DataError,
    RowProblem,
    check_bad_fraction,
    read_parquet_rows,
    validate_rl_row,
    validate_sft_row,
    write_json_atomic,
    write_rl_parquet,
)

GOOD = {
    "data_source": "math_dapo",
    "prompt": [{"role": "user", "content": "Compute 1+1."}],
    "ability": "math",
    "reward_model": {"style": "rule", "ground_truth": "2"},
    "extra_info": {"index": "u1", "source": "dapo_math", "split": "train"},
    "agent_name": "tool_agent",
}


def test_valid_row_has_no_problems() -> None:
    assert validate_rl_row(GOOD) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r.pop("agent_name"), "agent_name: missing"),
        (lambda r: r.update(ability="MATH"), "ability: 'MATH' not in"),
        (lambda r: r["reward_model"].update(ground_truth=2), "reward_model.ground_truth: expected a non-empty string"),
        (lambda r: r["reward_model"].update(style="rule-lighteval/MATH_v2"), "reward_model.style"),
        (lambda r: r.update(prompt=[]), "prompt: expected a non-empty list"),
        (lambda r: r["prompt"].append({"role": "assistant", "content": "x"}), "prompt: the last message must be the user's"),
        (lambda r: r["prompt"][0].update(role="robot"), "prompt[0].role"),
        (lambda r: r["extra_info"].update(index=3), "extra_info.index: expected a non-empty string"),
        (lambda r: r.update(extra="x"), "row: unexpected keys ['extra']"),
    ],
)
def test_invalid_rows_name_the_field(mutate, expected: str) -> None:
    row = copy.deepcopy(GOOD)
    mutate(row)
    problems = validate_rl_row(row)
    assert any(expected in p for p in problems), problems


def test_sft_row_validation() -> None:
    call = {"type": "function", "function": {"name": "code_interpreter", "arguments": {"code": "print(1)"}}}
    good = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "1"},
            {"role": "assistant", "content": "\\boxed{1}"},
        ],
        "tools": prompts.tool_schemas(),
    }
    assert validate_sft_row(good) == []
    unanswered = copy.deepcopy(good)
    del unanswered["messages"][2]
    assert any("no tool response" in p for p in validate_sft_row(unanswered))
    wrong_tool = copy.deepcopy(good)
    wrong_tool["messages"][1]["tool_calls"][0]["function"]["name"] = "bash"
    assert any("expected 'code_interpreter'" in p for p in validate_sft_row(wrong_tool))


def test_bad_fraction_error_names_counts_and_rows() -> None:
    problems = [RowProblem("src", 3, "prompt", "missing"), RowProblem("src", 7, "reward_model.ground_truth", "bad")]
    check_bad_fraction("src", 10, problems, 0.2)  # 2/10 is allowed
    with pytest.raises(DataError, match=r"src: 2 of 10 rows \(20.00%\).*src row 3: prompt: missing"):
        check_bad_fraction("src", 10, problems, 0.1)


def test_write_rl_parquet_roundtrip_and_verl_style_read(tmp_path) -> None:
    other = copy.deepcopy(GOOD)
    other["data_source"] = "livecodebench"
    other["ability"] = "code"
    other["extra_info"].update(fn_name="f", starter_code="def f(x):")
    path = write_rl_parquet([GOOD, other], tmp_path / "out" / "rl.parquet")
    assert read_parquet_rows(path) == [GOOD, other]
    assert sorted(p.name for p in path.parent.iterdir()) == ["rl.parquet"]  # no temp file left behind
    # verl's RLHFDataset reads train files with datasets' parquet builder
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds[1]["extra_info"]["fn_name"] == "f" and ds[0]["prompt"][0]["role"] == "user"


def test_write_rl_parquet_rejects_invalid_and_duplicate_rows(tmp_path) -> None:
    bad = copy.deepcopy(GOOD)
    bad["ability"] = "poetry"
    with pytest.raises(DataError, match="row 1: ability"):
        write_rl_parquet([GOOD, bad], tmp_path / "x.parquet")
    with pytest.raises(DataError, match="duplicate uid 'math_dapo/u1'"):
        write_rl_parquet([GOOD, copy.deepcopy(GOOD)], tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()
    assert list(tmp_path.iterdir()) == []


def test_write_json_atomic(tmp_path) -> None:
    path = write_json_atomic({"b": 1, "a": [1, 2]}, tmp_path / "r.json")
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    with pytest.raises(TypeError):
        write_json_atomic({"x": object()}, tmp_path / "bad.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
