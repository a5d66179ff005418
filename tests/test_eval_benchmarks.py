"""Agentic evaluation (cleaner.evaluate) on rows of the real benchmarks' schema: AIME, GPQA-Diamond and
LiveCodeBench rows built by the real loaders from the offline fixtures, scored by the real judges (the
LiveCodeBench one runs the program against the decoded private tests in the sandbox)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cleaner.agent import AgentConfig
from cleaner.data.eval_sets import load_aime24, load_gpqa_diamond, load_livecodebench
from cleaner.engines.base import GenerationOutput
from cleaner.evaluate import evaluate_rows

FIX = Path(__file__).parent / "fixtures" / "datasets"


class _Fixed:
    """A generator that answers every request with one fixed assistant turn (a final answer, no tool call)."""

    def __init__(self, fmt, text: str):
        self.ids = fmt.encode(text + "<|im_end|>")

    async def generate(self, prompt_ids, sampling):
        return GenerationOutput(list(self.ids), None, "stop")


@pytest.fixture(scope="module")
def rows():
    aime = load_aime24({"path": str(FIX / "aime_2024.parquet")}).rows[:1]
    gpqa = load_gpqa_diamond({"path": str(FIX / "gpqa_diamond.csv")}, seed=0).rows[:1]
    lcb = [r for r in load_livecodebench({"path": str(FIX / "lcb_test6.jsonl")}).rows
           if r["extra_info"]["platform"] == "atcoder"][:1]
    assert aime and gpqa and lcb
    return {"aime": aime[0], "gpqa": gpqa[0], "lcb": lcb[0]}


async def test_known_answers_score_on_every_benchmark(rows, chat_format):
    from cleaner.sandbox import Sandbox

    answers = {
        "aime": f"\\boxed{{{rows['aime']['reward_model']['ground_truth']}}}",
        "gpqa": f"The answer is \\boxed{{{rows['gpqa']['reward_model']['ground_truth']}}}",
        "lcb": "```python\na, b = map(int, input().split())\nprint(a + b)\n```",
    }
    cfg = AgentConfig(max_turns=2, max_response_tokens=256, max_turn_tokens=128, tool_timeout_s=5, tool_memory_mb=512)
    async with Sandbox(workers=2) as box:
        for name, text in answers.items():
            summary, records = await evaluate_rows(_Fixed(chat_format, text), box, chat_format, [rows[name]], cfg,
                                                   k=2, seed=0)
            assert summary["pass@1"] == 1.0 and summary["pass@2"] == 1.0, (name, records[0])
            assert summary["tool_failures_per_trajectory"] == 0
        wrong, _ = await evaluate_rows(_Fixed(chat_format, "```python\nprint(0)\n```"), box, chat_format,
                                       [rows["lcb"]], cfg, k=2, seed=0)
        assert wrong["pass@1"] == 0.0


@pytest.mark.slow
def test_cli_eval_runs_the_tiny_model_on_benchmark_rows(rows, tiny_model_dir, tmp_path):
    import json

    import yaml

    from cleaner.cli import main
    from cleaner.data.schema import write_rl_parquet

    data = tmp_path / "bench.parquet"
    write_rl_parquet(list(rows.values()), data)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "bench", "experiments": {"baseline": {}}, "sandbox_preload": [],
        "rollout": {"max_turns": 2, "max_response_tokens": 96, "max_turn_tokens": 48, "max_prompt_tokens": 4096},
        "eval": {"k": 2},
    }))
    out = tmp_path / "eval.json"
    assert main(["eval", "--config", str(cfg), "--model", str(tiny_model_dir), "--data", str(data),
                 "--out", str(out), "--trajectories", str(tmp_path / "t.jsonl"), "--threads", "1"]) == 0
    summary = json.loads(out.read_text())
    assert summary["problems"] == 3 and summary["trajectories"] == 6
    assert set(summary["by_data_source"]) == {"aime24", "gpqa_diamond", "livecodebench"}
    assert 0.0 <= summary["pass@1"] <= 1.0
