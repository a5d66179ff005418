"""``cleaner verl ...``: write verl overrides, launch verl's trainers with them, convert checkpoints.

Wire into the main CLI with ``cleaner.engines.verl.cli.add_commands(subparsers)``. Subcommands (handlers are set
with ``set_defaults(func=...)`` and return the exit code):

- ``verl overrides --config C --stage rl|sft|eval [--experiment E] --output-dir D [--train-files F..]
  [--val-files F..] [--model-path M] [--seed S] [--saar on|off] [--out FILE]``: write the run's Hydra overrides
  (default ``D/overrides.txt``) and, for tool arms, ``D/tool_config.yaml``; ``--saar`` (eval stage): SAAR at test
  time with the ``eval.saar`` settings (default: ``eval.saar_at_test_time``);
- ``verl train --overrides FILE --stage rl|sft|eval [--dry-run]``: run ``python -m verl.trainer.main_ppo``
  (rl, eval) or ``torchrun -m verl.trainer.sft_trainer`` (sft) with the file's overrides; without CUDA GPUs (or
  without the rollout engine) it stops with a one-line message and exit code 2;
- ``verl convert CHECKPOINT_DIR TARGET_DIR [--step N]``: FSDP checkpoint -> HF directory (verl's model merger).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Mapping

from cleaner.config import load_config

EXIT_USAGE = 2

__all__ = ["add_commands", "gpu_problem", "logging_problem", "run_environment"]


def _override_value(overrides: list[str], key: str) -> str | None:
    for line in overrides:
        k, sep, v = line.lstrip("+").partition("=")
        if sep and k == key:
            return v.strip("'")
    return None


def gpu_problem(overrides: list[str], stage: str) -> str | None:
    """Why verl cannot run here (no CUDA GPU, rollout engine missing), or None when it can."""
    import torch

    if not torch.cuda.is_available():
        return ("verl training needs CUDA GPUs and none is visible here (torch.cuda.is_available() is False); "
                "run this command on a GPU node (the overrides file is portable)")
    if stage != "sft":
        engine = _override_value(overrides, "actor_rollout_ref.rollout.name") or "sglang"
        if find_spec(engine) is None:
            return f"the rollout engine {engine!r} is not installed in this environment (pip install {engine})"
    return None


def _loggers(overrides: list[str]) -> list[str]:
    value = _override_value(overrides, "trainer.logger") or "[console]"
    return [x.strip().strip("'") for x in value.strip("[]").split(",") if x.strip()]


def logging_problem(overrides: list[str], env: Mapping[str, str], home: Path) -> str | None:
    """Why the run would die at start-up for its loggers (wandb without credentials), or None.

    wandb needs ``WANDB_API_KEY``, a ``wandb login`` entry in ``~/.netrc``, or ``WANDB_MODE=offline|disabled``.
    """
    if "wandb" not in _loggers(overrides):
        return None
    if env.get("WANDB_API_KEY") or env.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return None
    netrc = home / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace"):
        return None
    return ("trainer.logger includes wandb but no wandb credentials are set (WANDB_API_KEY, `wandb login`) and "
            "WANDB_MODE is not offline: set one of them, or drop wandb from verl.logger in the config")


def run_environment(overrides_path: Path, overrides: list[str], env: Mapping[str, str]) -> dict[str, str]:
    """The trainer's environment: verl's ``file`` logger writes ``metrics.jsonl`` beside the overrides file."""
    out = dict(env)
    if "file" in _loggers(overrides) and "VERL_FILE_LOGGER_PATH" not in out:
        out["VERL_FILE_LOGGER_PATH"] = str(overrides_path.resolve().parent / "metrics.jsonl")
    return out


def cmd_overrides(args: argparse.Namespace) -> int:
    from cleaner.engines.verl.overrides import prepare_run

    config = load_config(args.config)
    if args.n_samples is not None:
        # e.g. 8 rollouts per training prompt for the 7B recipe's difficulty filter
        config["eval"]["k"] = args.n_samples
        for exp in (config.get("experiments") or {}).values():
            if exp and "k" in (exp.get("eval") or {}):
                exp["eval"]["k"] = args.n_samples
    out_dir = Path(args.output_dir)
    train_files, val_files = args.train_files, args.val_files
    if args.stage in ("rl", "eval"):
        # Rows must not name an agent loop, or verl would run it instead of the experiment's (see the helper); the
        # no-tool arm's prompts lose their tool sentences.
        from cleaner.config import resolve_experiment, validate_config
        from cleaner.engines.verl.overrides import loop_neutral_copies

        tools = resolve_experiment(validate_config(config), args.experiment)["rollout"]["tools_enabled"]
        if val_files:
            val_files = loop_neutral_copies(val_files, out_dir / "data" / "val", tools=tools)
        if train_files and args.stage == "rl":
            train_files = loop_neutral_copies(train_files, out_dir / "data" / "train", tools=tools)
    run = prepare_run(
        config, args.experiment, args.stage, output_dir=out_dir, train_files=train_files,
        val_files=val_files, model_path=args.model_path, seed=args.seed,
        overrides_name=Path(args.out).name if args.out else "overrides.txt", drop_overlong=args.drop_overlong_prompts,
        smoke=args.smoke, saar=None if args.saar is None else args.saar == "on",
    )
    if args.out and Path(args.out).resolve() != run.overrides_path:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(run.overrides_path.read_text())
    print(run.overrides_path)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cleaner.engines.verl.overrides import ppo_command, read_overrides, sft_command

    overrides = read_overrides(args.overrides)
    if args.stage == "sft":
        cmd = sft_command(overrides, nnodes=int(_override_value(overrides, "trainer.nnodes") or 1),
                          n_gpus_per_node=int(_override_value(overrides, "trainer.n_gpus_per_node") or 1))
    else:
        cmd = ppo_command(overrides)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    problem = logging_problem(overrides, os.environ, Path.home()) or gpu_problem(overrides, args.stage)
    if problem:
        print(f"cleaner verl train: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    env = run_environment(Path(args.overrides), overrides, os.environ)
    return subprocess.run(cmd, check=False, env=env).returncode


def cmd_convert(args: argparse.Namespace) -> int:
    from cleaner.engines.verl.convert import ConversionError, convert_checkpoint, find_actor_checkpoint

    src = Path(args.checkpoint_dir)
    try:
        actor = src if (src / "fsdp_config.json").exists() else find_actor_checkpoint(src, args.step)
        print(convert_checkpoint(actor, args.target_dir))
    except ConversionError as exc:
        print(f"cleaner verl convert: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def cmd_eval_summary(args: argparse.Namespace) -> int:
    from cleaner.engines.verl.eval_summary import summarize_generations

    summary = summarize_generations(args.generations, k=args.k, out_json=args.out, out_jsonl=args.trajectories,
                                    saar_at_test_time=None if args.saar is None else args.saar == "on")
    print(f"pass@1={summary['pass@1']} tool_failures_per_trajectory={summary['tool_failures_per_trajectory']}")
    return 0


def cmd_pass_counts(args: argparse.Namespace) -> int:
    from cleaner.data.schema import write_json_atomic
    from cleaner.engines.verl.eval_summary import pass_counts

    counts = pass_counts(args.generations, args.data, args.model)
    write_json_atomic(counts, args.out)
    print(f"{len(counts)} prompts, mean passes {sum(counts.values()) / max(1, len(counts)):.2f}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from cleaner.engines.verl.probe import run_probe

    return run_probe(args.model, engine=not args.template_only)


def add_commands(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Register ``verl`` with its subcommands on the main CLI's subparsers; returns the ``verl`` parser."""
    verl = subparsers.add_parser(
        "verl", help="paper-scale runs on verl 0.9.1 (overrides, train, convert)",
        description="Build verl Hydra overrides from an experiment of a config, launch verl's trainers with "
        "them on GPU nodes, and convert verl checkpoints to Hugging Face directories (docs/verl.md).",
    )
    sub = verl.add_subparsers(dest="verl_command", required=True, metavar="COMMAND")

    p = sub.add_parser("overrides", help="write the Hydra overrides of one stage of one experiment")
    p.add_argument("--config", required=True, help="pipeline config YAML")
    p.add_argument("--stage", required=True, choices=("rl", "sft", "eval"))
    p.add_argument("--experiment", help="experiment name (rl, eval)")
    p.add_argument("--output-dir", required=True, help="run directory: checkpoints, rollouts, tool_config.yaml")
    p.add_argument("--train-files", nargs="+", help="training parquet(s) (rl, sft)")
    p.add_argument("--val-files", nargs="+", help="validation / evaluation parquet(s) (rl, eval)")
    p.add_argument("--model-path", help="init model (rl: default verl.sft_model_path; sft: verl.model_path; "
                   "eval: the HF checkpoint to score)")
    p.add_argument("--seed", type=int, help="rl: default the experiment's first seed; eval: eval.seed")
    p.add_argument("--out", help="overrides file (default OUTPUT_DIR/overrides.txt)")
    p.add_argument("--n-samples", type=int, help="eval: samples per problem instead of eval.k")
    p.add_argument("--drop-overlong-prompts", action="store_true",
                   help="eval: let verl drop prompts over the budget instead of failing (difficulty filter)")
    p.add_argument("--smoke", action="store_true",
                   help="paper_smoke: one step / a handful of rows on one node, the recipe's model and lengths")
    p.add_argument("--saar", choices=("on", "off"),
                   help="eval: SAAR at test time with the eval.saar settings (default: eval.saar_at_test_time)")
    p.set_defaults(func=cmd_overrides)

    p = sub.add_parser("train", help="run verl with an overrides file (GPU nodes only)")
    p.add_argument("--overrides", required=True, help="file written by `cleaner verl overrides`")
    p.add_argument("--stage", required=True, choices=("rl", "sft", "eval"))
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval-summary", help="verl validation generations -> our eval summary JSON")
    p.add_argument("--generations", required=True, help="trainer.validation_data_dir of a validation-only run")
    p.add_argument("--k", type=int, required=True, help="samples per problem (eval.k)")
    p.add_argument("--out", required=True, help="summary JSON")
    p.add_argument("--trajectories", help="JSONL of every sample")
    p.add_argument("--saar", choices=("on", "off"), help="the run's SAAR at test time, recorded in the summary")
    p.set_defaults(func=cmd_eval_summary)

    p = sub.add_parser("pass-counts", help="passes per training prompt from a validation-only run (7B filter)")
    p.add_argument("--generations", required=True, help="trainer.validation_data_dir of the run")
    p.add_argument("--data", required=True, help="the parquet the run evaluated")
    p.add_argument("--model", required=True, help="the evaluated model dir (its tokenizer renders prompts)")
    p.add_argument("--out", required=True, help="JSON {uid: passes}")
    p.set_defaults(func=cmd_pass_counts)

    p = sub.add_parser("probe", help="first-GPU checks: chat template, SGLang stop token and per-request seed")
    p.add_argument("--model", required=True, help="HF model directory or id (e.g. Qwen/Qwen3-4B-Instruct-2507)")
    p.add_argument("--template-only", action="store_true", help="only the chat-template check (CPU, no SGLang)")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("convert", help="verl FSDP checkpoint -> Hugging Face model directory")
    p.add_argument("checkpoint_dir", help="trainer.default_local_dir, or one global_step_<N>/actor directory")
    p.add_argument("target_dir")
    p.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    p.set_defaults(func=cmd_convert)
    return verl
