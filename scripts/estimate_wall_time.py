"""Expected wall time of a testbed config's DAG before it starts, from measured per-stage times.

Per RL step it uses, in this order: the ``step_time_s`` (+ ``val_s`` every ``val_every`` steps) of RL runs already
in ``--measured`` (any ``*/seed*/rl/metrics.jsonl`` below it, e.g. an earlier config's results), else the rollout
and update seconds of a ``benchmarks/bench_rl_step.py --out`` file (``--bench``), else ``--step-s``. Arms with
several optimiser updates per step add one no-grad log-prob pass (a third of an update). Stages run
``--cores`` at a time where the rules allow it (RL and eval jobs take one thread; data and SFT take the cores).
Completed outputs are not subtracted: this is the time of a run from scratch. Usage::

    python scripts/estimate_wall_time.py --config config/testbed-ablations.yaml --cores 2 \\
        --measured results/testbed-3seeds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cleaner.config import load_config, resolve_experiment  # noqa: E402

from cleaner.estimate import DEFAULTS, rl_run_seconds  # noqa: E402


def measured_step_s(root: Path | None) -> float | None:
    """Median seconds per RL step (validation spread over its steps) of the runs under ``root``."""
    if root is None or not root.is_dir():
        return None
    per_run = []
    for path in root.glob("*/seed*/rl/metrics.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        steps = [r for r in rows if r.get("step", 0) > 0 and "step_time_s" in r]
        if steps:
            per_run.append(sum(r["step_time_s"] + r.get("val_s", 0.0) for r in steps) / len(steps))
    return statistics.median(per_run) if per_run else None


def bench_step_s(path: Path | None) -> tuple[float, float] | None:
    if path is None:
        return None
    new = json.loads(path.read_text())["summary"]["new"]
    return new["rollout_s"] + new["update_s"], new["update_s"] / (new["rollout_s"] + new["update_s"])


def estimate(cfg: dict, *, cores: int, step_s: float, update_share: float) -> dict[str, float]:
    exps = list(cfg["experiments"])
    regimes = {(cfg["experiments"][e] or {}).get("regime") for e in exps}
    rl_s, evals = 0.0, 0
    for e in exps:
        r = resolve_experiment(cfg, e)
        rl_s += rl_run_seconds(r, step_s=step_s, update_share=update_share) * len(r["seeds"])
        evals += len(r["seeds"]) * len(cfg["eval"]["splits"]) * (2 if r["eval"]["saar_at_test_time"] else 1)
    evals += len(regimes) * len(cfg["eval"]["splits"]) * (2 if cfg["eval"].get("saar_at_test_time") else 1)
    stages = {
        "data": len(regimes) * DEFAULTS["data_s"],
        "sft": len(regimes) * DEFAULTS["sft_s"],
        "rl": rl_s / cores,
        "eval": evals * DEFAULTS["eval_s"] / cores,
    }
    stages["total"] = sum(stages.values())
    return stages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--measured", type=Path, default=None, help="results/<name> of earlier runs (metrics.jsonl)")
    ap.add_argument("--bench", type=Path, default=None, help="JSON written by benchmarks/bench_rl_step.py --out")
    ap.add_argument("--step-s", type=float, default=DEFAULTS["step_s"], help="seconds per RL step otherwise")
    args = ap.parse_args()
    cfg = load_config(args.config)
    step_s, share, source = args.step_s, DEFAULTS["update_share"], "--step-s"
    if (m := measured_step_s(args.measured)) is not None:
        step_s, source = m, f"median of runs in {args.measured}"
    elif (b := bench_step_s(args.bench)) is not None:
        (step_s, share), source = b, f"bench {args.bench}"
    stages = estimate(cfg, cores=args.cores, step_s=step_s, update_share=share)
    print(f"{cfg['name']}: {len(cfg['experiments'])} experiments, {args.cores} cores, {step_s:.1f} s per RL step "
          f"({source})")
    for name, secs in stages.items():
        print(f"  {name:6s} {secs / 3600:6.2f} h")


if __name__ == "__main__":
    main()
