"""Report: final metrics per experiment (mean and spread over seeds) and the training curves.

Inputs are what the pipeline writes under ``results/<name>/``: ``<exp>/seed<k>/eval.json`` (merged eval splits),
``<exp>/seed<k>/rl/metrics.jsonl`` (per RL step), ``sft/eval/<split>.json`` (the starting point) and, with real
data, ``<exp>/seed<k>/lm_eval.json`` (lm-evaluation-harness's own tasks for the no-tool arms). Outputs:
``final_metrics.csv`` (one row per experiment x seed x split), ``final_metrics.md`` (mean +- std over seeds, plus
RL steps each arm needs to reach the baseline's final training accuracy) and ``training_curves.png``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from cleaner.fsutil import atomic_write, write_text_atomic

__all__ = ["build_report", "merge_eval", "steps_to_reach"]

METRICS = ("pass@1", "tool_failures_per_trajectory", "tool_calls_per_trajectory", "response_length",
           "first_call_failure_rate", "recovered_correct_rate")


def merge_eval(paths: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Merge per-split eval summaries into one ``eval.json`` ({"splits": {split: summary}, "mean": {...}})."""
    splits: dict[str, Any] = {}
    for p in paths:
        p = Path(p)
        splits[p.stem] = json.loads(p.read_text())
    mean = {m: _avg([s.get(m) for s in splits.values()]) for m in METRICS}
    merged = {"splits": splits, "mean": mean}
    write_text_atomic(out, json.dumps(merged, indent=2, sort_keys=True))
    return merged


