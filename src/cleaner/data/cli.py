"""``cleaner data ...`` subcommands: prepare the RL mix, the eval sets, the SFT set; difficulty filter; lm-eval.

Wire into the main CLI with ``cleaner.data.cli.add_commands(subparsers)``; each subcommand sets
``args.func`` (called with the parsed namespace, returns an exit code). Every command reads the data section
of a YAML config (the ``data:`` key when present, else the whole file; the packaged default is
``cleaner/data/recipes/paper.yaml``) and writes its outputs atomically, with a JSON report beside them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from cleaner.data.eval_sets import EVAL_LOADERS
from cleaner.data.mix import KEEP_RATIOS_7B, apply_difficulty_filter, build_rl_mix
from cleaner.data.schema import (
    DataError,
    read_parquet_rows,
    write_json_atomic,
    write_jsonl_atomic,
    write_rl_parquet,
    write_sft_parquet,
)
from cleaner.data.sft import load_sft
from cleaner.data.sources import DEFAULT_CACHE_DIR, SourceSpec, read_table

# Eval sets whose raw hub-shaped rows lm-eval's own tasks read (--raw-dir), by lm-eval task.
RAW_FOR_LM_EVAL = {"aime24": "aime24", "aime25": "aime25", "gpqa_diamond": "gpqa_diamond_cot_zeroshot"}


def default_config_path() -> Path:
    """The packaged paper configuration."""
    return Path(str(resources.files("cleaner.data") / "recipes" / "paper.yaml"))


def load_data_config(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The data section of a YAML config (its ``data:`` key if present, else the whole document)."""
    cfg_path = Path(path) if path else default_config_path()
    if not cfg_path.is_file():
        raise DataError(f"config file not found: {cfg_path}")
    doc = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    if not isinstance(doc, Mapping):
        raise DataError(f"{cfg_path}: expected a YAML mapping")
    section = doc.get("data", doc)
    if not isinstance(section, Mapping):
        raise DataError(f"{cfg_path}: 'data' must be a mapping")
    section = dict(section)
    recipe = section.pop("recipe", None)
    if recipe:
        # `recipe: paper` (a packaged recipe) or a path; keys given next to it override the recipe's.
        base_path = Path(recipe) if str(recipe).endswith((".yaml", ".yml")) else (
            default_config_path().with_name(f"{recipe}.yaml"))
        if not base_path.is_file():
            raise DataError(f"{cfg_path}: data.recipe {recipe!r} not found ({base_path})")
        base = yaml.safe_load(base_path.read_text(encoding="utf-8")) or {}
        section = merge_recipe(base.get("data", base), section)
    return section


