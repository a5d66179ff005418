"""Report: the metrics of every arm with 95% intervals, paired differences, the paper's numbers, curves, provenance.

Inputs are what the pipeline writes under ``results/<name>/``:

- ``<exp>/seed<k>/eval/<split>.json`` + ``.trajectories.jsonl``: the test-time protocol (SAAR off);
  ``<exp>/seed<k>/eval_saar/<split>.json`` (+ trajectories), when an experiment is also evaluated with SAAR at
  test time; ``sft/eval/<split>.json`` (the starting point); ``<exp>/seed<k>/lm_eval.json`` (real data, no-tool
  arms: lm-evaluation-harness's own tasks);
- ``<exp>/seed<k>/rl/metrics.jsonl`` (one row per RL step); ``benchmarks/**/*.tsv`` (Snakemake's job timings).

Outputs: ``final_metrics.csv`` (one row per arm x seed x split), ``final_metrics.md`` (mean and 95% interval
over seeds), ``training_curves.png`` and ``index.html``: one self-contained page (figures inline as base64 PNG,
no network) with everything above, the paired difference of each arm to its control (by default the tools
baseline of its data regime), the paper's published numbers beside ours (``cleaner/data/paper_results.yaml``)
and what produced the run.

Statistics come from :mod:`cleaner.stats`: Student-t intervals over seeds for each arm; a paired two-level
bootstrap over seeds x problems for differences between arms (same seeds, same problems).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from cleaner.fsutil import atomic_write, write_text_atomic

__all__ = ["build_report", "control_of", "merge_eval", "regime_of", "sft_label", "steps_to_reach",
           "load_paper_results"]

METRICS = ("pass@1", "tool_failures_per_trajectory", "tool_calls_per_trajectory", "response_length",
           "first_call_failure_rate", "recovered_correct_rate", "clean_correct_rate")
# Columns of the per-arm tables: (column in final_metrics.csv, header, shown in %, digits).
TABLE_METRICS = (("pass@1", "Pass@1 %", True, 1), ("pass@k", "Pass@k %", True, 1),
                 ("tool_failures_per_trajectory", "tool failures / traj", False, 3),
                 ("tool_calls_per_trajectory", "tool calls / traj", False, 2),
                 ("first_call_failure_rate", "first call fails %", True, 1),
                 ("recovered_correct_rate", "failed-then-correct %", True, 1),
                 ("clean_correct_rate", "no-failure correct %", True, 1),
                 ("response_length", "response tokens", False, 1))
EVAL_MODES = {"eval": "tools", "eval_saar": "SAAR at test time"}
PAPER_RESULTS = Path(__file__).parent / "data" / "paper_results.yaml"
KEY_PACKAGES = ("cleaner", "torch", "transformers", "verl", "sglang", "snakemake", "numpy", "scipy", "pandas",
                "seaborn", "matplotlib", "lm_eval", "math-verify")


# =========================================================================================== eval inputs


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


def read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill
    return rows


def read_trajectories(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _passk(summ: dict[str, Any]) -> float | None:
    keys = [k for k in summ if k.startswith("pass@") and k != "pass@1"]
    return summ[keys[0]] if keys else None


def _arm_label(exp: str, mode: str) -> str:
    return exp if mode == "eval" else f"{exp} [{EVAL_MODES[mode]}]"


def regime_of(config: dict[str, Any], exp: str) -> str | None:
    """The testbed data regime an experiment starts from (None: the default SFT model)."""
    return (config["experiments"].get(exp) or {}).get("regime") or None


def control_of(config: dict[str, Any], exp: str) -> str | None:
    """The experiment ``exp`` is compared with: ``experiments.<exp>.control`` when set, else the tools baseline of
    its regime (``baseline`` / ``tools_baseline``; in regime r ``r_baseline`` / ``r_tools_baseline``); None for the
    baseline itself or when the regime has none."""
    experiments = config["experiments"]
    explicit = (experiments.get(exp) or {}).get("control")
    if explicit:
        return explicit
    regime = regime_of(config, exp)
    names = ("baseline", "tools_baseline") if regime is None else (f"{regime}_baseline", f"{regime}_tools_baseline")
    for name in names:
        if name in experiments and name != exp and regime_of(config, name) == regime:
            return name
    return None


def sft_label(regime: str | None) -> str:
    """The report's name for the SFT model RL starts from, per data regime."""
    return "sft (start)" if regime is None else f"sft (start, {regime} regime)"


