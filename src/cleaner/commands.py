"""Pipeline subcommands of the ``cleaner`` CLI: testbed data and model, SFT, evaluation, RL, report.

Each stage of the Snakemake DAG calls one of these, so every stage also runs by hand. All take the pipeline
config (``--config``, validated against the schema) and explicit input/output paths.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_commands"]


def _config(path: str, experiment: str | None = None, *, regime: str | None = None) -> dict[str, Any]:
    from cleaner.config import load_config, resolve_experiment, resolve_regime

    cfg = load_config(path)
    if regime:
        return resolve_regime(cfg, regime)
    return resolve_experiment(cfg, experiment) if experiment else cfg


def _sandbox_config(cfg: dict[str, Any]):
    from cleaner.sandbox import SandboxConfig

    return SandboxConfig(preload=tuple(cfg.get("sandbox_preload", ("numpy", "sympy"))))


def _threads(cfg: dict[str, Any], override: int | None) -> None:
    import torch

    n = override or cfg.get("threads") or os.cpu_count() or 1
    torch.set_num_threads(int(n))


# --------------------------------------------------------------------------------------------- testbed
def _cmd_make_data(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cleaner.data.schema import write_json_atomic, write_jsonl_atomic, write_rl_parquet
    from cleaner.testbed.data import TestbedDataConfig, build_rl_row, generate_problems, make_sft_traces, trace_summary

    cfg = _config(args.config, regime=args.regime)
    dcfg = TestbedDataConfig.from_dict(cfg["testbed"]["data"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = generate_problems(dcfg)
    for split, fname in (("rl_train", "train"), ("val", "val"), ("test", "test")):
        rows = [build_rl_row(p, split=fname, index=i) for i, p in enumerate(splits[split])]
        write_rl_parquet(rows, out / f"{fname}.parquet")
    demos = splits.get("sft_recovery", [])
    with tqdm(total=len(splits["sft"]) + len(demos), desc="sft traces (real execution)", dynamic_ncols=True) as bar:
        traces = make_sft_traces(splits["sft"], dcfg, progress=bar.update, sandbox_config=_sandbox_config(cfg),
                                 recovery_problems=demos)
    write_jsonl_atomic(traces, out / "sft.jsonl")
    summary = {"splits": {k: len(v) for k, v in splits.items()}, "sft": trace_summary(traces)}
    write_json_atomic(summary, out / "summary.json")
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_make_model(args: argparse.Namespace) -> int:
    from cleaner.prompts import tool_schemas
    from cleaner.testbed.model import TinyModelConfig, init_model
    from cleaner.testbed.tokenizer import render_chat, train_tokenizer

    cfg = _config(args.config, regime=args.regime)
    tb = cfg["testbed"]
    out = Path(args.out)
    tmp_tok = out.parent / (out.name + ".tokenizer.tmp")
    tools = tool_schemas()

    def texts():
        # The BPE learns from the conversations the model will see, rendered by the chat template itself.
        with open(args.sft) as fh:
            for line in fh:
                if line.strip():
                    yield render_chat(json.loads(line)["messages"], tools)

    tok = train_tokenizer(texts(), tmp_tok, vocab_size=int(tb["tokenizer"]["vocab_size"]))
    model = init_model(tok, TinyModelConfig.from_dict(tb["model"]), seed=int(tb.get("model_seed", 0)), out_dir=out)
    n_params = sum(p.numel() for p in model.parameters())
    shutil.rmtree(tmp_tok, ignore_errors=True)
    print(json.dumps({"vocab_size": len(tok), "parameters": n_params, "out": str(out)}))
    return 0


# --------------------------------------------------------------------------------------------- SFT
def _cmd_sft(args: argparse.Namespace) -> int:
    from cleaner.train.sft import SFTConfig, train_sft

    cfg = _config(args.config)
    _threads(cfg, args.threads)
    scfg = SFTConfig.from_dict(cfg["sft"])
    summary = train_sft(args.model, args.data, args.out, scfg)
    print(json.dumps(summary, indent=2))
    return 0


# --------------------------------------------------------------------------------------------- eval
def _agent_config(section: dict[str, Any], saar: dict[str, Any] | None):
    from cleaner.agent import AgentConfig
    from cleaner.saar import SaarConfig

    return AgentConfig.from_dict(section, saar=SaarConfig.from_dict(saar) if saar is not None else None)


def _cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cleaner.agent import filter_long_prompts
    from cleaner.chat import ChatFormat
    from cleaner.engines.hf import HFGenerator
    from cleaner.evaluate import eval_agent_config, evaluate_rows, load_rows, write_eval_outputs
    from cleaner.prompts import tool_schemas
    from cleaner.sandbox import Sandbox

    cfg = _config(args.config, args.experiment)
    _threads(cfg, args.threads)
    ev = cfg["eval"]
    saar_flag = {"on": True, "off": False, None: None}[args.saar]
    acfg = eval_agent_config(cfg, saar_at_test_time=saar_flag)
    rows = load_rows(args.data, limit=args.limit or ev.get("limit"))
    k = int(args.k or ev["k"])
    gen, tok = HFGenerator.from_pretrained(args.model, device=args.device, max_batch_size=int(ev.get("batch_size", 64)))
    fmt = ChatFormat(tok, tool_schemas())
    rows, dropped = filter_long_prompts(rows, fmt, acfg)
    if dropped:
        print(f"eval: skipped {len(dropped)} rows whose prompt exceeds max_prompt_tokens="
              f"{acfg.max_prompt_tokens} (first: {dropped[:5]})", file=sys.stderr)
    if not rows:
        raise ValueError(f"{args.data}: no rows left to evaluate")

    async def main():
        async with Sandbox(workers=int(cfg["sandbox_workers"]), config=_sandbox_config(cfg)) as box:
            with tqdm(total=len(rows) * k, desc=f"eval {Path(args.data).stem}", dynamic_ncols=True) as bar:
                try:
                    return await evaluate_rows(gen, box, fmt, rows, acfg, k=k, seed=int(args.seed or ev.get("seed", 0)),
                                               progress=bar.update, grading=cfg["reward"]["grading"])
                finally:
                    await gen.aclose()

    summary, records = asyncio.run(main())
    summary.update({"model": str(args.model), "data": str(args.data), "k": k, "skipped_long_prompts": len(dropped),
                    "experiment": cfg.get("experiment"), "saar_at_test_time": acfg.saar.enabled})
    write_eval_outputs(summary, records, Path(args.out), Path(args.trajectories) if args.trajectories else None)
    keys = ("pass@1", f"pass@{k}", "tool_calls_per_trajectory", "tool_failures_per_trajectory", "response_length")
    print(json.dumps({key: summary.get(key) for key in keys}, indent=2))
    return 0


# --------------------------------------------------------------------------------------------- RL
def _cmd_rl(args: argparse.Namespace) -> int:
    from cleaner.evaluate import validation_agent_config
    from cleaner.train.rl import PeersConfig, RLConfig, train_rl

    cfg = _config(args.config, args.experiment)
    _threads(cfg, args.threads)
    rl = RLConfig.from_dict(cfg["rl"])
    agent = _agent_config(cfg["rollout"], cfg["saar"])
    summary = train_rl(args.model, args.data, args.out, rl=rl, agent=agent, peers=PeersConfig.from_dict(cfg["peers"]),
                       seed=int(args.seed), val_path=args.val, val_agent=validation_agent_config(cfg),
                       sandbox_workers=int(cfg["sandbox_workers"]), sandbox_config=_sandbox_config(cfg))
    print(json.dumps(summary, indent=2))
    return 0


# --------------------------------------------------------------------------------------------- report
def _cmd_report_merge(args: argparse.Namespace) -> int:
    from cleaner.report import merge_eval

    merged = merge_eval(args.inputs, args.out)
    print(json.dumps(merged["mean"], indent=2))
    return 0


def _cmd_report_build(args: argparse.Namespace) -> int:
    from cleaner.report import build_report

    cfg = _config(args.config)
    print(json.dumps(build_report(cfg, args.results, args.out_dir, config_path=args.config), indent=2, default=str))
    return 0


# --------------------------------------------------------------------------------------------- status
def _cmd_status(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from cleaner.status import collect_status, format_table

    jobs = collect_status(args.results)
    print(json.dumps([asdict(j) for j in jobs], indent=2) if args.json else format_table(jobs))
    return 0


def add_commands(sub: Any) -> None:
    """Register the pipeline subcommands on an argparse subparsers object."""
    tb = sub.add_parser("testbed", help="the embedded toolcalc testbed: data and model")
    tbs = tb.add_subparsers(dest="testbed_command", required=True)
    p = tbs.add_parser("make-data", help="generate RL/eval splits and SFT trajectories (executed for real)")
    p.add_argument("--config", required=True, help="pipeline config YAML (section testbed.data)")
    p.add_argument("--out", required=True, help="output directory: train/val/test.parquet, sft.jsonl, summary.json")
    p.add_argument("--regime", default=None, help="a key of the config's regimes (its testbed overrides apply)")
    p.set_defaults(func=_cmd_make_data)
    p = tbs.add_parser("make-model", help="train the tokenizer and initialise the tiny Qwen3 model")
    p.add_argument("--config", required=True, help="pipeline config YAML (sections testbed.tokenizer, testbed.model)")
    p.add_argument("--sft", required=True, help="sft.jsonl whose conversations the tokenizer learns from")
    p.add_argument("--out", required=True, help="output HF model directory (model + tokenizer)")
    p.add_argument("--regime", default=None, help="a key of the config's regimes (its testbed overrides apply)")
    p.set_defaults(func=_cmd_make_model)

    p = sub.add_parser("sft", help="cold-start SFT on tool-use trajectories (resumable)")
    p.add_argument("--config", required=True, help="pipeline config YAML (section sft)")
    p.add_argument("--model", required=True, help="initial HF model directory")
    p.add_argument("--data", required=True, help="JSONL of {messages: [...]} conversations")
    p.add_argument("--out", required=True, help="output directory (final/, checkpoints/, metrics.jsonl)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: config threads)")
    p.set_defaults(func=_cmd_sft)

    p = sub.add_parser("eval", help="agentic evaluation: k samples per problem with the tool")
    p.add_argument("--config", required=True, help="pipeline config YAML (sections eval, rollout, saar)")
    p.add_argument("--experiment", default=None, help="experiment whose overrides apply")
    p.add_argument("--model", required=True, help="HF model directory")
    p.add_argument("--data", required=True, help="eval parquet in the RL row schema")
    p.add_argument("--out", required=True, help="summary JSON")
    p.add_argument("--trajectories", default=None, help="JSONL with every trajectory")
    p.add_argument("--k", type=int, default=None, help="samples per problem (default: eval.k)")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--saar", choices=["on", "off"], default=None,
                   help="SAAR at test time with the eval.saar settings (default: eval.saar_at_test_time)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("rl", help="GRPO/DAPO RL with (SAAR on) or without CLEANER purification (resumable)")
    p.add_argument("--config", required=True, help="pipeline config YAML (sections rl, rollout, saar, peers)")
    p.add_argument("--experiment", required=True, help="experiment whose overrides apply")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", required=True, help="initial HF model directory (the SFT model)")
    p.add_argument("--data", required=True, help="training prompts parquet (RL row schema)")
    p.add_argument("--val", default=None, help="validation parquet, evaluated every rl.val_every steps")
    p.add_argument("--out", required=True, help="output directory (final/, checkpoints/, metrics.jsonl)")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_cmd_rl)

    rep = sub.add_parser("report", help="tables and figures from the results")
    reps = rep.add_subparsers(dest="report_command", required=True)
    p = reps.add_parser("merge-eval", help="merge per-split eval summaries into one eval.json")
    p.add_argument("--out", required=True)
    p.add_argument("inputs", nargs="+", help="per-split eval JSON files")
    p.set_defaults(func=_cmd_report_merge)
    p = reps.add_parser("build", help="final metrics (CSV + markdown), training curves and the html page index.html")
    p.add_argument("--config", required=True)
    p.add_argument("--results", required=True, help="results/<name> directory")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=_cmd_report_build)

    p = sub.add_parser("status", help="one table of every job of a run: stage, step/total, reward, accuracy, time left",
                       description="Where each job of a run stands, read from the files the jobs write "
                                   "(logs/, benchmarks/, rl/metrics.jsonl); works while the run is going.")
    p.add_argument("results", nargs="?", default="results",
                   help="results/<name> (one run) or a folder of runs (default: results)")
    p.add_argument("--json", action="store_true", help="print the jobs as JSON instead of a table")
    p.set_defaults(func=_cmd_status)