def merge_recipe(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` merged into the recipe ``base`` key by key, except that a ``source`` replaces the recipe's
    whole: a source is one origin (``hub`` with its ``config`` / ``split`` / ``files``, or ``path``), so a local
    ``{path: ...}`` given for an offline copy must not inherit the recipe's ``{hub, split}``."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if key != "source" and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_recipe(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _section(cfg: Mapping[str, Any], key: str, config_path: str | None) -> Mapping[str, Any]:
    value = cfg.get(key)
    if not isinstance(value, Mapping):
        raise DataError(f"config {config_path or default_config_path()}: missing mapping {key!r} (keys: {sorted(cfg)})")
    return value


def _cache_dir(args: argparse.Namespace, cfg: Mapping[str, Any]) -> str:
    return str(args.cache_dir or cfg.get("cache_dir") or DEFAULT_CACHE_DIR)


def cmd_prepare_rl(args: argparse.Namespace) -> int:
    cfg = load_data_config(args.config)
    recipe = _section(cfg, args.mix, args.config)
    rows, report = build_rl_mix(
        recipe, cache_dir=_cache_dir(args, cfg), seed=args.seed, agent_name=args.agent_name,
        max_bad_fraction=args.max_bad_fraction,
    )
    write_rl_parquet(rows, args.out)
    report["output"] = str(args.out)
    write_json_atomic(report, args.report or Path(args.out).with_suffix(".report.json"))
    print(f"wrote {len(rows)} RL rows to {args.out}: {json.dumps(report['by_data_source'])}")
    return 0


def cmd_prepare_eval(args: argparse.Namespace) -> int:
    """Write each requested eval set (and its raw lm-eval copy) in turn, every file atomically.

    Every set's entry is checked before anything is written. When a set then fails (download, parse, schema),
    the sets already written are complete and stay (nothing computed is thrown away); the report records them
    with ``"complete": false``, the failure and the sets not attempted, and the error names all three and the
    ``--only`` that finishes the job.
    """
    cfg = load_data_config(args.config)
    section = _section(cfg, "eval", args.config)
    sets = _section(section, "sets", args.config)
    names = args.only.split(",") if args.only else list(sets)
    unknown = [n for n in names if n not in sets]
    if unknown:
        raise DataError(f"eval set(s) {unknown} not in the config (known: {sorted(sets)})")
    for name in names:
        _check_eval_entry(name, sets[name])
    max_bad = float(section.get("max_bad_fraction", 0.0) if args.max_bad_fraction is None else args.max_bad_fraction)
    out_dir = Path(args.out_dir)
    report_path = Path(args.report or out_dir / "eval_sets.report.json")
    report: dict[str, Any] = {"complete": False, "sets": {}}
    for i, name in enumerate(names):
        try:
            report["sets"][name] = _prepare_eval_set(name, sets[name], args, cache_dir=_cache_dir(args, cfg),
                                                     max_bad=max_bad, out_dir=out_dir)
        except Exception as exc:
            report.update(failed={name: f"{type(exc).__name__}: {exc}"}, not_attempted=names[i + 1:])
            write_json_atomic(report, report_path)
            raise DataError(_partial_eval_message(report, name, exc, report_path)) from exc
    report["complete"] = True
    write_json_atomic(report, report_path)
    return 0


def _check_eval_entry(name: str, entry: Mapping[str, Any]) -> None:
    loader_name = entry.get("loader", name)
    if loader_name not in EVAL_LOADERS:
        raise DataError(f"eval set {name!r}: unknown loader {loader_name!r} (known: {sorted(EVAL_LOADERS)})")
    if "source" not in entry:
        raise DataError(f"eval set {name!r}: missing 'source'")
    SourceSpec.parse(entry["source"])


def _prepare_eval_set(name: str, entry: Mapping[str, Any], args: argparse.Namespace, *, cache_dir: str,
                      max_bad: float, out_dir: Path) -> dict[str, Any]:
    loader_name = entry.get("loader", name)
    loaded = EVAL_LOADERS[loader_name](
        entry["source"], cache_dir=cache_dir, agent_name=args.agent_name or "tool_agent",
        max_bad_fraction=max_bad, **dict(entry.get("options") or {}),
    )
    path = write_rl_parquet(loaded.rows, out_dir / f"{name}.parquet")
    result = {"output": str(path), "rows": len(loaded.rows), **loaded.summary()}
    if args.raw_dir and loader_name in RAW_FOR_LM_EVAL:
        spec = SourceSpec.parse(entry["source"])
        table = read_table(spec, cache_dir=cache_dir, gated=loader_name == "gpqa_diamond" and spec.hub is not None)
        raw_file = Path(args.raw_dir) / f"{RAW_FOR_LM_EVAL[loader_name]}.jsonl"
        result["raw_for_lm_eval"] = str(write_jsonl_atomic(table.to_pylist(), raw_file))
    print(f"{name}: {len(loaded.rows)} rows -> {path}")
    return result


def _partial_eval_message(report: Mapping[str, Any], failed: str, exc: Exception, report_path: Path) -> str:
    kept = ", ".join(f"{n} -> {r['output']}" for n, r in report["sets"].items()) or "none"
    rest = [failed, *report["not_attempted"]]
    return (f"eval set {failed!r} failed: {type(exc).__name__}: {exc}. Kept (complete): {kept}. "
            f"Not attempted: {', '.join(report['not_attempted']) or 'none'}. Report: {report_path}. "
            f"Finish with --only {','.join(rest)}")


def cmd_prepare_sft(args: argparse.Namespace) -> int:
    cfg = load_data_config(args.config)
    section = _section(cfg, "sft", args.config)
    if "source" not in section:
        raise DataError("config 'sft': missing 'source'")
    max_bad = float(section.get("max_bad_fraction", 0.01) if args.max_bad_fraction is None else args.max_bad_fraction)
    loaded = load_sft(section["source"], cache_dir=_cache_dir(args, cfg), max_bad_fraction=max_bad)
    write_sft_parquet(loaded.rows, args.out)
    write_json_atomic({"output": str(args.out), "rows": len(loaded.rows), **loaded.summary()},
                      args.report or Path(args.out).with_suffix(".report.json"))
    print(f"wrote {len(loaded.rows)} SFT conversations to {args.out}")
    return 0


def read_pass_counts(path: str | os.PathLike[str]) -> dict[str, int]:
    """Pass counts keyed by row uid: a JSON object ``{uid: passes}`` or JSONL lines ``{"uid", "passes"}``."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".jsonl":
        counts = {}
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                rec = _json_or_error(line, f"{p}:{lineno}")
                if not isinstance(rec, dict) or "uid" not in rec or "passes" not in rec:
                    raise DataError(f"{p}:{lineno}: expected an object with keys 'uid' and 'passes'")
                counts[str(rec["uid"])] = rec["passes"]
        return counts
    doc = _json_or_error(text, str(p))
    if not isinstance(doc, dict):
        raise DataError(f"{p}: expected a JSON object uid -> passes")
    return {str(k): v for k, v in doc.items()}


def _json_or_error(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc


def cmd_filter_difficulty(args: argparse.Namespace) -> int:
    cfg = load_data_config(args.config) if args.config else {}
    section = cfg.get("difficulty_filter") or {}
    seed = args.seed if args.seed is not None else int(section.get("seed", 0))
    n_rollouts = args.n_rollouts or int(section.get("n_rollouts", 8))
    ratios = section.get("keep_ratios") or KEEP_RATIOS_7B
    rows = read_parquet_rows(args.rows)
    kept, report = apply_difficulty_filter(
        rows, read_pass_counts(args.pass_counts), seed=seed, n_rollouts=n_rollouts, keep_ratios=ratios
    )
    write_rl_parquet(kept, args.out)
    report["output"] = str(args.out)
    write_json_atomic(report, args.report or Path(args.out).with_suffix(".report.json"))
    print(f"kept {len(kept)} of {len(rows)} prompts -> {args.out}")
    return 0


def _parse_data_files(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise DataError(f"--data-file expects TASK=PATH, got {item!r}")
        out[task] = path
    return out


def cmd_lm_eval(args: argparse.Namespace) -> int:
    from cleaner.data.lm_eval_tasks import run_lm_eval

    cfg = load_data_config(args.config) if args.config else {}
    section = cfg.get("lm_eval") or {}
    tasks = args.tasks.split(",") if args.tasks else list(section.get("tasks") or [])
    batch_size: Any = args.batch_size or section.get("batch_size", 1)
    if isinstance(batch_size, str) and batch_size.isdigit():
        batch_size = int(batch_size)
    # lm-eval reads a float limit < 1 as a fraction of the task, an int as a count.
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    doc = run_lm_eval(
        args.model, tasks, args.out, data_files=_parse_data_files(args.data_file), limit=limit,
        batch_size=batch_size, device=args.device, dtype=args.dtype,
        apply_chat_template=not args.no_chat_template and bool(section.get("apply_chat_template", True)),
        max_gen_toks=args.max_gen_toks, seed=args.seed,
        datasets_cache_dir=Path(_cache_dir(args, cfg)) / "lm_eval",
    )
    for task, res in doc["tasks"].items():
        print(f"{task}: {res['primary_metric']} = {res['value']:.4f} (n={res['n_samples']})")
    return 0


def add_commands(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Register ``data`` with its subcommands on the main CLI's subparsers; returns the ``data`` parser."""
    data = subparsers.add_parser(
        "data", help="prepare training / evaluation data and run lm-eval baselines",
        description="Prepare the paper's datasets (hub or local copies) as verl parquet files.",
    )
    sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="YAML config; its 'data:' section (or the whole file) is used "
                       "(default: the packaged cleaner/data/recipes/paper.yaml)")
        p.add_argument("--cache-dir", help="where hub downloads are cached (default: config 'cache_dir', "
                       f"else {DEFAULT_CACHE_DIR})")
        p.add_argument("--max-bad-fraction", type=float, help="fail when more than this fraction of a source's "
                       "rows break the schema (default: from the config)")

    p = sub.add_parser("prepare-rl", help="build the RL training mix parquet",
                       description="Load every source of a mix recipe, sample the configured counts "
                       "(seeded, without replacement), and write one verl parquet plus a JSON report "
                       "(realised counts per source / subset, rejected rows with reasons).")
    common(p)
    p.add_argument("--mix", default="rl_mix", help="config key of the mix recipe: rl_mix (rebuilt from the "
                   "original sources) or rl_mix_published (Open-AgentRL-30K) (default: rl_mix)")
    p.add_argument("--out", required=True, help="output parquet")
    p.add_argument("--report", help="report JSON (default: OUT with .report.json)")
    p.add_argument("--seed", type=int, help="override the recipe's seed")
    p.add_argument("--agent-name", help="agent_name written into every row (default: recipe, else tool_agent)")
    p.set_defaults(func=cmd_prepare_rl)

    p = sub.add_parser("prepare-eval", help="build the evaluation set parquets",
                       description="Write OUT_DIR/<set>.parquet for each configured eval set (AIME24, AIME25, "
                       "GPQA-Diamond (gated: HF_TOKEN), LiveCodeBench window) and optionally the raw "
                       "hub-shaped rows that lm-eval's own tasks read.")
    common(p)
    p.add_argument("--out-dir", required=True, help="directory for <set>.parquet files and the report")
    p.add_argument("--only", help="comma-separated subset of the configured sets (e.g. aime24,aime25)")
    p.add_argument("--raw-dir", help="also write aime24.jsonl, aime25.jsonl, gpqa_diamond_cot_zeroshot.jsonl "
                   "(source rows, for `cleaner data lm-eval --data-file`)")
    p.add_argument("--report", help="report JSON (default: OUT_DIR/eval_sets.report.json)")
    p.add_argument("--agent-name", help="agent_name written into every row (default: tool_agent)")
    p.set_defaults(func=cmd_prepare_eval)

    p = sub.add_parser("prepare-sft", help="build the SFT conversations parquet",
                       description="Validate and normalise Open-AgentRL-SFT-3K ({messages, tools}) into one "
                       "parquet file.")
    common(p)
    p.add_argument("--out", required=True, help="output parquet")
    p.add_argument("--report", help="report JSON (default: OUT with .report.json)")
    p.set_defaults(func=cmd_prepare_sft)

    p = sub.add_parser("filter-difficulty", help="apply the 7B recipe's difficulty filter",
                       description="Keep prompts by their pass count out of N rollouts of the SFT model "
                       "(ratios 0/8: 0, 1/8: 0.8, 2/8: 0.9, 3-7/8: 1.0, 8/8: 0 unless the config's "
                       "difficulty_filter says otherwise), exact per-bucket counts, seeded.")
    p.add_argument("--config", help="YAML config with a difficulty_filter section (seed, n_rollouts, keep_ratios)")
    p.add_argument("--rows", required=True, help="input RL parquet (e.g. from prepare-rl)")
    p.add_argument("--pass-counts", required=True, help="JSON {uid: passes} or JSONL {uid, passes}; "
                   "uid = data_source/extra_info.index")
    p.add_argument("--out", required=True, help="output parquet")
    p.add_argument("--report", help="report JSON (default: OUT with .report.json)")
    p.add_argument("--seed", type=int, help="override the config's seed (default 0)")
    p.add_argument("--n-rollouts", type=int, help="rollouts per prompt (default: config, else 8)")
    p.set_defaults(func=cmd_filter_difficulty)

    p = sub.add_parser("lm-eval", help="run lm-evaluation-harness's own tasks (no-tool baseline)",
                       description="Run lm-eval's aime24 / aime25 / gpqa_diamond_cot_zeroshot on an HF "
                       "checkpoint, from local files when given (--data-file TASK=PATH), and write a "
                       "normalised results JSON.")
    p.add_argument("--config", help="YAML config with an lm_eval section (tasks, apply_chat_template, batch_size)")
    p.add_argument("--model", required=True, help="HF checkpoint directory")
    p.add_argument("--tasks", help="comma-separated lm-eval tasks (default: config lm_eval.tasks)")
    p.add_argument("--data-file", action="append", metavar="TASK=PATH",
                   help="local json/jsonl/parquet for a task (repeatable); tasks without one read the hub")
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--cache-dir", help="datasets cache for the local files (CACHE_DIR/lm_eval; default: config "
                   f"'cache_dir', else {DEFAULT_CACHE_DIR})")
    p.add_argument("--limit", type=float, help="examples per task (testing only; <1 means a fraction)")
    p.add_argument("--batch-size", help="an integer or 'auto' (default: config, else 1)")
    p.add_argument("--device", help="torch device, e.g. cuda:0 or cpu")
    p.add_argument("--dtype", default="auto", help="model dtype (default: auto)")
    p.add_argument("--max-gen-toks", type=int, help="override the tasks' max new tokens")
    p.add_argument("--no-chat-template", action="store_true", help="prompt without the chat template")
    p.add_argument("--seed", type=int, default=0, help="random / numpy / torch seeds (default 0)")
    p.set_defaults(func=cmd_lm_eval)
    return data


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m cleaner.data.cli data ...``) until the main CLI wires it in."""
    parser = argparse.ArgumentParser(prog="cleaner")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except DataError as exc:  # bad data or config: one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
