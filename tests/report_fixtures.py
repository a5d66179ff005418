"""A synthetic results directory in the pipeline's layout, for the report and status tests (no DAG run).

Three seeds, arms ``baseline`` and ``cleaner`` (the latter also evaluated with SAAR at test time), one split,
per-problem accuracies chosen so the paired difference is known in advance.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
N_PROBLEMS, K = 12, 4
# Per arm: probability a sample is correct; the cleaner arm is clearly better, so its paired interval excludes 0.
P_CORRECT = {("baseline", "eval"): 0.35, ("cleaner", "eval"): 0.8, ("cleaner", "eval_saar"): 0.85}
WALL_S = {"eval": 0.5, "eval_saar": 0.8}


def synthetic_config(tmp: Path, name: str = "synth", *, baseline: str = "baseline", split: str = "test",
                     k: int = K, regime: str | None = None) -> tuple[dict[str, Any], Path]:
    """smoke.yaml with arms ``baseline`` and ``cleaner``; with ``regime`` also ``<regime>_baseline`` and
    ``<regime>_cleaner`` in that testbed data regime."""
    from cleaner.config import load_config

    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    cfg.update(name=name, seeds=[0, 1, 2])
    cfg["experiments"] = {baseline: {}, "cleaner": {"saar": {"enabled": True}}}
    if regime:
        cfg["regimes"] = {regime: {"testbed": {"data": {"recovery_demos": 1.0}}}}
        cfg["experiments"].update({f"{regime}_baseline": {"regime": regime},
                                   f"{regime}_cleaner": {"regime": regime, "saar": {"enabled": True}}})
    cfg["eval"].update(k=k, splits=[split])
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path), path


def _records(p_correct: float, rng: random.Random, wall: float, fail_rate: float, k: int) -> list[dict[str, Any]]:
    out = []
    for problem in range(N_PROBLEMS):
        for sample in range(k):
            fails = int(rng.random() < fail_rate)
            out.append({"problem": problem, "sample": sample, "data_source": "toolcalc",
                        "acc": rng.random() < p_correct, "score": 0.0, "wall_s": wall,
                        "stats": {"tool_calls_after": 1 + fails, "tool_failures_after": fails,
                                  "tool_failures_before": fails, "response_length": 100 + 10 * fails}})
    return out


def _summary(records: list[dict[str, Any]], mode: str, grading: str | None, k: int) -> dict[str, Any]:
    from cleaner.evaluate import pass_at_k

    by_problem: dict[int, list[bool]] = {}
    for r in records:
        by_problem.setdefault(r["problem"], []).append(r["acc"])
    n = len(records)
    summ = {"pass@1": sum(sum(v) / len(v) for v in by_problem.values()) / len(by_problem),
            f"pass@{k}": sum(pass_at_k(len(v), sum(v), k) for v in by_problem.values()) / len(by_problem),
            "tool_failures_per_trajectory": sum(r["stats"]["tool_failures_after"] for r in records) / n,
            "tool_calls_per_trajectory": sum(r["stats"]["tool_calls_after"] for r in records) / n,
            "response_length": sum(r["stats"]["response_length"] for r in records) / n,
            "first_call_failure_rate": 0.2, "recovered_correct_rate": 0.5,
            "clean_correct_rate": 0.7, "k": k,
            "saar_at_test_time": mode == "eval_saar", "wall_s_per_problem": WALL_S[mode]}
    if grading:
        summ["grading"] = grading
    return summ


def write_results(results: Path, *, grading: str | None = "reference", rl_steps: int = 6, saar_eval: bool = True,
                  baseline: str = "baseline", split: str = "test", k: int = K, regime: str | None = None,
                  acc_shift: float = 0.0) -> None:
    """eval/, eval_saar/ (cleaner only), rl/metrics.jsonl, benchmarks/ and logs/ under ``results``.

    With ``regime``: experiments ``<regime>_baseline`` / ``<regime>_cleaner`` and the SFT start under
    ``regimes/<regime>/sft/`` (the layout of a testbed data regime); ``acc_shift`` moves every probability."""
    prefix = f"{regime}_" if regime else ""
    for (arm, mode), p in P_CORRECT.items():
        p = min(1.0, p + acc_shift)
        exp = prefix + (baseline if arm == "baseline" else arm)
        if mode == "eval_saar" and not saar_eval:
            continue
        for seed in (0, 1, 2):
            rng = random.Random(f"{arm}:{mode}:{seed}")
            records = _records(p, rng, WALL_S[mode], 0.1 if arm == "cleaner" else 0.4, k)
            d = results / exp / f"seed{seed}" / mode
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{split}.json").write_text(json.dumps(_summary(records, mode, grading, k)))
            (d / f"{split}.trajectories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            if mode == "eval":
                _write_rl(results / exp / f"seed{seed}" / "rl", arm, seed, rl_steps, acc_shift)
                _write_job(results, "rl", f"{exp}_seed{seed}", 30.0 + seed)
                _write_job(results, "eval", f"{exp}_seed{seed}_{split}", 4.0)
    sft_dir = results / "regimes" / regime / "sft" if regime else results / "sft"
    for mode in ("eval", "eval_saar") if saar_eval else ("eval",):
        (sft_dir / mode).mkdir(parents=True, exist_ok=True)
        sft = _records(0.3 + acc_shift, random.Random(f"sft:{regime}:{mode}"), WALL_S[mode], 0.4, k)
        (sft_dir / mode / f"{split}.json").write_text(json.dumps(_summary(sft, mode, grading, k)))
        (sft_dir / mode / f"{split}.trajectories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))
    _write_job(results, "sft", f"sft_{regime}" if regime else "sft", 120.0)


def _write_rl(rl: Path, exp: str, seed: int, steps: int, acc_shift: float = 0.0) -> None:
    rl.mkdir(parents=True, exist_ok=True)
    rows = []
    for step in range(1, steps + 1):
        acc = 0.3 + 0.05 * step + (0.1 if exp == "cleaner" else 0.0) + 0.01 * seed + acc_shift
        rows.append({"step": step, "reward": acc, "acc": acc, "step_time_s": 2.0, "elapsed_s": 2.0 * step,
                     "tool_failures_before": 0.4, "tool_failures_after": 0.05 if exp == "cleaner" else 0.4,
                     "saar_triggered": 0.3 if exp == "cleaner" else 0.0, "saar_recovered": 0.2, "saar_failed": 0.1,
                     "saar_shallow": 0.2, "saar_deep": 0.1, "zero_adv_group_frac": 0.25, "grad_norm": 1.5,
                     **({"val/pass@1": acc, "val/tool_failures": 0.2} if step % 2 == 0 else {})})
    (rl / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (rl / "config.json").write_text(json.dumps({"rl": {"steps": steps}, "seed": seed}))


def _write_job(results: Path, stage: str, job: str, seconds: float) -> None:
    bench = results / "benchmarks" / stage / f"{job}.tsv"
    bench.parent.mkdir(parents=True, exist_ok=True)
    bench.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                     f"{seconds}\t0:00:{int(seconds):02d}\t512.5\t900.0\t500.0\t505.0\t1.0\t2.0\t90.0\t{seconds}\n")
    log = results / "logs" / stage / f"{job}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"{stage}: done\n")
