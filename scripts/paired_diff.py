#!/usr/bin/env python3
"""Paired difference of two arms on the test trajectories, any pair (the report compares each arm with its control only).

    python scripts/paired_diff.py docs/results/testbed-ablations/runs paper_cleaner_refsim paper_cleaner
    python scripts/paired_diff.py RUNS TREATMENT CONTROL --eval eval_saar --metric acc

Reads ``<runs>/<arm>/seed<k>/<eval>/test.trajectories.jsonl`` for the seeds both arms have, pairs them by seed and
problem, and prints treatment - control with the two-level bootstrap interval over seeds x problems
(``cleaner.stats.paired_bootstrap_diff``, as in the report). ``--metric`` is a trajectory field (``acc``) or one of
its ``stats`` (``tool_failures_before``); accuracy is printed in points.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def per_problem(path: Path, metric: str):
    from cleaner.stats import per_problem_scores
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}:{n}: not a JSON record ({e.msg})") from None
        if metric not in r:
            stats = r.get("stats") or {}
            if metric not in stats:
                raise SystemExit(f"{path}:{n}: no field {metric!r} in the record or its stats")
            r = {"problem": r["problem"], metric: stats[metric]}
        records.append(r)
    if not records:
        raise SystemExit(f"{path}: no trajectory records")
    return per_problem_scores(records, metric=metric)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("treatment")
    ap.add_argument("control")
    ap.add_argument("--eval", default="eval", help="eval (SAAR off at test time) or eval_saar (on)")
    ap.add_argument("--metric", default="acc")
    ap.add_argument("--split", default="test")
    args = ap.parse_args(argv)
    from cleaner.stats import paired_bootstrap_diff

    def seeds(arm: str) -> set[int]:
        return {int(p.parent.parent.name[4:]) for p in
                (args.runs / arm).glob(f"seed*/{args.eval}/{args.split}.trajectories.jsonl")}
    common = sorted(seeds(args.treatment) & seeds(args.control))
    if not common:
        raise SystemExit(f"no seed has {args.eval}/{args.split}.trajectories.jsonl under both "
                         f"{args.runs / args.treatment} and {args.runs / args.control}")
    f = lambda arm, s: per_problem(args.runs / arm / f"seed{s}" / args.eval / f"{args.split}.trajectories.jsonl",
                                   args.metric)
    t, c = [f(args.treatment, s) for s in common], [f(args.control, s) for s in common]
    try:
        iv = paired_bootstrap_diff(t, c)
    except ValueError as e:
        raise SystemExit(f"{args.treatment} vs {args.control}: {e}") from None
    head = f"{args.treatment} - {args.control} [{args.eval}, {args.metric}, seeds {','.join(map(str, common))}]"
    if args.metric == "acc":
        print(f"{head}: {iv.mean * 100:+.1f} [{iv.lo * 100:+.1f}, {iv.hi * 100:+.1f}] points")
    else:
        print(f"{head}: {iv.mean:+.3f} [{iv.lo:+.3f}, {iv.hi:+.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
