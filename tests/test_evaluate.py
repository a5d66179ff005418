"""Agentic evaluation (CLEANER.md "Evaluation protocol"): Pass@k estimator, metric aggregation, end-to-end run."""

from __future__ import annotations

import itertools
import json
from math import comb
from typing import Sequence

import pytest

from cleaner.agent import AgentConfig
from cleaner.chat import END_OF_TURN, ChatFormat
from cleaner.engines.base import GenerationOutput, SamplingParams
from cleaner.evaluate import evaluate_rows, load_rows, pass_at_k, summarize_records, write_eval_outputs
from cleaner.saar import SaarConfig


# ------------------------------------------------------------------------------------------------ pass@k
def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (the first c correct) that hold at least one correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)
    assert pass_at_k(16, 4, 1) == pytest.approx(4 / 16)  # Pass@1 is plain accuracy
    assert pass_at_k(32, 1, 16) == pytest.approx(1 - comb(31, 16) / comb(32, 16))


def test_pass_at_k_rejects_bad_counts():
    for n, c, k in ((3, 4, 1), (3, -1, 1), (3, 1, 0), (2, 1, 3)):
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


# ------------------------------------------------------------------------------------------------ summaries
def stats(calls: int, failures: int, *, before: tuple[int, int] | None = None, length: int = 100, turns: int = 2,
          finish: str = "answer", saar: dict | None = None, first: tuple[int, int] | None = None) -> dict:
    cb, fb = before if before is not None else (calls, failures)
    fc, ff = first if first is not None else (cb, fb)
    out = {"tool_calls_after": calls, "tool_failures_after": failures, "tool_calls_before": cb,
           "tool_failures_before": fb, "first_attempt_calls": fc, "first_attempt_failures": ff,
           "response_length": length, "turns": turns, "finish_reason": finish,
           "triggered": 0, "recovered": 0, "failed": 0, "shallow": 0, "deep": 0, "retries": 0}
    out.update(saar or {})
    return out


def record(problem: int, acc: bool, st: dict, source: str, wall: float = 1.0) -> dict:
    return {"problem": problem, "acc": acc, "stats": st, "data_source": source, "wall_s": wall}


