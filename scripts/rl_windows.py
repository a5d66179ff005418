#!/usr/bin/env python3
"""Per-seed means of RL training metrics over windows of steps, from the per-step logs.

    python scripts/rl_windows.py docs/results/testbed-ablations/runs paper_baseline_4upd paper_cleaner_4upd
    python scripts/rl_windows.py RUNS EXP [EXP ...] --windows 1-20,101-120 --metrics tool_failures_before,grad_norm

Reads ``<runs>/<exp>/seed*/rl/metrics.jsonl`` (full or exported). Training metrics are averaged over the steps of
each window; validation Pass@1 (logged every ``rl.val_every`` steps) over the validation points inside the window,
and ``val0`` is the validation before the first step. Prints one markdown row per experiment x seed.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


DEFAULT_METRICS = ("acc", "tool_failures_before", "saar_deep", "logp_spliced", "grad_norm", "clipfrac",
                   "ppo_kl", "zero_adv_group_frac", "response_length")


def parse_windows(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        try:
            lo, hi = (int(x) for x in part.split("-"))
        except ValueError:
            raise SystemExit(f"--windows: {part!r} is not a step range like 1-20") from None
        if lo > hi:
            raise SystemExit(f"--windows: {part!r} ends before it starts")
        out.append((lo, hi))
    return out


def load(path: Path) -> tuple[dict[int, dict], dict[int, float]]:
    """Training rows by step and validation Pass@1 by step (a step can carry both, or validation alone). Rows are
    read as the report reads them (``cleaner.report.read_metrics``: a line cut by a kill is skipped)."""
    from cleaner.report import read_metrics

    train: dict[int, dict] = {}
    val: dict[int, float] = {}
    for row in read_metrics(path):
        step = row.get("step")
        if step is None:
            continue
        if "val/pass@1" in row:
            val[int(step)] = float(row["val/pass@1"])
        if "acc" in row:
            train[int(step)] = row
    return train, val


def mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("experiments", nargs="+")
    ap.add_argument("--windows", default="1-20,41-60,101-120", type=parse_windows)
    ap.add_argument("--metrics", default=",".join(DEFAULT_METRICS))
    args = ap.parse_args(argv)
    metrics = [m for m in args.metrics.split(",") if m]
    cols = ["val0"] + [f"val {lo}-{hi}" for lo, hi in args.windows]
    cols += [f"{m} {lo}-{hi}" for m in metrics for lo, hi in args.windows]
    print("| experiment | seed | " + " | ".join(cols) + " |")
    print("|---|---:|" + "---:|" * len(cols))
    found = 0
    for exp in args.experiments:
        paths = sorted((args.runs / exp).glob("seed*/rl/metrics.jsonl"))
        if not paths:
            print(f"no {args.runs / exp}/seed*/rl/metrics.jsonl", file=sys.stderr)
        for path in paths:
            found += 1
            train, val = load(path)
            cells = [val.get(0, float("nan"))]
            cells += [mean([v for s, v in val.items() if lo <= s <= hi]) for lo, hi in args.windows]
            for m in metrics:
                cells += [mean([train[s].get(m) for s in train if lo <= s <= hi]) for lo, hi in args.windows]
            seed = path.parent.parent.name.removeprefix("seed")
            print(f"| {exp} | {seed} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())