def _eval_row(exp: str, seed: int, split: str, mode: str, summ: dict[str, Any], traj: Path | None,
              regime: str | None = None) -> dict[str, Any]:
    return {"experiment": exp, "arm": _arm_label(exp, mode), "eval": mode, "seed": seed, "split": split,
            "regime": regime or "default", "start": exp.startswith("sft (start"),
            **{m: summ.get(m) for m in METRICS}, "pass@k": _passk(summ), "k": summ.get("k"),
            "grading": summ.get("grading"), "saar_at_test_time": summ.get("saar_at_test_time"),
            "wall_s_per_problem": summ.get("wall_s_per_problem"),
            "trajectories": str(traj) if traj is not None and traj.exists() else None}


def collect_eval_rows(config: dict[str, Any], results: Path) -> list[dict[str, Any]]:
    """One row per experiment x seed x eval mode x split, the SFT start of each regime (``sft/`` and
    ``regimes/<r>/sft/``, both eval modes) and lm-eval tasks when present."""
    from cleaner.config import resolve_experiment

    rows: list[dict[str, Any]] = []
    splits = config["eval"]["splits"]
    for exp in config["experiments"]:
        for seed in resolve_experiment(config, exp)["seeds"]:
            base = results / exp / f"seed{seed}"
            for mode in EVAL_MODES:
                for split in splits:
                    p = base / mode / f"{split}.json"
                    if p.exists():
                        traj = p.with_suffix(".trajectories.jsonl")
                        rows.append(_eval_row(exp, seed, split, mode, json.loads(p.read_text()), traj,
                                              regime_of(config, exp)))
            lm = base / "lm_eval.json"
            if lm.exists():  # lm-evaluation-harness's own tasks (no-tool arms, real data)
                for task, res in json.loads(lm.read_text())["tasks"].items():
                    rows.append({"experiment": exp, "arm": f"{exp} (lm-eval, no tool)", "eval": "lm_eval",
                                 "seed": seed, "split": task, "pass@1": res["value"], "pass@k": None,
                                 "regime": regime_of(config, exp) or "default", "start": False})
    starts = [(None, results / "sft")] + [(r, results / "regimes" / r / "sft") for r in config.get("regimes") or {}]
    for regime, sft_dir in starts:
        for mode in EVAL_MODES:
            for split in splits:
                p = sft_dir / mode / f"{split}.json"
                if p.exists():
                    rows.append(_eval_row(sft_label(regime), -1, split, mode, json.loads(p.read_text()),
                                          p.with_suffix(".trajectories.jsonl"), regime))
    return rows


def collect_curves(config: dict[str, Any], results: Path) -> list[dict[str, Any]]:
    from cleaner.config import resolve_experiment

    curves = []
    for exp in config["experiments"]:
        for seed in resolve_experiment(config, exp)["seeds"]:
            for r in read_metrics(results / exp / f"seed{seed}" / "rl" / "metrics.jsonl"):
                curves.append({"experiment": exp, "seed": seed, **r})
    return curves


# =========================================================================================== statistics


