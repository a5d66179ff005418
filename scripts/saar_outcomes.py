#!/usr/bin/env python3
"""How the test trajectories with a failed call end, by what SAAR did to them (pooled over seeds).

    python scripts/saar_outcomes.py docs/results/testbed-ablations/runs paper_baseline paper_cleaner

For each experiment, from ``<runs>/<exp>/seed*/{eval,eval_saar}/<split>.trajectories.jsonl`` (full or exported):
trajectories without a failed call; with SAAR off, those with a failed call (kept); with SAAR at test time, those
SAAR repaired by a shallow or a deep replacement and those it gave up on after K retries. Count and share correct.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def outcome(stats: dict, mode: str) -> str:
    if stats["tool_failures_before"] == 0:
        return "no failed call"
    if mode == "eval":
        return "failed call kept"
    if stats.get("failed", 0) > 0:
        return "SAAR gave up"
    if stats.get("recovered", 0) > 0:
        return "SAAR deep" if stats.get("deep", 0) > 0 else "SAAR shallow"
    return "failed call, no SAAR"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("experiments", nargs="+")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    print(f"| experiment | eval | outcome | trajectories | correct % |\n|---|---|---|---:|---:|")
    for exp in args.experiments:
        for mode in ("eval", "eval_saar"):
            counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            files = sorted(args.runs.glob(f"{exp}/seed*/{mode}/{args.split}.trajectories.jsonl"))
            for f in files:
                for line in f.read_text().splitlines():
                    if line.strip():
                        r = json.loads(line)
                        c = counts[outcome(r["stats"], mode)]
                        c[0] += 1
                        c[1] += bool(r["acc"])
            for key in sorted(counts):
                n, ok = counts[key]
                print(f"| {exp} ({len(files)} seeds) | {mode} | {key} | {n} | {100 * ok / n:.1f} |")


if __name__ == "__main__":
    main()
