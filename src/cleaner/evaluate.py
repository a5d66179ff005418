"""Agentic evaluation: the agent loop (with the tool) on an eval split, k samples per problem.

Metrics (CLEANER.md, "Evaluation protocol"): Pass@1 = mean accuracy over the k samples of each problem, averaged
over problems (avg@k); Pass@k with the unbiased estimator of Chen et al. (2021); tool calls and tool failures
per trajectory; response length; SAAR statistics when SAAR is on at test time; wall time per problem.
Writes a JSON summary and a JSONL with every trajectory.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from cleaner.agent import AgentConfig, Trajectory, run_agent
from cleaner.chat import ChatFormat
from cleaner.engines.base import Generator

if TYPE_CHECKING:
    from cleaner.saar import SaarConfig

__all__ = ["eval_agent_config", "evaluate_rows", "pass_at_k", "saar_at_validation", "score_trajectory",
           "summarize_records", "test_time_saar", "validation_agent_config"]


def test_time_saar(cfg: dict[str, Any], *, enabled: bool) -> "SaarConfig":
    """SAAR at test time: the ``eval.saar`` block (its own gamma, K, p, similarity; not the training ``saar``
    section, so every arm of a comparison is evaluated with the same rollback), on or off as asked."""
    from cleaner.saar import SaarConfig

    return SaarConfig.from_dict({**(cfg["eval"].get("saar") or {}), "enabled": bool(enabled)})


def eval_agent_config(cfg: dict[str, Any], *, saar_at_test_time: bool | None = None) -> AgentConfig:
    """The agent of evaluation and validation: rollout limits, eval sampling (temperature, top-p), and SAAR
    per ``saar_at_test_time`` (default: the config's ``eval.saar_at_test_time``) with the ``eval.saar`` settings.

    The reference validates and evaluates CLEANER with SAAR on; we evaluate both ways (eval/ and eval_saar/)."""
    ev = cfg["eval"]
    rollout = dict(cfg["rollout"])
    rollout.update({k: ev[k] for k in ("temperature", "top_p") if k in ev})
    on = bool(ev.get("saar_at_test_time")) if saar_at_test_time is None else saar_at_test_time
    return AgentConfig.from_dict(rollout, saar=test_time_saar(cfg, enabled=on))


def saar_at_validation(cfg: dict[str, Any]) -> bool:
    """Whether the validation runs during RL use SAAR: ``eval.saar_at_validation`` (null: as at test time).
    Both engines read it here (embedded trainer; verl's ``+cleaner.val_saar`` block)."""
    ev = cfg["eval"]
    on = ev.get("saar_at_validation")
    return bool(ev.get("saar_at_test_time")) if on is None else bool(on)


def validation_agent_config(cfg: dict[str, Any]) -> AgentConfig:
    """The agent of the validation runs during RL: SAAR per :func:`saar_at_validation`."""
    return eval_agent_config(cfg, saar_at_test_time=saar_at_validation(cfg))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"Pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def score_trajectory(row: dict[str, Any], traj: Trajectory, grading: str | None = None) -> dict[str, Any]:
    """The trajectory's reward under ``grading`` (config ``reward.grading``; None: the rewards' default)."""
    from cleaner.rewards import compute_score

    res = compute_score(row["data_source"], traj.response_text, row["reward_model"]["ground_truth"],
                        row.get("extra_info"), grading=grading)
    return {"score": float(res["score"]), "acc": bool(res["acc"]), "grading": res["grading"]}


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize_records(records: Sequence[dict[str, Any]], *, k: int) -> dict[str, Any]:
    """Aggregate per-trajectory records (``problem``, ``acc``, ``stats``, ``data_source``) into the metrics."""
    by_problem: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_problem[r["problem"]].append(r)

    def block(recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
        probs: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for r in recs:
            probs[r["problem"]].append(r)
        p1 = [_mean([float(x["acc"]) for x in rs]) for rs in probs.values()]
        pk = [pass_at_k(len(rs), sum(x["acc"] for x in rs), k) for rs in probs.values() if len(rs) >= k]
        st = [r["stats"] for r in recs]
        out = {
            "problems": len(probs),
            "trajectories": len(recs),
            "pass@1": _mean(p1),
            f"pass@{k}": _mean(pk),
            "tool_calls_per_trajectory": _mean([s["tool_calls_after"] for s in st]),
            "tool_failures_per_trajectory": _mean([s["tool_failures_after"] for s in st]),
            "tool_calls_per_trajectory_before": _mean([s["tool_calls_before"] for s in st]),
            "tool_failures_per_trajectory_before": _mean([s["tool_failures_before"] for s in st]),
            "first_attempt_failure_rate": (
                sum(s["first_attempt_failures"] for s in st) / max(1, sum(s["first_attempt_calls"] for s in st))
            ),
            # The trajectory's first tool call failed: comparable across arms (with SAAR on at test time,
            # or in the baseline, later calls include the model's own fixes).
            "first_call_failure_rate": _mean([float(s["first_call_failed"]) for s in st
                                              if s.get("first_call_failed") is not None]),
            "response_length": _mean([s["response_length"] for s in st]),
            "turns": _mean([s["turns"] for s in st]),
            "finish_reasons": dict(sorted(_count(s["finish_reason"] for s in st).items())),
        }
        # Recovery: trajectories with at least one failed call that still ended correct.
        with_fail = [r for r in recs if r["stats"]["tool_failures_before"] > 0]
        out["trajectories_with_failure"] = len(with_fail)
        out["recovered_correct_rate"] = _mean([float(r["acc"]) for r in with_fail])
        # The same rate without any failed call: the regime gap (recovering vs clean trajectories) is the difference.
        out["clean_correct_rate"] = _mean([float(r["acc"]) for r in recs if r["stats"]["tool_failures_before"] == 0])
        saar = {n: sum(s[n] for s in st) for n in ("triggered", "recovered", "failed", "shallow", "deep", "retries")}
        out["saar"] = saar
        return out

    summary = block(records)
    sources = sorted({r["data_source"] for r in records})
    if len(sources) > 1:
        summary["by_data_source"] = {src: block([r for r in records if r["data_source"] == src]) for src in sources}
    summary["wall_s_per_problem"] = _mean([sum(r["wall_s"] for r in rs) / len(rs) for rs in by_problem.values()])
    gradings = sorted({str(r["grading"]) for r in records if r.get("grading")})
    summary["grading"] = gradings[0] if len(gradings) == 1 else gradings or None  # which grader made the numbers
    return summary


def _count(items) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for x in items:
        out[x] += 1
    return dict(out)


async def evaluate_rows(
    gen: Generator,
    sandbox: Any,
    fmt: ChatFormat,
    rows: Sequence[dict[str, Any]],
    cfg: AgentConfig,
    *,
    k: int,
    seed: int,
    progress: Callable[[int], None] | None = None,
    concurrency: int = 64,
    grading: str | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run k samples per row, score them under ``grading``, and return (summary, per-trajectory records)."""
    if k < 1:
        raise ValueError("k must be >= 1")
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int, j: int) -> dict[str, Any]:
        row = rows[i]
        async with sem:
            t0 = time.perf_counter()
            traj = await run_agent(gen, sandbox, fmt, row["prompt"], cfg, seed=seed * 1_000_003 + i * 1009 + j)
            wall = time.perf_counter() - t0
        scored = await asyncio.to_thread(score_trajectory, row, traj, grading)
        if progress is not None:
            progress(1)
        return {
            "problem": i,
            "sample": j,
            "index": (row.get("extra_info") or {}).get("index", i),
            "data_source": row["data_source"],
            "ground_truth": row["reward_model"]["ground_truth"],
            "answer": traj.answer,
            **scored,
            "stats": traj.stats,
            "response_text": traj.response_text,
            "wall_s": wall,
        }

    records = list(await asyncio.gather(*(one(i, j) for i in range(len(rows)) for j in range(k))))
    summary = summarize_records(records, k=k)
    summary["saar_at_test_time"] = cfg.saar.enabled  # the report compares wall_s_per_problem across the two modes
    return summary, records


def write_eval_outputs(summary: dict[str, Any], records: Sequence[dict[str, Any]], out_json: Path,
                       out_jsonl: Path | None) -> None:
    from cleaner.data.schema import write_json_atomic, write_jsonl_atomic

    write_json_atomic(summary, out_json)
    if out_jsonl is not None:
        write_jsonl_atomic(records, out_jsonl)


def load_rows(path: str | Path, *, limit: int | None = None) -> list[dict[str, Any]]:
    from cleaner.data.schema import read_parquet_rows

    rows = read_parquet_rows(path)
    return rows[:limit] if limit else rows


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