def _clean(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


@dataclass
class Cell:
    """One number of a table: the value(s) behind it, how it prints in text and, for html, its tooltip."""

    text: str
    title: str = ""
    css: str = ""


def _interval_text(iv, pct: bool, digits: int, signed: bool = False) -> str:
    scale = 100.0 if pct else 1.0
    sign = "+" if signed else ""
    text = f"{iv.mean * scale:{sign}.{digits}f}"
    if iv.lo is not None:
        text += f" [{iv.lo * scale:{sign}.{digits}f}, {iv.hi * scale:{sign}.{digits}f}]"
    return text


def seed_interval_cell(values: Iterable[Any], pct: bool, digits: int) -> Cell:
    """Mean and 95% Student-t interval over seeds (:func:`cleaner.stats.mean_ci`); '-' without values."""
    from cleaner.stats import mean_ci

    vals = _clean(values)
    if not vals:
        return Cell("-")
    iv = mean_ci(vals)
    return Cell(_interval_text(iv, pct, digits), title=f"mean over {iv.n} seed(s); 95% t interval")


def _trajectory_scores(path: str, metric: str) -> Any:
    """Per-problem mean of ``metric`` (``acc`` or a per-trajectory stat) of one eval trajectories file."""
    from cleaner.stats import per_problem_scores

    records = read_trajectories(Path(path))
    if metric != "acc":  # trajectory statistics live under "stats"
        records = [{"problem": r["problem"], metric: r["stats"][metric]} for r in records]
    return per_problem_scores(records, metric=metric)


def paired_difference(df, split: str, arm: str, control: str, metric: str):
    """arm - control on ``split``, paired by seed and problem (:func:`cleaner.stats.paired_bootstrap_diff`).

    Seeds present in both arms are paired in order; returns None without trajectories for every such seed.
    Raises ValueError when the two arms did not evaluate the same problems."""
    from cleaner.stats import paired_bootstrap_diff

    def paths(label: str) -> dict[int, str]:
        sub = df[(df.split == split) & (df.arm == label)]
        return {int(s): p for s, p in zip(sub.seed, sub.trajectories) if isinstance(p, str)}

    treat, ctrl = paths(arm), paths(control)
    seeds = sorted(set(treat) & set(ctrl))
    if not seeds:
        return None
    t = [_trajectory_scores(treat[s], metric) for s in seeds]
    c = [_trajectory_scores(ctrl[s], metric) for s in seeds]
    if any(len(a) != len(b) for a, b in zip(t, c)):
        raise ValueError(f"{split}: {arm} and {control} scored different numbers of problems")
    return paired_bootstrap_diff(t, c)


def pass_at_k_from_trajectories(path: str, k: int) -> float | None:
    """Pass@k (unbiased estimator) from a trajectories file; None when a problem has fewer than k samples."""
    from cleaner.evaluate import pass_at_k

    by_problem: dict[int, list[bool]] = {}
    for r in read_trajectories(Path(path)):
        by_problem.setdefault(int(r["problem"]), []).append(bool(r["acc"]))
    if not by_problem or min(len(v) for v in by_problem.values()) < k:
        return None
    return sum(pass_at_k(len(v), sum(v), k) for v in by_problem.values()) / len(by_problem)


# =========================================================================================== RL curves


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


def _curve_metric(cdf) -> str:
    return "val/pass@1" if "val/pass@1" in cdf and cdf["val/pass@1"].notna().any() else "acc"


def _steps_to_control(cdf, config: dict[str, Any], *, window: int | None = None) -> dict[str, Any]:
    """RL steps each experiment x seed needs to reach its control's final accuracy (the paper: CLEANER reaches the
    baseline's final accuracy in a third of the steps).

    The control of an experiment is :func:`control_of` (same regime, same SFT start). Target: the control's final
    moving average (mean over its seeds). The control's own steps to that target are reported beside it, so the
    ratio reads directly. Uses the validation Pass@1 curve (paired sampling seeds, same validation protocol for
    every arm) when the runs logged one, else the training accuracy (which for CLEANER includes its hidden
    retries, so it is not comparable across arms). Moving average over ``window`` points of the curve (default:
    2 validation points, or 5 training steps)."""
    if cdf.empty:
        return {}
    metric = _curve_metric(cdf)
    if metric not in cdf:
        return {}
    window = window or (2 if metric == "val/pass@1" else 5)
    data = cdf[cdf[metric].notna()]

    def per_seed(exp: str) -> dict[int, list[tuple[int, float]]]:
        return {int(seed): list(zip(g.sort_values("step").step, g.sort_values("step")[metric]))
                for seed, g in data[data.experiment == exp].groupby("seed")}

    out: dict[str, Any] = {"metric": metric, "window": window, "by_experiment": {}}
    for exp in dict.fromkeys(data.experiment):
        control = control_of(config, exp) if exp in config["experiments"] else None
        if control is None:
            continue
        ctrl_curves = per_seed(control)
        if not ctrl_curves:
            continue
        target = sum(_smooth([v for _, v in c], window)[-1] for c in ctrl_curves.values()) / len(ctrl_curves)
        out["by_experiment"][exp] = {
            "control": control, "target": target,
            "steps": {s: steps_to_reach(c, target, window=window) for s, c in sorted(per_seed(exp).items())},
            "control_steps": {s: steps_to_reach(c, target, window=window) for s, c in sorted(ctrl_curves.items())},
            "last_step": int(data[data.experiment == exp].step.max())}
    return out if out["by_experiment"] else {}


# SAAR during RL: (metrics.jsonl column, header). The last two come from engines that log them (optional).
SAAR_COLUMNS = (("saar_triggered", "triggered"), ("saar_recovered", "recovered"), ("saar_failed", "failed"),
                ("saar_shallow", "shallow"), ("saar_deep", "deep"), ("tool_failures_before", "failures generated"),
                ("tool_failures_after", "failures trained on"), ("logp_spliced", "log-p/token spliced"),
                ("logp_unspliced", "log-p/token other"), ("zero_adv_group_frac", "zero-advantage groups"),
                ("grad_norm", "grad norm"))


# =========================================================================================== tables


@dataclass
class Table:
    """A titled table that renders as markdown and as html (``key`` becomes the html id)."""

    key: str
    title: str
    headers: list[str]
    rows: list[list[Cell | str]] = field(default_factory=list)
    note: str = ""

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", "| " + " | ".join(self.headers) + " |", "|" + "---|" * len(self.headers)]
        lines += ["| " + " | ".join(_text(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines + ([""] + [self.note] if self.note else []) + [""])

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(_html_cell(c, i) for i, c in enumerate(row)) + "</tr>" for row in self.rows)
        note = f'<p class="note">{html.escape(self.note)}</p>' if self.note else ""
        return (f'<h3 id="{html.escape(self.key)}">{html.escape(self.title)}</h3>'
                f'<div class="scroll"><table id="table-{html.escape(self.key)}"><thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table></div>{note}")


def _text(c: Cell | str) -> str:
    return c.text if isinstance(c, Cell) else str(c)


def _html_cell(c: Cell | str, col: int) -> str:
    cell = c if isinstance(c, Cell) else Cell(str(c))
    tag = "th" if col == 0 else "td"
    attrs = (f' title="{html.escape(cell.title)}"' if cell.title else "") + (f' class="{cell.css}"' if cell.css else "")
    value, sep, interval = cell.text.partition(" [")
    if col > 0 and sep:  # the interval on a second, smaller line keeps wide tables readable
        return f'<{tag}{attrs}>{html.escape(value)}<br><span class="ci">[{html.escape(interval)}</span></{tag}>'
    return f"<{tag}{attrs}>{html.escape(cell.text)}</{tag}>"


def metric_tables(df) -> list[Table]:
    """Per split: every arm's metrics, mean [95% interval] over seeds."""
    tables = []
    has_grading = "grading" in df and df["grading"].notna().any()
    for split in list(dict.fromkeys(df.split)):
        sub = df[df.split == split]
        headers = ["arm", "seeds"] + [h for _, h, _, _ in TABLE_METRICS] + (["grading"] if has_grading else [])
        t = Table(f"metrics-{split}", f"{split}: per arm, mean [95% CI] over seeds", headers,
                  note="Interval: Student t over per-seed values (none with one seed). Pass@k: k = eval.k.")
        for arm in dict.fromkeys(sub.arm):
            g = sub[sub.arm == arm]
            row: list[Cell | str] = [arm, str(len(g))]
            row += [seed_interval_cell(g[col] if col in g else [], pct, digits)
                    for col, _, pct, digits in TABLE_METRICS]
            if has_grading:
                row.append(", ".join(sorted({str(x) for x in g["grading"] if isinstance(x, str)})) or "-")
            t.rows.append(row)
        tables.append(t)
    return tables


def paired_tables(df, config: dict[str, Any]) -> list[Table]:
    """Per split: each arm minus its control (:func:`control_of`), paired bootstrap over seeds x problems.

    An arm evaluated with SAAR at test time is compared with its control evaluated the same way and with its
    control evaluated with SAAR off (the authors' protocol: CLEANER rolls back at test time, the baseline cannot)."""
    tables = []
    modes = df[df["eval"].isin(list(EVAL_MODES))]
    for split in list(dict.fromkeys(modes.split)):
        sub = modes[(modes.split == split) & ~modes.start.astype(bool)]
        t = Table(f"paired-{split}", f"{split}: difference to the control, paired", [
            "arm", "control", "seeds paired", "Δ Pass@1 (points)", "Δ tool failures / traj",
            "interval excludes 0 (Pass@1)"],
            note="Control: experiments.<name>.control, else the tools baseline of the arm's data regime. Paired "
                 "two-level bootstrap over seeds x problems (same seeds, same problems, 4000 replicates), 95% "
                 "percentile interval; from the eval trajectories files.")
        present = set(sub.arm)
        for exp in dict.fromkeys(sub.experiment):
            control = control_of(config, exp) if exp in config["experiments"] else None
            if control is None:
                continue
            for mode in EVAL_MODES:
                arm = _arm_label(exp, mode)
                if arm not in present:
                    continue
                for ctrl in dict.fromkeys([_arm_label(control, mode), control]):
                    if ctrl in present:
                        t.rows.append(_paired_row(df, split, arm, ctrl))
        if t.rows:
            tables.append(t)
    return tables


def _paired_row(df, split: str, arm: str, control: str) -> list[Cell | str]:
    try:
        acc = paired_difference(df, split, arm, control, "acc")
        fails = paired_difference(df, split, arm, control, "tool_failures_after")
    except ValueError as e:
        return [arm, control, "-", Cell("n/a", title=str(e)), "-", "-"]
    if acc is None:
        return [arm, control, "0", Cell("n/a", title="no trajectories for a common seed"), "-", "-"]
    verdict = "yes" if acc.excludes_zero() else "no"
    return [arm, control, str(acc.n), Cell(_interval_text(acc, True, 1, signed=True), css=_sign_css(acc.mean)),
            Cell(_interval_text(fails, False, 3, signed=True)), verdict]


def saar_at_test_time_table(df) -> Table | None:
    """Arms also evaluated with SAAR at test time: Pass@1 and the latency SAAR adds (same seeds, same problems)."""
    saar = df[df["eval"] == "eval_saar"]
    if saar.empty:
        return None
    t = Table("test-time-saar", "SAAR at test time vs the test-time protocol (SAAR off)", [
        "split", "experiment", "Pass@1 % off", "Pass@1 % on", "Δ Pass@1 (points, paired)", "wall s / problem off",
        "wall s / problem on", "latency added (s / problem)"],
        note="Δ: paired bootstrap over seeds x problems. Wall time per problem from the eval summaries "
             "(mean over seeds); the latency added is on - off.")
    for (split, exp), g in saar.groupby(["split", "experiment"], sort=False):
        off = df[(df.split == split) & (df.arm == exp)]
        on_arm = _arm_label(exp, "eval_saar")
        try:
            diff = paired_difference(df, split, on_arm, exp, "acc")
            diff_cell = Cell("n/a") if diff is None else Cell(_interval_text(diff, True, 1, signed=True))
        except ValueError as e:
            diff_cell = Cell("n/a", title=str(e))
        w_off, w_on = _avg(_clean(off.get("wall_s_per_problem", []))), _avg(_clean(g["wall_s_per_problem"]))
        t.rows.append([split, exp, seed_interval_cell(off["pass@1"], True, 1), seed_interval_cell(g["pass@1"], True, 1),
                       diff_cell, _num(w_off, 2), _num(w_on, 2),
                       _num(None if w_on is None or w_off is None else w_on - w_off, 2, signed=True)])
    return t


def _num(x: float | None, digits: int, signed: bool = False) -> str:
    return "-" if x is None else f"{x:{'+' if signed else ''}.{digits}f}"


def load_paper_results(path: Path = PAPER_RESULTS) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(Path(path).read_text())


def paper_table(df, config: dict[str, Any], paper: dict[str, Any]) -> Table | None:
    """Ours beside the paper's published numbers for this config (None for configs the paper has no column for)."""
    pc = paper["configs"].get(config["name"])
    if pc is None:
        return None
    t = Table("paper", f"Ours vs the paper ({pc['model']})", [
        "split", "setting (our arm)", "ours Pass@1 %", "paper Pass@1 %", "Δ Pass@1", "ours Pass@16 %",
        "paper Pass@16 %", "Δ Pass@16"],
        note=f"Paper: {paper['source']['paper']}; {paper['source']['table']}. Ours: mean [95% CI] over seeds; "
             "Δ = our mean - paper. Pass@16 from our trajectories (unbiased estimator) when eval.k >= 16.")
    for setting, exp in pc["arms"].items():
        for split, published in pc["results"][setting].items():
            g = df[(df.arm == exp) & (df.split == split)]
            ours1 = _clean(g["pass@1"])
            ours16 = _clean(pass_at_k_from_trajectories(p, 16) for p in g["trajectories"] if isinstance(p, str))
            t.rows.append([split, f"{setting} ({exp})", seed_interval_cell(ours1, True, 1),
                           _num(published["pass@1"], 1),
                           _delta(ours1, published.get("pass@1")), seed_interval_cell(ours16, True, 1),
                           _num(published.get("pass@16"), 1), _delta(ours16, published.get("pass@16"))])
    return t


def _delta(ours: list[float], published: float | None) -> Cell:
    if not ours or published is None:
        return Cell("-")
    d = 100.0 * sum(ours) / len(ours) - published
    return Cell(f"{d:+.1f}", css=_sign_css(d))


def _sign_css(x: float) -> str:
    return "pos" if x > 0 else "neg" if x < 0 else ""


def steps_table(reach: dict[str, Any]) -> Table | None:
    if not reach:
        return None
    what = "validation Pass@1" if reach["metric"] == "val/pass@1" else "training accuracy"
    t = Table("steps", f"RL steps to reach the control's final {what} (moving average over {reach['window']} "
              "points)", ["experiment", "control", "target %", "steps per seed", "reached", "control's own steps"],
              note="Target: the control's final moving average, mean over its seeds. 'not reached': not within the "
                   "run's steps. The control's own steps to the same target give the ratio the paper reports "
                   "(CLEANER: about a third of the baseline's steps).")
    for exp, r in reach["by_experiment"].items():
        def fmt(per_seed: dict[int, int | None]) -> str:
            return ", ".join(f"seed{s}: {'not reached' if v is None else v}" for s, v in sorted(per_seed.items()))

        reached = sum(v is not None for v in r["steps"].values())
        t.rows.append([exp, r["control"], f"{100 * r['target']:.1f}", fmt(r["steps"]),
                       f"{reached}/{len(r['steps'])}", fmt(r["control_steps"])])
    return t


def saar_table(cdf) -> Table | None:
    """What SAAR did during training, per experiment (means over all RL steps and seeds, per trajectory)."""
    if cdf.empty or "saar_triggered" not in cdf:
        return None
    cols = [(c, h) for c, h in SAAR_COLUMNS if c in cdf]
    t = Table("saar-rollouts", "Rollouts during RL (per trajectory, mean over steps and seeds)",
              ["experiment"] + [h for _, h in cols],
              note="log-p/token: mean recomputed log-probability of the trained (mask 1) tokens of trajectories "
                   "with a SAAR splice vs without; spliced turns were sampled in a context that the purification "
                   "removed.")
    for exp, g in cdf.groupby("experiment", sort=False):
        t.rows.append([exp] + [_num(float(g[c].dropna().mean()) if g[c].notna().any() else None, 3) for c, _ in cols])
    return t


# =========================================================================================== figures


def _plot(cdf, path: str | io.BytesIO) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    panels = [("val/pass@1", "validation Pass@1 (SAAR off)"), ("val/tool_failures", "validation tool failures / traj"),
              ("acc", "training accuracy"), ("tool_failures_after", "tool failures / traj (trained)"),
              ("tool_failures_before", "tool failures / traj (generated)"),
              ("zero_adv_group_frac", "zero-advantage groups")]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, (col, title) in zip(axes.flat, panels):
        if cdf.empty or col not in cdf or cdf[col].isna().all():
            ax.set_title(f"{title}\n(no data)")
            ax.set_axis_off()
            continue
        d = cdf[["experiment", "seed", "step", col]].dropna().copy()
        if not col.startswith("val/"):
            d[col] = d.groupby(["experiment", "seed"])[col].transform(lambda s: s.rolling(5, min_periods=1).mean())
        sns.lineplot(data=d, x="step", y=col, hue="experiment", errorbar="sd", ax=ax,
                     marker="o" if len(d) < 40 else None)  # a few points: show them
        ax.set_title(title)
        ax.set_ylabel("")
    fig.suptitle("RL curves (training panels: 5-step moving average; band = ±1 sd over seeds)")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def _plot_pass1(df, paper_points: dict[tuple[str, str], float], out: io.BytesIO) -> bool:
    """Pass@1 per arm and split with its 95% interval over seeds; the paper's value as a cross."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cleaner.stats import mean_ci

    data = df[df["pass@1"].notna() & df["eval"].isin(list(EVAL_MODES))]
    if data.empty:
        return False
    splits = list(dict.fromkeys(data.split))
    size = (max(7.0, 4.6 * len(splits)), max(2.6, 0.9 + 0.45 * data.arm.nunique()))
    fig, axes = plt.subplots(1, len(splits), figsize=size, squeeze=False)
    for ax, split in zip(axes[0], splits):
        sub = data[data.split == split]
        arms = list(dict.fromkeys(sub.arm))
        for i, arm in enumerate(arms):
            iv = mean_ci(_clean(sub[sub.arm == arm]["pass@1"]))
            err = None if iv.lo is None else [[100 * (iv.mean - iv.lo)], [100 * (iv.hi - iv.mean)]]
            ax.errorbar([100 * iv.mean], [i], xerr=err, fmt="o", color="C0", capsize=3)
            if (arm, split) in paper_points:
                ax.plot([paper_points[(arm, split)]], [i], "x", color="C3", markersize=9,
                        label="paper" if i == 0 or "paper" not in ax.get_legend_handles_labels()[1] else None)
        lo, hi = ax.get_xlim()
        if hi - lo < 2:  # all arms at one value (e.g. 0): show a readable stretch of the percent axis
            ax.set_xlim(max(0.0, lo - 5), min(100.0, hi + 5))
        ax.set_yticks(range(len(arms)), arms)
        ax.invert_yaxis()
        ax.set_xlabel("Pass@1 %")
        ax.set_title(split)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(loc="lower right")
    fig.suptitle("Pass@1: mean and 95% CI over seeds" + (" (x: paper)" if paper_points else ""), fontsize=11)
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return True


def _png_base64(render) -> str | None:
    buf = io.BytesIO()
    if render(buf) is False:
        return None
    return base64.b64encode(buf.getvalue()).decode("ascii")


# =========================================================================================== provenance


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _source_root() -> Path:
    """The checkout the package runs from (src/cleaner -> repository root), symlinks resolved."""
    return Path(__file__).resolve().parents[2]


def git_commit(root: Path) -> str:
    commit = _git(["rev-parse", "HEAD"], root)
    if commit is None:
        return "unknown (not a git checkout)"
    dirty = _git(["status", "--porcelain", "--untracked-files=no"], root)
    return commit + (" + uncommitted changes" if dirty else "")


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def package_versions(names: Sequence[str] = KEY_PACKAGES) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict[str, str]:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu count": str(os.cpu_count()), "cpu": _cpu_model()}
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory"] = f"{pages * size / 2**30:.1f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    gpus = _nvidia_gpus()
    if gpus:
        info["gpus"] = gpus
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _nvidia_gpus() -> str | None:
    import shutil

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
    return f"{len(names)} x {names[0]}" if names else None


def stage_times(results: Path):
    """Snakemake benchmark files (``benchmarks/<stage>/<job>.tsv``) as one row per job: stage, job, seconds, RSS."""
    import pandas as pd

    rows = []
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        try:
            b = pd.read_csv(tsv, sep="\t", na_values=["-", "NA"])
        except (ValueError, pd.errors.EmptyDataError):
            continue
        if b.empty or "s" not in b:
            continue
        rows.append({"stage": tsv.parent.name, "job": tsv.stem, "s": float(b["s"].iloc[-1]),
                     "max_rss_mb": float(b["max_rss"].iloc[-1]) if "max_rss" in b and b["max_rss"].notna().any()
                     else None})
    return pd.DataFrame(rows, columns=["stage", "job", "s", "max_rss_mb"])


def timing_table(times) -> Table:
    t = Table("timing", "Wall time per stage (Snakemake benchmark files)",
              ["stage", "jobs", "total", "longest job", "max RSS MB"],
              note="From results/<config>/benchmarks/<stage>/*.tsv, written by Snakemake when a job ends "
                   "(the report's own job is not in it).")
    for stage, g in times.groupby("stage", sort=False):
        longest = g.loc[g.s.idxmax()]
        t.rows.append([stage, str(len(g)), _duration(g.s.sum()), f"{_duration(longest.s)} ({longest.job})",
                       _num(g.max_rss_mb.max() if g.max_rss_mb.notna().any() else None, 0)])
    if not times.empty:
        t.rows.append(["all", str(len(times)), _duration(times.s.sum()), "-", "-"])
    return t


def _duration(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def provenance(config: dict[str, Any], config_path: str | Path | None) -> dict[str, Any]:
    root = _source_root()
    lock = root / "requirements.lock"
    if not lock.exists():
        lock = Path.cwd() / "requirements.lock"
    return {
        "config file": str(config_path) if config_path else "-",
        "config sha256": _sha256(Path(config_path)) if config_path and Path(config_path).exists() else "-",
        "git commit": git_commit(root),
        "requirements.lock sha256": _sha256(lock) if lock.exists() else "not found",
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "packages": package_versions(),
        "machine (of the report job)": machine(),
    }


# =========================================================================================== build


def build_report(config: dict[str, Any], results: str | Path, out_dir: str | Path,
                 config_path: str | Path | None = None) -> dict[str, Any]:
    """Write final_metrics.csv/.md, training_curves.png and index.html under ``out_dir``."""
    import pandas as pd

    results, out_dir = Path(results), Path(out_dir)
    df = pd.DataFrame(collect_eval_rows(config, results))
    if df.empty:
        raise FileNotFoundError(f"{results}: no eval summaries (<exp>/seed<k>/eval/<split>.json) to report")
    csv_cols = [c for c in df.columns if c != "trajectories"]
    atomic_write(out_dir / "final_metrics.csv", lambda t: df[csv_cols].to_csv(t, index=False), suffix=".csv")
    cdf = pd.DataFrame(collect_curves(config, results))
    reach = _steps_to_control(cdf, config)
    paper = load_paper_results()
    tables = {"metrics": metric_tables(df), "paired": paired_tables(df, config),
              "test_time_saar": [t for t in [saar_at_test_time_table(df)] if t],
              "paper": [t for t in [paper_table(df, config, paper)] if t],
              "steps": [t for t in [steps_table(reach)] if t], "saar": [t for t in [saar_table(cdf)] if t]}
    md = f"# Final metrics — {config['name']}\n\nMean [95% CI] over seeds (Student t; none with one seed).\n\n"
    md += "\n".join(t.markdown() for group in tables.values() for t in group)
    write_text_atomic(out_dir / "final_metrics.md", md)
    atomic_write(out_dir / "training_curves.png", lambda t: _plot(cdf, t), suffix=".png")
    figures = {"training curves": base64.b64encode((out_dir / "training_curves.png").read_bytes()).decode("ascii"),
               "Pass@1": _png_base64(lambda buf: _plot_pass1(df, _paper_points(config, paper), buf))}
    times = stage_times(results)
    page = render_html(config, tables, figures, timing_table(times), provenance(config, config_path))
    write_text_atomic(out_dir / "index.html", page)
    return {"rows": len(df), "curve_points": len(cdf), "steps_to_control": reach,
            "tables": sum(len(g) for g in tables.values()), "html": str(out_dir / "index.html")}


def _paper_points(config: dict[str, Any], paper: dict[str, Any]) -> dict[tuple[str, str], float]:
    pc = paper["configs"].get(config["name"]) or {"arms": {}, "results": {}}
    return {(exp, split): vals["pass@1"] for setting, exp in pc["arms"].items()
            for split, vals in pc["results"][setting].items()}


# =========================================================================================== html

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2430;background:#fafbfc}
main{max-width:1200px;margin:0 auto;padding:24px 32px 64px}
header{background:#1d2430;color:#fff;padding:18px 32px}header h1{margin:0;font-size:1.5em}
header p{margin:4px 0 0;color:#c8d0dc;font-size:.9em}
nav{font-size:.9em;margin:12px 0 4px}nav a{margin-right:14px;color:#2458a6;text-decoration:none}
h2{margin-top:36px;border-bottom:2px solid #dfe3e8;padding-bottom:4px}h3{margin:22px 0 8px;font-size:1.05em}
table{border-collapse:collapse;background:#fff;font-size:.88em;margin:4px 0;box-shadow:0 1px 2px #0001}
th,td{border:1px solid #dfe3e8;padding:5px 9px;text-align:right;white-space:nowrap}
thead th{background:#eef1f5;text-align:center;white-space:normal;min-width:60px}
.scroll{overflow-x:auto}span.ci{font-size:.82em;color:#57606a}tbody th{text-align:left;font-weight:600}
tbody tr:nth-child(even){background:#f6f8fa}
td.pos{color:#116329}td.neg{color:#a40e26}
p.note{font-size:.82em;color:#57606a;margin:4px 0 12px;max-width:1000px}
img{max-width:100%;height:auto;background:#fff;border:1px solid #dfe3e8}
pre{background:#fff;border:1px solid #dfe3e8;padding:10px;font-size:.8em;overflow:auto;max-height:480px}
dl{display:grid;grid-template-columns:max-content auto;gap:4px 16px;font-size:.9em}dt{font-weight:600}dd{margin:0}
"""

_SECTIONS = (("metrics", "Metrics per arm"), ("paired", "Paired differences to the control"),
             ("test_time_saar", "SAAR at test time"), ("paper", "Paper comparison"), ("steps", "RL steps"),
             ("saar", "SAAR during RL"))


def render_html(config: dict[str, Any], tables: dict[str, list[Table]], figures: dict[str, str | None],
                timing: Table, prov: dict[str, Any]) -> str:
    """The page: one section per table group, the figures inline (base64 PNG), provenance; no external resource."""
    import yaml

    parts, nav = [], []
    for key, title in _SECTIONS:
        if tables.get(key):
            nav.append(f'<a href="#sec-{key}">{html.escape(title)}</a>')
            parts.append(f'<section id="sec-{key}"><h2>{html.escape(title)}</h2>'
                         + "".join(t.html() for t in tables[key]) + "</section>")
    figs = "".join(f'<h3>{html.escape(name)}</h3><img alt="{html.escape(name)}" src="data:image/png;base64,{b64}">'
                   for name, b64 in figures.items() if b64)
    nav.append('<a href="#sec-figures">Figures</a><a href="#sec-provenance">Provenance</a>')
    dl = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in prov.items() if isinstance(v, str))
    nested = "".join(f'<h3>{html.escape(k)}</h3><dl>' + "".join(
        f"<dt>{html.escape(a)}</dt><dd>{html.escape(str(b))}</dd>" for a, b in v.items()) + "</dl>"
        for k, v in prov.items() if isinstance(v, dict))
    no_paper = "" if tables.get("paper") else (
        '<p class="note">The paper publishes no numbers for this configuration (it has columns for '
        "paper-qwen3-4b and paper-qwen2.5-7b).</p>")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>CLEANER report: {html.escape(config['name'])}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>CLEANER reproduction: {html.escape(config['name'])}</h1>"
        f"<p>engine {html.escape(str(config.get('engine')))} · "
        f"experiments {html.escape(', '.join(config['experiments']))}"
        f" · commit {html.escape(prov['git commit'][:12])} · generated {html.escape(prov['generated'])}</p></header>"
        f"<main><nav>{''.join(nav)}</nav>{no_paper}{''.join(parts)}"
        f'<section id="sec-figures"><h2>Figures</h2>{figs}</section>'
        f'<section id="sec-provenance"><h2>Provenance</h2><dl>{dl}</dl>{nested}{timing.html()}'
        "<h3>Configuration (validated, defaults filled in)</h3>"
        f"<pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre></section></main></body></html>"
    )