def test_summarize_records_known_numbers():
    recs = [
        # problem 0 (aime): 3 of 4 correct; one trajectory failed a call and still got it right.
        record(0, True, stats(1, 0), "aime"),
        record(0, False, stats(2, 1, length=300, turns=3, finish="no_answer"), "aime", wall=3.0),
        record(0, True, stats(2, 1), "aime"),
        record(0, True, stats(1, 0), "aime"),
        # problem 1 (aime): none correct.
        record(1, False, stats(0, 0, turns=1), "aime"),
        record(1, False, stats(3, 2, finish="max_turns"), "aime"),
        record(1, False, stats(1, 0), "aime"),
        record(1, False, stats(1, 0), "aime"),
        # problem 2 (gpqa): 1 of 4; SAAR purified one trajectory (2 failures before, 0 after).
        record(2, True, stats(1, 0, before=(3, 2), first=(1, 1),
                              saar={"triggered": 1, "recovered": 1, "shallow": 1, "deep": 1, "retries": 2}), "gpqa"),
        record(2, False, stats(1, 0), "gpqa"),
        record(2, False, stats(1, 0), "gpqa"),
        record(2, False, stats(1, 0), "gpqa"),
    ]
    s = summarize_records(recs, k=2)
    assert s["problems"] == 3 and s["trajectories"] == 12
    assert s["pass@1"] == pytest.approx((0.75 + 0.0 + 0.25) / 3)
    assert s["pass@2"] == pytest.approx((1.0 + 0.0 + (1 - comb(3, 2) / comb(4, 2))) / 3)
    assert s["tool_calls_per_trajectory"] == pytest.approx(15 / 12)
    assert s["tool_failures_per_trajectory"] == pytest.approx(4 / 12)
    assert s["tool_calls_per_trajectory_before"] == pytest.approx(17 / 12)
    assert s["tool_failures_per_trajectory_before"] == pytest.approx(6 / 12)
    assert s["first_attempt_failure_rate"] == pytest.approx(5 / 15)
    # Trajectories with a failed call: three in aime (one right), one in gpqa (right): recovery 2 / 4.
    assert s["trajectories_with_failure"] == 4 and s["recovered_correct_rate"] == pytest.approx(0.5)
    # The other 8 trajectories had no failed call; 2 of them ended correct (4 correct in all, 2 with a failure).
    assert s["clean_correct_rate"] == pytest.approx(2 / 8)
    assert s["response_length"] == pytest.approx((11 * 100 + 300) / 12)
    assert s["turns"] == pytest.approx((10 * 2 + 3 + 1) / 12)
    assert s["finish_reasons"] == {"answer": 10, "max_turns": 1, "no_answer": 1}
    assert s["saar"] == {"triggered": 1, "recovered": 1, "failed": 0, "shallow": 1, "deep": 1, "retries": 2}
    # Mean trajectory wall time per problem, averaged over problems.
    assert s["wall_s_per_problem"] == pytest.approx(((1 + 3 + 1 + 1) / 4 + 1 + 1) / 3)

    by = s["by_data_source"]
    assert set(by) == {"aime", "gpqa"}
    assert by["aime"]["pass@1"] == pytest.approx(0.375) and by["aime"]["pass@2"] == pytest.approx(0.5)
    assert by["gpqa"]["pass@1"] == pytest.approx(0.25) and by["gpqa"]["pass@2"] == pytest.approx(0.5)
    assert by["aime"]["tool_failures_per_trajectory"] == pytest.approx(4 / 8)
    assert by["gpqa"]["tool_failures_per_trajectory_before"] == pytest.approx(2 / 4)
    assert by["aime"]["trajectories_with_failure"] == 3 and by["aime"]["recovered_correct_rate"] == pytest.approx(1 / 3)


def test_summarize_single_source_and_short_problems():
    recs = [record(0, True, stats(1, 0), "aime"), record(0, False, stats(1, 0), "aime"),
            record(1, True, stats(1, 0), "aime")]  # problem 1 has fewer than k samples
    s = summarize_records(recs, k=2)
    assert "by_data_source" not in s
    assert s["pass@1"] == pytest.approx((0.5 + 1.0) / 2)
    assert s["pass@2"] == pytest.approx(1.0)  # only problem 0 has k samples
    assert s["trajectories_with_failure"] == 0 and s["recovered_correct_rate"] is None
    assert s["clean_correct_rate"] == pytest.approx(2 / 3)
    s1 = summarize_records(recs, k=1)
    assert s1["pass@1"] == pytest.approx(0.75)