def _avg(xs: Iterable[Any]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def _std(xs: Sequence[float]) -> float | None:
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _smooth(values: Sequence[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def steps_to_reach(curve: Sequence[tuple[int, float]], target: float, *, window: int = 5) -> int | None:
    """First step at which the moving average (``window`` steps) of the curve reaches ``target``."""
    steps = [s for s, _ in curve]
    sm = _smooth([v for _, v in curve], window)
    for s, v in zip(steps, sm):
        if v >= target - 1e-12:
            return s
    return None


def build_report(config: dict[str, Any], results: str | Path, out_dir: str | Path) -> dict[str, Any]:
    import pandas as pd

    from cleaner.config import resolve_experiment

    results, out_dir = Path(results), Path(out_dir)
    rows: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    for exp in config["experiments"]:
        for seed in resolve_experiment(config, exp)["seeds"]:
            base = results / exp / f"seed{seed}"
            ev = json.loads((base / "eval.json").read_text())
            for split, summ in ev["splits"].items():
                rows.append({"experiment": exp, "seed": seed, "split": split,
                             **{m: summ.get(m) for m in METRICS}, "pass@k": _passk(summ)})
            for r in read_metrics(base / "rl" / "metrics.jsonl"):
                curves.append({"experiment": exp, "seed": seed, **r})
            lm = base / "lm_eval.json"
            if lm.exists():  # lm-evaluation-harness's own tasks (no-tool arms, real data)
                for task, res in json.loads(lm.read_text())["tasks"].items():
                    rows.append({"experiment": f"{exp} (lm-eval, no tool)", "seed": seed, "split": task,
                                 "pass@1": res["value"], "pass@k": None})
    for split in config["eval"]["splits"]:
        p = results / "sft" / "eval" / f"{split}.json"
        if p.exists():
            summ = json.loads(p.read_text())
            rows.append({"experiment": "sft (start)", "seed": -1, "split": split,
                         **{m: summ.get(m) for m in METRICS}, "pass@k": _passk(summ)})
    df = pd.DataFrame(rows)
    atomic_write(out_dir / "final_metrics.csv", lambda t: df.to_csv(t, index=False), suffix=".csv")
    cdf = pd.DataFrame(curves)
    reach = _steps_to_baseline(cdf, baseline=_baseline_name(config)) if not cdf.empty else {}
    md = _markdown(df, reach, config) + _saar_table(cdf)
    write_text_atomic(out_dir / "final_metrics.md", md)
    atomic_write(out_dir / "training_curves.png", lambda t: _plot(cdf, t), suffix=".png")
    return {"rows": len(df), "curve_points": len(cdf), "steps_to_baseline": reach}


def _passk(summ: dict[str, Any]) -> float | None:
    keys = [k for k in summ if k.startswith("pass@") and k != "pass@1"]
    return summ[keys[0]] if keys else None


def _baseline_name(config: dict[str, Any]) -> str | None:
    for name in ("baseline", "tools_baseline"):
        if name in config["experiments"]:
            return name
    return None


def _steps_to_baseline(cdf, *, baseline: str | None, window: int | None = None) -> dict[str, Any]:
    """RL steps each experiment x seed needs to reach the baseline's final accuracy.

    Uses the validation Pass@1 curve (SAAR off, paired sampling seeds) when the runs logged one, else the
    training accuracy (which for CLEANER includes its hidden retries, so it is not comparable across arms).
    Moving average over ``window`` points of the curve (default: 2 validation points, or 5 training steps)."""
    metric = "val/pass@1" if "val/pass@1" in cdf and cdf["val/pass@1"].notna().any() else "acc"
    if baseline is None or metric not in cdf:
        return {}
    window = window or (2 if metric == "val/pass@1" else 5)
    data = cdf[cdf[metric].notna()]
    finals = []
    for _, g in data[data.experiment == baseline].groupby("seed"):
        finals.append(_smooth(list(g.sort_values("step")[metric]), window)[-1])
    if not finals:
        return {}
    target = sum(finals) / len(finals)
    out: dict[str, Any] = {"metric": metric, "target": target, "window": window, "by_experiment": {}}
    for (exp, seed), g in data.groupby(["experiment", "seed"]):
        g = g.sort_values("step")
        out["by_experiment"].setdefault(exp, {})[int(seed)] = steps_to_reach(list(zip(g.step, g[metric])), target,
                                                                            window=window)
    return out


def _fmt(vals: Sequence[float], pct: bool, digits: int = 1) -> str:
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "-"
    m = sum(vals) / len(vals)
    s = _std(vals)
    scale = 100.0 if pct else 1.0
    return f"{m * scale:.{digits}f}" + (f" ± {s * scale:.{digits}f}" if s is not None else "")


def _markdown(df, reach: dict[str, Any], config: dict[str, Any]) -> str:
    lines = [f"# Final metrics — {config['name']}", "",
             "Mean ± std over seeds (sample std; none with one seed). Pass@1 in %.", ""]
    for split in sorted(df.split.unique()):
        sub = df[df.split == split]
        lines += [f"## {split}", "",
                  "| experiment | seeds | Pass@1 % | Pass@k % | tool failures / traj | tool calls / traj | "
                  "first call fails % | failed-then-correct % | response tokens |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for exp in list(dict.fromkeys(sub.experiment)):
            g = sub[sub.experiment == exp]
            lines.append(
                f"| {exp} | {len(g)} | {_fmt(list(g['pass@1']), True)} | {_fmt(list(g['pass@k']), True)} | "
                f"{_fmt(list(g['tool_failures_per_trajectory']), False, 3)} | "
                f"{_fmt(list(g['tool_calls_per_trajectory']), False, 2)} | "
                f"{_fmt(list(g['first_call_failure_rate']), True)} | {_fmt(list(g['recovered_correct_rate']), True)} | "
                f"{_fmt(list(g['response_length']), False)} |"
            )
        lines.append("")
    if reach:
        what = "validation Pass@1" if reach["metric"] == "val/pass@1" else "training accuracy"
        lines += [f"## RL steps to reach the baseline's final {what} "
                  f"({reach['target'] * 100:.1f}%, moving average over {reach['window']} points)", "",
                  "| experiment | steps per seed |", "|---|---|"]
        for exp, per_seed in reach["by_experiment"].items():
            cells = ", ".join(f"seed{s}: {'not reached' if v is None else v}" for s, v in sorted(per_seed.items()))
            lines.append(f"| {exp} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def _saar_table(cdf) -> str:
    """What SAAR did during training, per experiment (means over all RL steps and seeds, per trajectory)."""
    cols = [("saar_triggered", "triggered"), ("saar_recovered", "recovered"), ("saar_failed", "failed"),
            ("saar_shallow", "shallow"), ("saar_deep", "deep"), ("tool_failures_before", "failures generated"),
            ("tool_failures_after", "failures trained on"), ("logp_spliced", "log-p/token spliced"),
            ("logp_unspliced", "log-p/token other")]
    if cdf.empty or "saar_triggered" not in cdf:
        return ""
    lines = ["## Rollouts during RL (per trajectory, mean over steps and seeds)", "",
             "| experiment | " + " | ".join(name for _, name in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for exp, g in cdf.groupby("experiment", sort=False):
        cells = []
        for col, _ in cols:
            v = g[col].dropna() if col in g else []
            cells.append(f"{float(v.mean()):.3f}" if len(v) else "-")
        lines.append(f"| {exp} | " + " | ".join(cells) + " |")
    lines += ["", "log-p/token: mean recomputed log-probability of the trained (mask 1) tokens of trajectories with a "
              "SAAR splice vs without; spliced turns were sampled in a context that the purification removed.", ""]
    return "\n".join(lines)


def _plot(cdf, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    panels = [("val/pass@1", "validation Pass@1 (SAAR off)"), ("val/tool_failures", "validation tool failures / traj"),
              ("acc", "training accuracy"), ("tool_failures_after", "tool failures / traj (trained)"),
              ("tool_failures_before", "tool failures / traj (generated)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (col, title) in zip(axes, panels):
        if cdf.empty or col not in cdf:
            ax.set_title(f"{title}\n(no data)")
            continue
        d = cdf[["experiment", "seed", "step", col]].dropna().copy()
        if not col.startswith("val/"):
            d[col] = d.groupby(["experiment", "seed"])[col].transform(lambda s: s.rolling(5, min_periods=1).mean())
        sns.lineplot(data=d, x="step", y=col, hue="experiment", errorbar="sd", ax=ax)
        ax.set_title(title)
        ax.set_ylabel("")
    fig.suptitle("RL curves (training panels: 5-step moving average; band = ±1 sd over seeds)")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
