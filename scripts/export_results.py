#!/usr/bin/env python3
"""Copy the finished runs of a results directory into a committable bundle and build the report over it.

    python scripts/export_results.py --config config/testbed-ablations.yaml \
        --results results/testbed-ablations --out docs/results/testbed-ablations

What is copied into ``<out>/runs/`` (the pipeline's own layout, so the report reads it like ``results/``):

- per experiment x seed whose eval finished (``<exp>/seed<k>/eval/<split>.json`` exists): ``rl/metrics.jsonl``,
  ``rl/summary.json``, ``eval*/<split>.json`` and the eval trajectories trimmed to what the report reads
  (problem, sample, data_source, acc, score, wall_s, stats; no text), a few hundred kB per run;
- the SFT start of every regime (``sft/eval*/``, ``regimes/<r>/sft/eval*/``), the data summaries
  (``data/summary.json``, ``regimes/<r>/data/summary.json``) and Snakemake's benchmark files (``benchmarks/``).

Checkpoints, models, data and full trajectories stay out. The export is additive: run it again when more runs
have finished and it adds them (and refreshes the ones already there). Then ``final_metrics.csv``,
``final_metrics.md``, ``training_curves.png`` and ``index.html`` are (re)built in ``<out>/`` and the runs that
are still missing are listed in ``<out>/MISSING.txt``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

TRAJ_KEYS = ("problem", "sample", "data_source", "acc", "score", "wall_s", "stats")


def _copy(src: Path, dst: Path) -> bool:
    if not src.is_file():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return True


def _trim_trajectories(src: Path, dst: Path) -> None:
    """The trajectories file without the text: what the report's paired statistics read."""
    lines = []
    for n, line in enumerate(src.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"{src}:{n}: not JSON ({e}); rerun that eval") from None
        lines.append(json.dumps({k: rec[k] for k in TRAJ_KEYS if k in rec}, sort_keys=True))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(dst.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(dst)


def _copy_eval_dir(src: Path, dst: Path, splits: list[str]) -> int:
    n = 0
    for split in splits:
        if _copy(src / f"{split}.json", dst / f"{split}.json"):
            n += 1
            traj = src / f"{split}.trajectories.jsonl"
            if traj.is_file():
                _trim_trajectories(traj, dst / f"{split}.trajectories.jsonl")
    return n


def export(config_path: Path, results: Path, out: Path) -> dict[str, list[str]]:
    from cleaner.config import load_config, resolve_experiment

    config = load_config(config_path)
    splits = list(config["eval"]["splits"])
    runs = out / "runs"
    done, missing = [], []
    for exp in config["experiments"]:
        for seed in resolve_experiment(config, exp)["seeds"]:
            run = Path(exp) / f"seed{seed}"
            if not all((results / run / "eval" / f"{s}.json").is_file() for s in splits):
                # a run exported earlier (another machine, another session) is in the bundle, not missing
                if not all((runs / run / "eval" / f"{s}.json").is_file() for s in splits):
                    missing.append(str(run))
                continue
            for name in ("metrics.jsonl", "summary.json"):
                _copy(results / run / "rl" / name, runs / run / "rl" / name)
            for mode in ("eval", "eval_saar"):
                _copy_eval_dir(results / run / mode, runs / run / mode, splits)
            done.append(str(run))
    starts = [Path(".")] + [Path("regimes") / r for r in config.get("regimes") or {}]
    for start in starts:
        for mode in ("eval", "eval_saar"):
            if _copy_eval_dir(results / start / "sft" / mode, runs / start / "sft" / mode, splits):
                done.append(str(start / "sft" / mode))
        _copy(results / start / "data" / "summary.json", runs / start / "data" / "summary.json")
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        _copy(tsv, runs / tsv.relative_to(results))
    out.mkdir(parents=True, exist_ok=True)
    (out / "MISSING.txt").write_text(
        "".join(f"{m}\n" for m in missing) if missing else "none: every experiment x seed is in runs/\n")
    return {"done": done, "missing": missing}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--results", type=Path, required=True, help="results/<config name>")
    ap.add_argument("--out", type=Path, required=True, help="e.g. docs/results/<config name>")
    args = ap.parse_args(argv)
    if not args.results.is_dir():
        print(f"error: --results {args.results}: no such directory", file=sys.stderr)
        return 2
    found = export(args.config, args.results, args.out)
    print(f"exported {len(found['done'])} runs/starts into {args.out / 'runs'}; missing {len(found['missing'])} "
          f"(listed in {args.out / 'MISSING.txt'})")
    if not any("/seed" in d for d in found["done"]):
        print("no finished experiment run yet: report not built", file=sys.stderr)
        return 1
    from cleaner.config import load_config
    from cleaner.report import build_report

    summary = build_report(load_config(args.config), args.out / "runs", args.out, config_path=args.config)
    print(f"report: {summary['html']} ({summary['rows']} rows, {summary['tables']} tables)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