# ------------------------------------------------------------------------------------------------ end to end
class ConversationGenerator:
    """Scripted generator for concurrent samples of the SAME prompt: each new trajectory (a context that
    extends no earlier output) takes the next unused script of its question; later requests are matched to
    their trajectory by prefix, so the assignment does not depend on how the requests interleave."""

    def __init__(self, fmt: ChatFormat, scripts: dict[str, list[list[str]]]):
        self.fmt = fmt
        self.scripts = scripts
        self.started = {q: 0 for q in scripts}
        self.live: list[tuple[list[int], str, int, int]] = []  # (context + output so far, q, script, turn)
        self.requests = 0

    async def generate(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> GenerationOutput:
        self.requests += 1
        ctx = list(prompt_ids)
        text = self.fmt.decode(ctx)
        q = next(q for q in self.scripts if f"<|im_start|>user\n{q}{END_OF_TURN}" in text)
        match = [i for i, (seen, qq, _, _) in enumerate(self.live) if qq == q and ctx[: len(seen)] == seen]
        if match:
            assert len(match) == 1
            _, _, script, turn = self.live.pop(match[0])
            turn += 1
        else:
            script, turn = self.started[q], 0
            self.started[q] += 1
        ids = self.fmt.encode(self.scripts[q][script][turn])
        self.live.append((ctx + ids, q, script, turn))
        return GenerationOutput(ids, None, "stop")


def call(fmt: ChatFormat, reasoning: str, code: str) -> str:
    return fmt.assistant_text(reasoning, code)


async def test_evaluate_rows_end_to_end(chat_format, tmp_path):
    from cleaner.sandbox import Sandbox

    fmt = chat_format
    q0, q1 = "What is 6*7?", "What is 2+2?"
    scripts = {
        # Problem 0: both samples correct, one after a failed call.
        q0: [[call(fmt, "Compute.", "print(6*7)"), "\\boxed{42}" + END_OF_TURN],
             [call(fmt, "Compute.", "print(undefined_name)"), call(fmt, "Retry.", "print(6 * 7)"),
              "It is \\boxed{42}" + END_OF_TURN]],
        # Problem 1: one correct, one wrong without the tool.
        q1: [[call(fmt, "Add.", "print(2+2)"), "\\boxed{4}" + END_OF_TURN],
             ["Surely \\boxed{5}" + END_OF_TURN]],
    }
    rows = [
        {"data_source": "toolcalc/product", "prompt": [{"role": "user", "content": q0}],
         "reward_model": {"style": "rule", "ground_truth": "42"}, "extra_info": {"index": "test-0"}},
        {"data_source": "toolcalc/sum", "prompt": [{"role": "user", "content": q1}],
         "reward_model": {"style": "rule", "ground_truth": "4"}, "extra_info": {"index": "test-1"}},
    ]
    cfg = AgentConfig(saar=SaarConfig(enabled=False), tool_timeout_s=5.0, tool_memory_mb=512)
    gen = ConversationGenerator(fmt, scripts)
    done: list[int] = []
    async with Sandbox(workers=2) as box:
        summary, records = await evaluate_rows(gen, box, fmt, rows, cfg, k=2, seed=3, progress=done.append)

    assert len(records) == 4 and sum(done) == 4 and gen.requests == 3 + 2 + 1 + 2
    assert [(r["problem"], r["sample"]) for r in records] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [r["index"] for r in records] == ["test-0", "test-0", "test-1", "test-1"]
    by_answer = {(r["problem"], r["answer"]): r for r in records}
    assert set(by_answer) == {(0, "42"), (1, "4"), (1, "5")}
    assert by_answer[(1, "4")]["acc"] is True and by_answer[(1, "4")]["score"] == 1.0
    assert by_answer[(1, "5")]["acc"] is False and by_answer[(1, "5")]["score"] == -1.0
    assert all(r["acc"] for r in records if r["problem"] == 0)

    assert summary["pass@1"] == pytest.approx((1.0 + 0.5) / 2)
    assert summary["pass@2"] == pytest.approx(1.0)
    assert summary["tool_calls_per_trajectory"] == pytest.approx((1 + 2 + 1 + 0) / 4)
    assert summary["tool_failures_per_trajectory"] == pytest.approx(1 / 4)
    assert summary["trajectories_with_failure"] == 1 and summary["recovered_correct_rate"] == 1.0
    assert summary["finish_reasons"] == {"answer": 4}
    assert summary["by_data_source"]["toolcalc/sum"]["pass@1"] == pytest.approx(0.5)
    failed = next(r for r in records if r["stats"]["tool_failures_after"] == 1)
    assert "NameError" in failed["response_text"]
    assert summary["saar"]["retries"] == 0  # SAAR off at test time
    assert summary["saar_at_test_time"] is False and summary["wall_s_per_problem"] > 0

    out_json, out_jsonl = tmp_path / "eval.json", tmp_path / "traj.jsonl"
    write_eval_outputs(summary, records, out_json, out_jsonl)
    assert json.loads(out_json.read_text())["pass@1"] == summary["pass@1"]
    assert [json.loads(line)["answer"] for line in out_jsonl.read_text().splitlines()] == [r["answer"] for r in records]
    with pytest.raises(ValueError, match="k must be"):
        await evaluate_rows(gen, None, fmt, rows, cfg, k=0, seed=0)


def test_load_rows(tmp_path):
    from cleaner.data.schema import write_rl_parquet
    from cleaner.testbed.data import build_rl_row, generate_problems, TestbedDataConfig as DataConfig

    problems = generate_problems(DataConfig(n_sft=0, n_rl_train=0, n_val=0, n_test=5))["test"]
    rows = [build_rl_row(p, split="test", index=i) for i, p in enumerate(problems)]
    path = write_rl_parquet(rows, tmp_path / "test.parquet")
    loaded = load_rows(path)
    assert [r["reward_model"]["ground_truth"] for r in loaded] == [str(p.answer) for p in problems]
    assert len(load_rows(path, limit=2)) == 2


# ------------------------------------------------------------------------------------------------ SAAR at test time
def _arm_config(arm: dict, **eval_section) -> dict:
    from cleaner.config import resolve_experiment, validate_config

    cfg = {"name": "t", "experiments": {"arm": arm}, "eval": eval_section}
    return resolve_experiment(validate_config(cfg), "arm")


def test_test_time_saar_is_on_for_every_arm_with_its_own_settings():
    from cleaner.evaluate import eval_agent_config

    baseline = _arm_config({"saar": {"enabled": False, "gamma": 0.9}}, saar_at_test_time=True,
                           saar={"gamma": 0.3, "max_retries": 2})
    cleaner = _arm_config({"saar": {"enabled": True, "gamma": 0.9, "rollback_probability": 0.7,
                                    "similarity_on": "call"}}, saar_at_test_time=True, saar={"gamma": 0.3, "max_retries": 2})
    for cfg in (baseline, cleaner):
        saar = eval_agent_config(cfg).saar
        assert saar.enabled  # the baseline too, although its training saar is off
        assert (saar.gamma, saar.max_retries, saar.rollback_probability, saar.similarity_on) == (0.3, 2, 1.0, "code")
    assert not eval_agent_config(cleaner, saar_at_test_time=False).saar.enabled
    assert not eval_agent_config(_arm_config({"saar": {"enabled": True}})).saar.enabled  # default: off
    assert eval_agent_config(_arm_config({}), saar_at_test_time=True).saar.enabled


def test_validation_saar_follows_test_time_unless_set():
    from cleaner.evaluate import validation_agent_config

    assert validation_agent_config(_arm_config({}, saar_at_test_time=True)).saar.enabled
    assert not validation_agent_config(_arm_config({}, saar_at_test_time=True, saar_at_validation=False)).saar.enabled
    assert validation_agent_config(_arm_config({}, saar_at_validation=True)).saar.enabled
    assert not validation_agent_config(_arm_config({"saar": {"enabled": True}})).saar.enabled


async def test_evaluate_rows_with_saar_purifies_and_says_so(chat_format):
    """SAAR on at test time: the failed call is rolled back, the summary says saar_at_test_time true."""
    from test_agent import ScriptedGenerator  # replays turns in order, whatever the (spliced) context

    from cleaner.sandbox import Sandbox

    fmt = chat_format
    q = "What is 6*7?"
    scripts = {q: [call(fmt, "Compute.", "print(6*undefined_name)"), call(fmt, "Compute.", "print(6*7)"),
                   "\\boxed{42}" + END_OF_TURN]}
    rows = [{"data_source": "toolcalc/product", "prompt": [{"role": "user", "content": q}],
             "reward_model": {"style": "rule", "ground_truth": "42"}, "extra_info": {"index": "test-0"}}]
    cfg = AgentConfig(saar=SaarConfig(enabled=True), tool_timeout_s=5.0, tool_memory_mb=512)
    async with Sandbox(workers=1) as box:
        summary, records = await evaluate_rows(gen := ScriptedGenerator(fmt, scripts), box, fmt, rows, cfg, k=1,
                                               seed=0)
    assert summary["saar_at_test_time"] is True and summary["pass@1"] == 1.0
    assert summary["saar"]["recovered"] == 1 and summary["tool_failures_per_trajectory"] == 0
    assert "undefined_name" not in records[0]["response_text"] and len(gen.calls) == 3
