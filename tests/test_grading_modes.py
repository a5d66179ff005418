"""Named grading modes (issue 15): `reference` / `lenient` from compute_score through the verl reward hook,
the config and the verl overrides to the eval summaries, which name the grader of every number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cleaner.config import load_config
from cleaner.engines.verl import reward as verl_reward
from cleaner.engines.verl.eval_summary import records_from_generations
from cleaner.engines.verl.overrides import build_ppo_overrides
from cleaner.evaluate import summarize_records
from cleaner.rewards import DEFAULT_GRADING, GRADING_MODES, compute_score, compute_score_async

ROOT = Path(__file__).resolve().parents[1]
SPACED = "So the answer is \\boxed{ 42 }"  # -1 for the authors' grader, +1 after normalisation


def test_modes_and_default() -> None:
    assert GRADING_MODES == ("reference", "lenient") and DEFAULT_GRADING == "lenient"
    assert compute_score("math_dapo", SPACED, "42")["score"] == 1.0  # default: today's (lenient) grading
    assert compute_score("math_dapo", SPACED, "42", grading="reference")["score"] == -1.0
    assert compute_score("gpqa_diamond", "\\boxed{(A)}", "A", grading="reference")["score"] == -1.0
    assert compute_score("gpqa_diamond", "\\boxed{(A)}", "A", grading="lenient")["score"] == 1.0


def test_unknown_or_inconsistent_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown grading mode 'strict'"):
        compute_score("math_dapo", SPACED, "42", grading="strict")
    with pytest.raises(ValueError, match="lenient-grading option"):
        compute_score("math_dapo", SPACED, "42", grading="reference", math_mode="verify")
    with pytest.raises(ValueError, match="lenient-grading option"):
        compute_score("math_dapo", SPACED, "42", {"reward_mode": "verify"}, grading="reference")
    with pytest.raises(ValueError, match="multiple-choice ground truth"):
        compute_score("gpqa_diamond", "\\boxed{A}", "42", grading="reference")


def test_reference_ground_truth_is_compared_raw() -> None:
    """The recipe passes the row's string untouched; other shapes become strings (any answer of a list)."""
    assert compute_score("math_dapo", "\\boxed{42}", " 42", grading="reference")["score"] == -1.0
    assert compute_score("math_dapo", "\\boxed{42}", 42, grading="reference")["score"] == 1.0
    assert compute_score("math_dapo", "\\boxed{-2}", ["2", "-2"], grading="reference")["score"] == 1.0
    assert compute_score("math_dapo", None, "42", grading="reference")["score"] == -1.0  # type: ignore[arg-type]


async def test_async_route_and_verl_hook_pass_the_mode() -> None:
    code_gt = json.dumps([{"input": "[1, 3]", "output": "[[1, 2], [3, 4]]", "testtype": "functional"}])
    code = "```python\nclass Solution:\n    def f(self, a):\n        return [(x, x + 1) for x in a]\n```"
    ref = await compute_score_async("livecodebench", code, code_gt, {"fn_name": "f"}, grading="reference")
    lenient = await compute_score_async("livecodebench", code, code_gt, {"fn_name": "f"}, grading="lenient")
    assert (ref["score"], ref["grading"]) == (0.0, "reference")
    assert (lenient["score"], lenient["grading"]) == (1.0, "lenient")
    hooked = await verl_reward.compute_score("math_dapo", SPACED, "42", {}, grading="reference")
    assert hooked["score"] == -1.0 and hooked["grading"] == "reference"
    assert set(verl_reward.REWARD_STAT_KEYS) <= set(hooked)


def test_config_modes() -> None:
    """The paper configs grade as the reference graders; the testbed keeps today's lenient grading."""
    for config, grading in [("config/paper-qwen3-4b.yaml", "reference"), ("config/paper-qwen2.5-7b.yaml", "reference"),
                            ("config/config.yaml", "lenient"), ("config/smoke.yaml", "lenient")]:
        assert load_config(ROOT / config)["reward"]["grading"] == grading, config


@pytest.mark.parametrize("grading", ["reference", "lenient"])
def test_config_mode_reaches_the_verl_reward_kwargs(grading: str, tmp_path) -> None:
    cfg = load_config(ROOT / "config/paper-qwen3-4b.yaml")
    cfg["reward"]["grading"] = grading
    overrides = build_ppo_overrides(cfg, "cleaner", train_files="/data/train.parquet", val_files="/data/val.parquet",
                                    output_dir=tmp_path, model_path="/models/init")
    assert f"+reward.custom_reward_function.reward_kwargs.grading={grading}" in overrides


def test_eval_summaries_name_their_grader() -> None:
    stats = {"tool_calls_after": 0, "tool_failures_after": 0, "tool_calls_before": 0, "tool_failures_before": 0,
             "first_attempt_failures": 0, "first_attempt_calls": 0, "response_length": 1, "turns": 1,
             "finish_reason": "answer", "triggered": 0, "recovered": 0, "failed": 0, "shallow": 0, "deep": 0,
             "retries": 0}
    record = {"problem": 0, "data_source": "aime25", "acc": True, "stats": stats, "wall_s": 0.0}
    assert summarize_records([{**record, "grading": "reference"}], k=1)["grading"] == "reference"
    mixed = summarize_records([{**record, "grading": "reference"}, {**record, "problem": 1, "grading": "lenient"}], k=1)
    assert mixed["grading"] == ["lenient", "reference"]
    dumped = records_from_generations([{"input": "p", "output": "o", "gts": "42", "score": 1.0, "acc": True,
                                        "data_source": "aime25", "grading": "reference"}])
    assert dumped[0]["grading"] == "reference"
