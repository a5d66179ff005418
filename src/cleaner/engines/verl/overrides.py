"""One experiment of our config -> Hydra overrides for verl 0.9.1 (RL, SFT, validation-only evaluation).

Every row of CLEANER.md's recipe table maps to verl keys here, read from OUR sections (never duplicated in the
``verl`` section, which only holds what verl needs beyond them: model paths, GPUs, offload, engine, logging):

==================  ================================================================================
recipe row          verl overrides (source in our config)
==================  ================================================================================
init                ``actor_rollout_ref.model.path`` = ``verl.sft_model_path`` or the SFT stage's HF output
algorithm           ``algorithm.adv_estimator=grpo`` (rl.adv_estimator), ``norm_adv_by_std_in_grpo``
                    (rl.norm_adv_by_std), no KL (``use_kl_in_reward=false``, ``actor.use_kl_loss`` = rl.kl_coef > 0),
                    ``actor.entropy_coeff`` (rl.entropy_coef), ``actor.loss_agg_mode`` (rl.loss_agg_mode)
clip                ``actor.clip_ratio_low/high`` (rl.clip_ratio_low/high), dual clip ``actor.clip_ratio_c``
reward              ``reward.custom_reward_function`` = :func:`cleaner.engines.verl.reward.compute_score`
                    (``math_mode`` = rl.reward_math_mode), ``reward.reward_manager`` = ``CleanerRewardManager``
                    (verl's DAPO manager): ``reward.reward_kwargs.overlong_buffer_cfg`` (rl.overlong_penalty,
                    rl.overlong_buffer, rl.overlong_penalty_factor), ``max_resp_len`` (rollout.max_response_tokens)
lr                  ``actor.optim.lr`` (rl.lr), ``lr_warmup_steps`` (rl.warmup_steps), ``lr_scheduler_type``
                    (rl.lr_schedule), ``weight_decay`` (rl.weight_decay), ``actor.grad_clip`` (rl.grad_clip)
batch               ``data.train_batch_size`` (rl.batch_prompts), ``rollout.n`` (rl.n), ``actor.ppo_mini_batch_size``
                    (rl.mini_batch_prompts), ``actor.ppo_epochs`` (rl.ppo_epochs), ``trainer.total_training_steps``
                    (rl.steps, or null = derived by verl with verl.derive_total_steps), ``trainer.total_epochs``
lengths             ``data.max_prompt_length`` (rollout.max_prompt_tokens), ``data.max_response_length``
                    (rollout.max_response_tokens), ``multi_turn.max_assistant_turns`` (rollout.max_turns)
sampling            ``rollout.temperature/top_p`` (rollout.*), ``rollout.val_kwargs.top_p/temperature``
                    (eval.top_p / eval.temperature), ``val_kwargs.n`` (rl.val_k; eval: eval.k)
precision           ``actor/ref.fsdp_config.dtype`` + ``mixed_precision.param_dtype``, ``rollout.dtype`` (rl.precision)
SAAR                ``+cleaner.saar.*`` (saar.*: training rollouts), ``+cleaner.val_saar.*`` (eval.saar, on per
                    eval.saar_at_validation in RL, per ``--saar`` / eval.saar_at_test_time in evaluation), read by
                    ``cleaner_tool_agent``
hardware            ``trainer.nnodes/n_gpus_per_node``, ``actor.strategy`` (fsdp2), ``fsdp_config.*_offload``,
                    ``rollout.name`` (sglang), ``gpu_memory_utilization``, ``tensor_model_parallel_size``,
                    ``model.use_fused_kernels`` (verl.*)
==================  ================================================================================

Arms: the CLEANER arm (``saar.enabled``) runs ``cleaner_tool_agent`` with ``rollout.calculate_log_probs=False`` and
no rollout IS correction (CLEANER.md step 6); the tools baseline (SAAR off) runs the same ``cleaner_tool_agent`` with
SAAR off (``verl.baseline_agent_loop``; ``tool_agent`` = verl's stock loop, an optional experiment) and, when
``rl.rollout_is_correction``, rollout log-probs with sequence-level IS correction (``verl.rollout_is_level``, the
reference baseline's); the no-tool arm (``rollout.tools_enabled: false``) runs verl's ``single_turn_agent`` on prompts
without the tool sentences (:func:`without_tool_text`). Validation-only evaluation
(:func:`build_eval_overrides`) uses ``cleaner_tool_agent`` for every tool arm, with test-time SAAR off or on (the
``eval.saar`` settings, the same for every arm), so all arms are scored by one code path, both ways. Validation
during RL uses the same test-time SAAR per ``eval.saar_at_validation``; it cannot meet rollout IS correction (see
:func:`_check_validation_saar`), so the tools baselines of the paper configs validate with SAAR off.

The agent settings travel as ``+cleaner.*`` overrides (a ``cleaner`` block in verl's trainer config, which verl
hands to every agent loop); the tool settings in a ``tool_config.yaml`` written next to the overrides
(:func:`prepare_run`). :func:`compose_ppo_config` / :func:`compose_sft_config` compose the overrides with verl's own
Hydra config exactly as ``python -m verl.trainer.main_ppo`` / ``verl.trainer.sft_trainer`` do, and
:func:`validate_ppo_config` runs verl's own config checks on the result (CPU only, no Ray).
"""

from __future__ import annotations

import copy
import os
import re
import sys
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import yaml

from cleaner.config import ConfigError, resolve_experiment, validate_config
from cleaner.evaluate import saar_at_validation, test_time_saar
from cleaner.engines.verl import AGENT_NAME, TOOL_NAME, package_file
from cleaner.fsutil import atomic_write, write_text_atomic
from cleaner.prompts import AGENT_NOTE, BOXED_ANSWER_FORMAT, CODE_INTERPRETER_TOOL, CODE_SUBMIT_NOTE, TOOL_HINT

__all__ = [
    "STAGES",
    "RunFiles",
    "arm",
    "build_eval_overrides",
    "build_ppo_overrides",
    "build_sft_overrides",
    "compose_ppo_config",
    "compose_sft_config",
    "format_override",
    "smoke_overrides",
    "hydra_value",
    "ppo_command",
    "prepare_run",
    "read_overrides",
    "sft_command",
    "tool_config",
    "validate_ppo_config",
    "verl_config_dir",
    "write_overrides",
    "write_tool_config",
]

Stage = Literal["rl", "sft", "eval"]
STAGES: tuple[str, ...] = ("rl", "sft", "eval")
Arm = Literal["cleaner", "tools", "notool"]

REWARD_MODULE = "pkg://cleaner.engines.verl.reward"
AGENT_FIELDS = ("max_turns", "max_response_tokens", "max_turn_tokens", "max_prompt_tokens", "tools_enabled",
                "tool_timeout_s", "tool_memory_mb", "max_tool_response_chars")
_PLAIN = re.compile(r"^[A-Za-z0-9_./-]+$")


# -- Hydra value formatting ------------------------------------------------------------------------------
def hydra_value(value: Any) -> str:
    """A Python value as Hydra override grammar: null/true/false, numbers, quoted strings, ``[..]``, ``{..}``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"cannot write {value!r} as a Hydra override value")
        return repr(value)
    if isinstance(value, str):
        if _PLAIN.match(value) and value.lower() not in ("null", "true", "false") and not _looks_numeric(value):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    raise TypeError(f"cannot write a {type(value).__name__} as a Hydra override value")


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def format_override(key: str, value: Any, *, add: bool = False) -> str:
    """``key=value`` (``+key=value`` when ``add``: the key is not in verl's config)."""
    return f"{'+' if add else ''}{key}={hydra_value(value)}"


# -- config access ---------------------------------------------------------------------------------------
def _resolved(config: Mapping[str, Any], experiment: str) -> dict[str, Any]:
    validated = validate_config(copy.deepcopy(dict(config)))
    return resolve_experiment(validated, experiment)


def arm(resolved: Mapping[str, Any]) -> Arm:
    """Which arm of the comparison a resolved experiment is: ``cleaner``, ``tools`` (baseline) or ``notool``."""
    if not resolved["rollout"]["tools_enabled"]:
        return "notool"
    return "cleaner" if resolved["saar"]["enabled"] else "tools"


def _seed(resolved: Mapping[str, Any], seed: int | None) -> int:
    if seed is None:
        seed = int(resolved.get("seeds", [0])[0])
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    return seed + int(resolved["rl"]["seed_offset"])


def _files(files: str | os.PathLike | Sequence[str | os.PathLike], what: str) -> list[str]:
    items = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    if not items:
        raise ConfigError(f"{what}: at least one parquet file is required")
    return [str(Path(f).expanduser().resolve()) for f in items]


def _experiment_name(resolved: Mapping[str, Any], stage: str, seed: int) -> str:
    given = resolved["verl"]["experiment_name"]
    base = given or f"{resolved['name']}-{resolved['experiment']}"
    return f"{base}-{stage}-seed{seed}"


def _dtype(resolved: Mapping[str, Any]) -> str:
    """verl's dtype for ``rl.precision`` (the recipe: fp16 actor and rollout); verl trains in fp16 or bf16 only."""
    precision = resolved["rl"]["precision"]
    if precision not in ("fp16", "bf16"):
        raise ConfigError(f"rl.precision={precision!r}: verl trains and rolls out in fp16 or bf16 (the recipe: fp16)")
    return {"fp16": "float16", "bf16": "bfloat16"}[precision]


def _dtype_overrides(prefix: str, dtype: str) -> list[str]:
    short = {"float16": "fp16", "bfloat16": "bf16"}[dtype]
    return [
        format_override(f"{prefix}.fsdp_config.dtype", dtype),
        format_override(f"{prefix}.fsdp_config.mixed_precision",
                        {"param_dtype": short, "reduce_dtype": "fp32", "buffer_dtype": "fp32"}, add=True),
    ]


def _cleaner_block(resolved: Mapping[str, Any], *, seed: int, mode: str, saar_enabled: bool,
                   val_saar_enabled: bool) -> list[str]:
    """``+cleaner.*``: the settings ``cleaner_tool_agent`` reads from verl's trainer config.

    ``cleaner.saar`` is the arm's own SAAR (training rollouts); ``cleaner.val_saar`` the test-time SAAR of
    validation / evaluation requests: the ``eval.saar`` settings, the same for every arm
    (:func:`cleaner.evaluate.test_time_saar`, shared with the embedded engine), on or off as asked.
    """
    ro, saar, verl = resolved["rollout"], dict(resolved["saar"]), resolved["verl"]
    saar["enabled"] = bool(saar_enabled)
    val_saar = asdict(test_time_saar(resolved, enabled=val_saar_enabled))
    out = [
        format_override("cleaner.seed", seed, add=True),
        format_override("cleaner.mode", mode, add=True),
        format_override("cleaner.request_seed_key", verl["request_seed_key"], add=True),
    ]
    out += [format_override(f"cleaner.agent.{k}", ro[k], add=True) for k in AGENT_FIELDS]
    out += [format_override(f"cleaner.saar.{k}", v, add=True) for k, v in saar.items()]
    out += [format_override(f"cleaner.val_saar.{k}", v, add=True) for k, v in val_saar.items()]
    return out


# The local Ray verl starts gets the SLURM job's CPUs, resolved in the job (verl's ppo_trainer.yaml: "use a fixed
# number instead of null when using SLURM"); null (all the machine's) outside SLURM. Multi-node: ray_on_slurm.sh.
RAY_CPUS_FROM_SLURM = "${oc.decode:${oc.env:SLURM_CPUS_PER_TASK,${oc.env:SLURM_CPUS_ON_NODE,null}}}"


def _common_ppo(resolved: Mapping[str, Any], *, model_path: str, output_dir: Path, seed: int, stage: str,
                agent_loop: str, tools: bool, drop_overlong: bool) -> list[str]:
    """Overrides shared by RL and eval: model, lengths, engine, hardware, reward, tools, logging.

    ``drop_overlong``: verl filters out prompts longer than ``rollout.max_prompt_tokens`` (training); otherwise a
    longer prompt stops the run with verl's error (evaluation: a benchmark problem is never dropped silently).
    """
    ro, rl, ev, verl = resolved["rollout"], resolved["rl"], resolved["eval"], resolved["verl"]
    prompt_len, response_len = ro["max_prompt_tokens"], ro["max_response_tokens"]
    if ro["max_turn_tokens"] > response_len:
        raise ConfigError(
            f"rollout.max_turn_tokens ({ro['max_turn_tokens']}) exceeds rollout.max_response_tokens ({response_len})"
        )
    ppo_tokens = verl["ppo_max_token_len_per_gpu"] or max(rl["micro_batch_tokens"], prompt_len + response_len)
    if ppo_tokens < prompt_len + response_len:
        raise ConfigError(
            f"verl.ppo_max_token_len_per_gpu ({ppo_tokens}) must hold one full sequence "
            f"(rollout.max_prompt_tokens + max_response_tokens = {prompt_len + response_len})"
        )
    logprob_tokens = verl["log_prob_max_token_len_per_gpu"] or 4 * ppo_tokens
    dtype = _dtype(resolved)
    if rl["overlong_penalty"] and not 0 < rl["overlong_buffer"] <= response_len:
        raise ConfigError(
            f"rl.overlong_buffer ({rl['overlong_buffer']}) must be in (0, rollout.max_response_tokens={response_len}] "
            "when rl.overlong_penalty is on (verl's DAPO reward manager asserts it)"
        )
    a, r, ref = "actor_rollout_ref.actor", "actor_rollout_ref.rollout", "actor_rollout_ref.ref"
    o: list[str] = [
        format_override("data.max_prompt_length", prompt_len),
        format_override("data.max_response_length", response_len),
        format_override("data.return_raw_chat", True),
        format_override("data.filter_overlong_prompts", bool(verl["filter_overlong_prompts"] and drop_overlong)),
        format_override("data.val_batch_size", verl["val_batch_size"]),
        format_override("data.truncation", "error"),
        format_override("data.seed", seed),
        format_override("actor_rollout_ref.model.path", model_path),
        format_override("actor_rollout_ref.model.use_remove_padding", verl["use_remove_padding"]),
        format_override("actor_rollout_ref.model.enable_gradient_checkpointing", verl["gradient_checkpointing"]),
        format_override("actor_rollout_ref.model.use_fused_kernels", verl["use_fused_kernels"]),
        format_override("actor_rollout_ref.model.fused_kernel_options.impl_backend", verl["fused_kernel_backend"]),
        format_override(f"{a}.strategy", verl["strategy"]),
        format_override(f"{a}.use_dynamic_bsz", True),
        format_override(f"{a}.ppo_max_token_len_per_gpu", ppo_tokens),
        format_override(f"{a}.data_loader_seed", seed),
        format_override(f"{a}.fsdp_config.param_offload", verl["param_offload"]),
        format_override(f"{a}.fsdp_config.optimizer_offload", verl["optimizer_offload"]),
        format_override(f"{a}.fsdp_config.seed", seed),
        *_dtype_overrides(a, dtype),
        format_override(f"{ref}.log_prob_max_token_len_per_gpu", logprob_tokens),
        format_override(f"{ref}.fsdp_config.param_offload", verl["param_offload"]),
        *_dtype_overrides(ref, dtype),
        format_override(f"{r}.name", verl["rollout_name"]),
        format_override(f"{r}.mode", "async"),
        format_override(f"{r}.dtype", dtype),
        format_override(f"{r}.temperature", ro["temperature"]),
        format_override(f"{r}.top_p", ro["top_p"]),
        format_override(f"{r}.top_k", -1),
        format_override(f"{r}.seed", seed),
        format_override(f"{r}.gpu_memory_utilization", verl["gpu_memory_utilization"]),
        format_override(f"{r}.tensor_model_parallel_size", verl["tensor_model_parallel_size"]),
        format_override(f"{r}.max_num_seqs", verl["max_num_seqs"]),
        format_override(f"{r}.log_prob_max_token_len_per_gpu", logprob_tokens),
        format_override(f"{r}.val_kwargs.temperature", ev["temperature"]),
        format_override(f"{r}.val_kwargs.top_p", ev["top_p"]),
        format_override(f"{r}.val_kwargs.top_k", -1),
        format_override(f"{r}.val_kwargs.do_sample", ev["temperature"] > 0),
        format_override(f"{r}.multi_turn.enable", tools),
        format_override(f"{r}.agent.default_agent_loop", agent_loop),
        format_override(f"{r}.agent.num_workers", verl["agent_num_workers"]),
        format_override("reward.custom_reward_function.path", REWARD_MODULE),
        format_override("reward.custom_reward_function.name", "compute_score"),
        format_override("reward.custom_reward_function.reward_kwargs.math_mode", rl["reward_math_mode"], add=True),
        format_override("reward.custom_reward_function.reward_kwargs.grading", resolved["reward"]["grading"], add=True),
        # verl's reward workers are separate processes: each sizes its one shared sandbox pool from this.
        format_override("reward.custom_reward_function.reward_kwargs.code_workers", resolved["sandbox_workers"],
                        add=True),
        format_override("reward.reward_manager.source", "importlib"),
        format_override("reward.reward_manager.name", "CleanerRewardManager"),
        format_override("reward.reward_manager.module.path", REWARD_MODULE),
        format_override("reward.reward_kwargs.overlong_buffer_cfg.enable", rl["overlong_penalty"], add=True),
        format_override("reward.reward_kwargs.overlong_buffer_cfg.len", rl["overlong_buffer"], add=True),
        format_override("reward.reward_kwargs.overlong_buffer_cfg.penalty_factor", rl["overlong_penalty_factor"],
                        add=True),
        format_override("reward.reward_kwargs.overlong_buffer_cfg.log", True, add=True),
        format_override("reward.reward_kwargs.max_resp_len", response_len, add=True),
        format_override("trainer.nnodes", verl["nnodes"]),
        format_override("trainer.n_gpus_per_node", verl["n_gpus_per_node"]),
        format_override("ray_kwargs.ray_init.num_cpus", RAY_CPUS_FROM_SLURM if verl["nnodes"] == 1 else None),
        format_override("trainer.project_name", verl["project_name"]),
        format_override("trainer.experiment_name", _experiment_name(resolved, stage, seed)),
        format_override("trainer.logger", list(verl["logger"])),
        format_override("trainer.default_local_dir", str(output_dir / "checkpoints")),
        format_override("trainer.resume_mode", "auto"),
    ]
    if verl["max_num_batched_tokens"] is not None:
        o.append(format_override(f"{r}.max_num_batched_tokens", verl["max_num_batched_tokens"]))
    if tools:
        o += [
            format_override(f"{r}.multi_turn.tool_config_path", str(output_dir / "tool_config.yaml")),
            format_override(f"{r}.multi_turn.format", "hermes"),
            format_override(f"{r}.multi_turn.max_assistant_turns", ro["max_turns"]),
            format_override(f"{r}.multi_turn.max_user_turns", ro["max_turns"]),
            format_override(f"{r}.multi_turn.max_parallel_calls", 1),
            format_override(f"{r}.multi_turn.max_tool_response_length", ro["max_tool_response_chars"]),
            format_override(f"{r}.multi_turn.tool_response_truncate_side", "middle"),
        ]
    if agent_loop == AGENT_NAME:
        o.append(format_override(f"{r}.agent.agent_loop_config_path", str(package_file("agent_loops.yaml"))))
    return o


def _model_path(resolved: Mapping[str, Any], model_path: str | os.PathLike | None, *, key: str) -> str:
    path = model_path if model_path is not None else resolved["verl"][key]
    if not path:
        raise ConfigError(f"no model: pass model_path or set verl.{key}")
    return str(path)


# -- the three stages ------------------------------------------------------------------------------------
def build_ppo_overrides(
    config: Mapping[str, Any],
    experiment: str,
    *,
    train_files: str | os.PathLike | Sequence[str | os.PathLike],
    val_files: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    model_path: str | os.PathLike | None = None,
    seed: int | None = None,
) -> list[str]:
    """Hydra overrides for ``python -m verl.trainer.main_ppo``: RL of one experiment (and seed) of our config.

    ``model_path`` (the RL init) defaults to ``verl.sft_model_path``; ``seed`` to the experiment's first seed
    (plus ``rl.seed_offset``). Raises :class:`cleaner.config.ConfigError` naming the field for settings verl cannot
    run (e.g. rollout IS correction with SAAR, whose spliced tokens have no valid rollout log-probs).
    """
    resolved = _resolved(config, experiment)
    rl, saar, verl = resolved["rl"], resolved["saar"], resolved["verl"]
    which = arm(resolved)
    seed = _seed(resolved, seed)
    out = Path(output_dir).resolve()
    if which == "cleaner" and rl["rollout_is_correction"]:
        raise ConfigError(
            f"experiments.{experiment}: rl.rollout_is_correction needs rollout log-probs, which SAAR's spliced "
            "trajectories do not have (CLEANER.md step 6: the CLEANER arm recomputes them); set it to false"
        )
    if rl["mini_batch_prompts"] > rl["batch_prompts"] or rl["batch_prompts"] % rl["mini_batch_prompts"]:
        raise ConfigError("rl.mini_batch_prompts must divide rl.batch_prompts")
    if which == "cleaner":
        loop = AGENT_NAME
    elif which == "tools":
        loop = verl["baseline_agent_loop"]
    else:
        loop = "single_turn_agent"
    val_saar = which != "notool" and saar_at_validation(resolved)
    if val_saar:
        _check_validation_saar(resolved, experiment, loop)
    is_correction = bool(rl["rollout_is_correction"])
    a = "actor_rollout_ref.actor"
    o = _common_ppo(resolved, model_path=_model_path(resolved, model_path, key="sft_model_path"), output_dir=out,
                    seed=seed, stage="rl", agent_loop=loop, tools=which != "notool", drop_overlong=True)
    o += [
        format_override("data.train_files", _files(train_files, "train_files")),
        format_override("data.val_files", _files(val_files, "val_files")),
        format_override("data.train_batch_size", rl["batch_prompts"]),
        format_override("data.shuffle", True),
        format_override("algorithm.adv_estimator", rl["adv_estimator"]),
        format_override("algorithm.norm_adv_by_std_in_grpo", rl["norm_adv_by_std"]),
        format_override("algorithm.use_kl_in_reward", False),
        format_override("algorithm.rollout_correction.rollout_is", verl["rollout_is_level"] if is_correction else None),
        format_override("algorithm.rollout_correction.rollout_is_threshold", verl["rollout_is_threshold"]),
        format_override("algorithm.filter_groups.enable", rl["dynamic_sampling"]),
        format_override("algorithm.filter_groups.metric", "acc"),
        format_override("algorithm.filter_groups.max_num_gen_batches", rl["max_sampling_rounds"]),
        format_override(f"{a}.optim.lr", float(rl["lr"])),
        format_override(f"{a}.optim.lr_warmup_steps", rl["warmup_steps"]),
        format_override(f"{a}.optim.lr_scheduler_type", rl["lr_schedule"]),
        format_override(f"{a}.optim.weight_decay", float(rl["weight_decay"])),
        format_override(f"{a}.optim.clip_grad", float(rl["grad_clip"])),
        format_override(f"{a}.grad_clip", float(rl["grad_clip"])),
        format_override(f"{a}.ppo_mini_batch_size", rl["mini_batch_prompts"]),
        format_override(f"{a}.ppo_epochs", rl["ppo_epochs"]),
        format_override(f"{a}.clip_ratio_low", float(rl["clip_ratio_low"])),
        format_override(f"{a}.clip_ratio_high", float(rl["clip_ratio_high"])),
        format_override(f"{a}.clip_ratio_c", float(rl["clip_ratio_c"])),
        format_override(f"{a}.loss_agg_mode", rl["loss_agg_mode"]),
        format_override(f"{a}.entropy_coeff", float(rl["entropy_coef"])),
        format_override(f"{a}.use_kl_loss", rl["kl_coef"] > 0),
        format_override(f"{a}.kl_loss_coef", float(rl["kl_coef"])),
        format_override("actor_rollout_ref.rollout.n", rl["n"]),
        format_override("actor_rollout_ref.rollout.calculate_log_probs", is_correction),
        format_override("actor_rollout_ref.rollout.val_kwargs.n", rl["val_k"]),
        format_override("trainer.total_epochs", verl["total_epochs"]),
        # null: verl counts len(train loader) x total_epochs on the prompts left after over-long ones are filtered
        format_override("trainer.total_training_steps", None if verl["derive_total_steps"] else rl["steps"]),
        format_override("trainer.save_freq", rl["checkpoint_every"]),
        format_override("trainer.max_actor_ckpt_to_keep", verl["keep_checkpoints"]),
        format_override("trainer.test_freq", rl["val_every"] if rl["val_every"] > 0 else -1),
        format_override("trainer.val_before_train", rl["val_every"] > 0),
        format_override("trainer.rollout_data_dir", str(out / "rollouts")),
        format_override("trainer.validation_data_dir", str(out / "validation")),
    ]
    if loop == AGENT_NAME:
        o += _cleaner_block(resolved, seed=seed, mode="train", saar_enabled=saar["enabled"], val_saar_enabled=val_saar)
    return o


def _check_validation_saar(resolved: Mapping[str, Any], experiment: str, loop: str) -> None:
    """Refuse validation with SAAR where verl's validation path cannot run it, naming the keys to change.

    verl sends validation requests with ``logprobs = rollout.calculate_log_probs`` and stacks the rollout log-probs
    batch-wide; a spliced (purified) trajectory has none (they would be stale), so validation SAAR and rollout IS
    correction (which sets ``calculate_log_probs``) cannot meet in one run. verl's stock ``tool_agent`` has no SAAR.
    """
    which = "eval.saar_at_validation" + (
        " (null: eval.saar_at_test_time)" if resolved["eval"].get("saar_at_validation") is None else "")
    if resolved["rl"]["rollout_is_correction"]:
        raise ConfigError(
            f"experiments.{experiment}: rl.rollout_is_correction with SAAR at validation ({which} is true): verl "
            "requests rollout log-probs for validation too, and SAAR's spliced validation trajectories have none; "
            f"set eval: {{saar_at_validation: false}} in experiments.{experiment}, or rl.rollout_is_correction: false"
        )
    if loop != AGENT_NAME:
        raise ConfigError(
            f"experiments.{experiment}: verl.baseline_agent_loop={loop} (verl's stock loop) has no SAAR, but {which} "
            f"is true; set eval: {{saar_at_validation: false}} in experiments.{experiment}"
        )


def build_eval_overrides(
    config: Mapping[str, Any],
    experiment: str,
    *,
    val_files: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    model_path: str | os.PathLike,
    seed: int | None = None,
    drop_overlong: bool = False,
    saar: bool | None = None,
) -> list[str]:
    """Hydra overrides for a validation-only ``verl.trainer.main_ppo`` run scoring ``model_path`` (an HF dir).

    CLEANER.md protocol: ``eval.k`` samples per problem (``val_kwargs.n``), temperature ``eval.temperature``,
    top-p ``eval.top_p`` (0.6), the rollout's turn / response limits, with the tool; SAAR at test time per ``saar``
    (None: ``eval.saar_at_test_time``) with the ``eval.saar`` settings (``+cleaner.val_saar``) for every tool arm,
    whatever its training ``saar`` section: the pipeline runs each model both ways (eval/ and eval_saar/, same
    problems and sampling seeds). Prompts up to ``eval.max_prompt_tokens`` (the reference eval scripts: 4096); a
    longer one stops the run unless ``drop_overlong`` (the 7B difficulty filter over training prompts, which RL
    filters at its own budget anyway). Validation batches of ``verl.val_batch_size`` prompts. Generations go to
    ``<output_dir>/generations`` (verl's validation dump).
    """
    resolved = _eval_resolved(_resolved(config, experiment))
    ev, verl = resolved["eval"], resolved["verl"]
    which = arm(resolved)
    seed = int(ev["seed"]) if seed is None else seed
    out = Path(output_dir).resolve()
    loop = "single_turn_agent" if which == "notool" else AGENT_NAME
    files = _files(val_files, "val_files")
    # verl builds a train loader even for val_only runs (batches of train_batch_size, drop_last=True) and asserts
    # it is not empty: one prompt per GPU is the smallest batch its checks accept (train_batch_size x rollout.n
    # divisible by the world size), so every split with at least that many rows runs.
    world = int(verl["nnodes"]) * int(verl["n_gpus_per_node"])
    _check_rows(files, world, what="eval split")
    o = _common_ppo(resolved, model_path=str(model_path), output_dir=out, seed=seed, stage="eval", agent_loop=loop,
                    tools=which != "notool", drop_overlong=drop_overlong)
    o += [
        format_override("data.train_files", files),
        format_override("data.val_files", files),
        format_override("data.val_max_samples", ev["limit"] if ev["limit"] else -1),
        format_override("data.train_batch_size", world),
        format_override("actor_rollout_ref.rollout.n", 1),
        format_override("actor_rollout_ref.rollout.calculate_log_probs", False),
        format_override("actor_rollout_ref.rollout.val_kwargs.n", ev["k"]),
        format_override("actor_rollout_ref.actor.ppo_mini_batch_size", world),
        format_override("algorithm.adv_estimator", "grpo"),
        format_override("algorithm.rollout_correction.rollout_is", None),
        format_override("trainer.val_only", True),
        format_override("trainer.val_before_train", True),
        format_override("trainer.total_epochs", 1),
        format_override("trainer.validation_data_dir", str(out / "generations")),
    ]
    if loop == AGENT_NAME:
        on = bool(ev["saar_at_test_time"]) if saar is None else bool(saar)
        # No training rollouts in an eval run: the arm's training SAAR is written off, test-time SAAR in val_saar.
        o += _cleaner_block(resolved, seed=seed, mode="eval", saar_enabled=False, val_saar_enabled=on)
    return o


def _eval_resolved(resolved: dict[str, Any]) -> dict[str, Any]:
    """The experiment with evaluation's prompt budget (``eval.max_prompt_tokens``) as the rollout's."""
    budget = resolved["eval"].get("max_prompt_tokens")
    if budget:
        resolved = copy.deepcopy(resolved)
        resolved["rollout"]["max_prompt_tokens"] = int(budget)
    return resolved


def _check_rows(files: Sequence[str], minimum: int, *, what: str) -> None:
    """Refuse (naming the file) parquet files whose rows cannot fill one batch; files not on this machine pass."""
    import pyarrow.parquet as pq

    present = [f for f in files if Path(f).is_file()]
    if len(present) != len(files):
        return
    rows = sum(pq.read_metadata(f).num_rows for f in present)
    if rows < minimum:
        raise ConfigError(
            f"{what} {', '.join(files)}: {rows} row(s), fewer than the {minimum} GPUs (verl.nnodes x "
            "n_gpus_per_node); verl's train loader would be empty"
        )


def build_sft_overrides(
    config: Mapping[str, Any],
    *,
    train_files: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    val_files: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    model_path: str | os.PathLike | None = None,
) -> list[str]:
    """Hydra overrides for ``torchrun -m verl.trainer.sft_trainer`` (multi-turn ``messages`` + ``tools`` rows).

    The cold-start SFT (RA-SFT) of the recipe: lr, batch, length, steps, warm-up, weight decay, clipping and seed
    from our ``sft`` section; epochs / micro-batch / truncation from ``verl.sft``; the model from ``model_path`` or
    ``verl.model_path``. Loss on assistant tokens only (verl's MultiTurnSFTDataset masks the rest).
    """
    cfg = validate_config(copy.deepcopy(dict(config)))
    sft, verl = cfg["sft"], cfg["verl"]
    vs = verl["sft"]
    out = Path(output_dir).resolve()
    name = verl["experiment_name"] or cfg["name"]
    o = [
        format_override("data.train_files", _files(train_files, "train_files")),
        format_override("data.val_files", _files(val_files, "val_files") if val_files else None),
        format_override("data.messages_key", "messages"),
        format_override("data.tools_key", "tools"),
        format_override("data.train_batch_size", sft["batch_size"]),
        format_override("data.micro_batch_size_per_gpu", vs["micro_batch_size_per_gpu"]),
        format_override("data.use_dynamic_bsz", True),
        format_override("data.max_token_len_per_gpu", vs["max_token_len_per_gpu"] or sft["max_length"]),
        format_override("data.max_length", sft["max_length"]),
        format_override("data.truncation", vs["truncation"]),
        format_override("data.pad_mode", "no_padding"),
        format_override("model.path", _model_path(cfg, model_path, key="model_path")),
        format_override("model.enable_gradient_checkpointing", verl["gradient_checkpointing"]),
        format_override("model.use_remove_padding", verl["use_remove_padding"]),
        format_override("engine.strategy", verl["strategy"]),
        format_override("engine.param_offload", verl["param_offload"]),
        format_override("engine.optimizer_offload", verl["optimizer_offload"]),
        format_override("optim.lr", float(sft["lr"])),
        format_override("optim.lr_warmup_steps", sft["warmup_steps"]),
        format_override("optim.lr_scheduler_type", "cosine"),
        format_override("optim.min_lr_ratio", float(sft["min_lr_ratio"])),
        format_override("optim.weight_decay", float(sft["weight_decay"])),
        format_override("optim.clip_grad", float(sft["grad_clip"])),
        format_override("trainer.total_epochs", vs["total_epochs"]),
        format_override("trainer.total_training_steps", sft["max_steps"]),
        format_override("trainer.save_freq", sft["checkpoint_every"]),
        format_override("trainer.test_freq", -1),
        format_override("trainer.seed", sft["seed"]),
        format_override("trainer.nnodes", verl["nnodes"]),
        format_override("trainer.n_gpus_per_node", verl["n_gpus_per_node"]),
        format_override("trainer.project_name", verl["project_name"]),
        format_override("trainer.experiment_name", f"{name}-sft"),
        format_override("trainer.logger", list(verl["logger"])),
        format_override("trainer.default_local_dir", str(out / "checkpoints")),
        format_override("trainer.resume_mode", "auto"),
    ]
    return o


# -- paper_smoke: every GPU stage on a handful of rows ---------------------------------------------------------
SMOKE_SAMPLES = 2  # rollouts per prompt in the smoke RL step (GRPO needs a group) and its difficulty stage


def smoke_overrides(overrides: Sequence[str], stage: Stage, *, n_gpus: int) -> list[str]:
    """``overrides`` shrunk to a smoke run of the same stage on ONE node: one optimiser step (RL, SFT) on one batch
    of ``n_gpus`` prompts (SFT: one batch), a checkpoint after it (so conversion runs too), one sample of ``n_gpus``
    problems (eval); the model, lengths, memory and engine settings stay the recipe's, so a broken site, driver,
    template or memory budget shows up in minutes. Keys already present are replaced in place."""
    if stage == "sft":
        changes = {"trainer.total_training_steps": 1, "trainer.save_freq": 1, "trainer.total_epochs": 1,
                   "trainer.nnodes": 1, "data.train_max_samples": _override_int(overrides, "data.train_batch_size")}
    elif stage == "rl":
        changes = {"trainer.total_training_steps": 1, "trainer.save_freq": 1, "trainer.test_freq": -1,
                   "trainer.val_before_train": False, "trainer.nnodes": 1, "data.train_batch_size": n_gpus,
                   "data.train_max_samples": n_gpus, "data.val_max_samples": n_gpus,
                   "actor_rollout_ref.actor.ppo_mini_batch_size": n_gpus,
                   "actor_rollout_ref.rollout.n": SMOKE_SAMPLES}
    else:
        changes = {"trainer.nnodes": 1, "data.val_max_samples": n_gpus}
    out, seen = [], set()
    for line in overrides:
        key = line.lstrip("+").split("=", 1)[0]
        if key in changes:
            line, _ = format_override(key, changes[key], add=line.startswith("+")), seen.add(key)
        out.append(line)
    return out + [format_override(k, v) for k, v in changes.items() if k not in seen]


def _override_int(overrides: Sequence[str], key: str) -> int:
    for line in overrides:
        k, sep, v = line.lstrip("+").partition("=")
        if sep and k == key:
            return int(v)
    raise ConfigError(f"override {key} not found")


# -- files, commands, composition ------------------------------------------------------------------------
def tool_config(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """verl tool YAML content for :class:`cleaner.engines.verl.tool.CodeInterpreterTool` with ``rollout.*`` values."""
    ro = resolved["rollout"]
    return {
        "tools": [{
            "class_name": "cleaner.engines.verl.tool.CodeInterpreterTool",
            "config": {
                "type": "native",
                "timeout_s": float(ro["tool_timeout_s"]),
                "memory_mb": int(ro["tool_memory_mb"]),
                "max_tool_response_chars": int(ro["max_tool_response_chars"]),
                "workers": int(resolved["sandbox_workers"]),
            },
            "tool_schema": copy.deepcopy(CODE_INTERPRETER_TOOL),
        }]
    }


def write_tool_config(path: str | os.PathLike, resolved: Mapping[str, Any]) -> Path:
    """Write :func:`tool_config` atomically; returns the path."""
    p = Path(path)
    header = f"# verl tool config for {TOOL_NAME} (written by cleaner.engines.verl.overrides)\n"
    write_text_atomic(p, header + yaml.safe_dump(tool_config(resolved), sort_keys=False))
    return p


def write_overrides(path: str | os.PathLike, overrides: Iterable[str], *, header: str | None = None) -> Path:
    """Write one override per line (``#`` lines are comments), atomically; returns the path."""
    lines = [f"# {line}" for line in (header or "").splitlines()] + [str(o) for o in overrides]
    bad = [line for line in lines if "\n" in line]
    if bad:
        raise ValueError(f"override contains a newline: {bad[0]!r}")
    p = Path(path)
    write_text_atomic(p, "\n".join(lines) + "\n")
    return p


def read_overrides(path: str | os.PathLike) -> list[str]:
    """The overrides of a file written by :func:`write_overrides` (comments and blank lines skipped)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"overrides file not found: {p}")
    return [line for line in (raw.strip() for raw in p.read_text().splitlines()) if line and not line.startswith("#")]


@dataclass(frozen=True)
class RunFiles:
    """What :func:`prepare_run` wrote: the overrides file, the tool config (None without tools), the overrides."""

    overrides_path: Path
    tool_config_path: Path | None
    overrides: list[str]


# The no-tool arm's prompts: the reference's no-tool dataset class builds them without the tool hint and the tool
# note; the answer-format and code-submission sentences that tell the model when to stop calling tools get
# tool-free wordings of ours.
NO_TOOL_REWRITES: tuple[tuple[str, str], ...] = (
    (TOOL_HINT, ""),
    (AGENT_NOTE, ""),
    (BOXED_ANSWER_FORMAT, "\nOutput the final answer in the following text format, the answer format must be: "
                          "\\boxed{'The final answer goes here.'}."),
    (CODE_SUBMIT_NOTE, "\nOnce you are sure the code is correct, submit it within ```python\n# YOUR CODE HERE\n```."),
)


def without_tool_text(prompt: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A row's prompt messages with every sentence about the tool removed or reworded (no-tool arm)."""
    out = []
    for message in prompt:
        content = str(message["content"])
        for old, new in NO_TOOL_REWRITES:
            content = content.replace(old, new)
        out.append({**message, "content": content})
    return out


def loop_neutral_copies(files: Sequence[str | os.PathLike] | str, out_dir: Path, *, tools: bool = True) -> list[str]:
    """Copies of RL/eval parquets without the ``agent_name`` column, written into ``out_dir``.

    verl lets a row's ``agent_name`` override ``default_agent_loop``; our data rows name ``tool_agent``, which would
    silently run the stock loop in the CLEANER arm. Without the column every row runs the experiment's loop.
    ``tools=False`` (no-tool arm) also rewrites the prompts with :func:`without_tool_text`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in [files] if isinstance(files, (str, os.PathLike)) else list(files):
        table = pq.read_table(str(f))
        target = out_dir / Path(f).name
        if "agent_name" in table.column_names:
            table = table.drop_columns(["agent_name"])
        if not tools and "prompt" in table.column_names:
            prompts = [without_tool_text(p) for p in table.column("prompt").to_pylist()]
            column = table.column_names.index("prompt")
            table = table.set_column(column, "prompt", pa.array(prompts, type=table.schema.field("prompt").type))
        atomic_write(target, lambda tmp, table=table: pq.write_table(table, tmp), suffix=".parquet")
        out.append(str(target))
    return out


def prepare_run(
    config: Mapping[str, Any],
    experiment: str | None,
    stage: Stage,
    *,
    output_dir: str | os.PathLike,
    train_files: Sequence[str | os.PathLike] | str | None = None,
    val_files: Sequence[str | os.PathLike] | str | None = None,
    model_path: str | os.PathLike | None = None,
    seed: int | None = None,
    overrides_name: str = "overrides.txt",
    drop_overlong: bool = False,
    smoke: bool = False,
    saar: bool | None = None,
) -> RunFiles:
    """Build the stage's overrides and write them (and the tool config they point at) into ``output_dir``.

    ``saar``: SAAR at test time for the eval stage (None: ``eval.saar_at_test_time``); other stages refuse it (RL
    validation follows ``eval.saar_at_validation``)."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; expected one of {STAGES}")
    if saar is not None and stage != "eval":
        raise ConfigError(
            f"--saar applies to the eval stage only (rl validation follows eval.saar_at_validation), not {stage}")
    out = Path(output_dir).resolve()
    tool_path: Path | None = None
    if stage == "sft":
        if train_files is None:
            raise ConfigError("sft: train_files is required")
        overrides = build_sft_overrides(config, train_files=train_files, val_files=val_files, output_dir=out,
                                        model_path=model_path)
    else:
        if experiment is None:
            raise ConfigError(f"{stage}: an experiment is required")
        if val_files is None:
            raise ConfigError(f"{stage}: val_files is required")
        if stage == "rl":
            if train_files is None:
                raise ConfigError("rl: train_files is required")
            overrides = build_ppo_overrides(config, experiment, train_files=train_files, val_files=val_files,
                                            output_dir=out, model_path=model_path, seed=seed)
        else:
            if model_path is None:
                raise ConfigError("eval: model_path (the HF checkpoint to score) is required")
            overrides = build_eval_overrides(config, experiment, val_files=val_files, output_dir=out,
                                             model_path=model_path, seed=seed, drop_overlong=drop_overlong,
                                             saar=saar)
        resolved = _resolved(config, experiment)
        if resolved["rollout"]["tools_enabled"]:
            tool_path = write_tool_config(out / "tool_config.yaml", resolved)
    if smoke:
        overrides = smoke_overrides(overrides, stage, n_gpus=int(validate_config(copy.deepcopy(dict(config)))
                                                                 ["verl"]["n_gpus_per_node"]))
    header = f"verl {stage} overrides for config {config.get('name')!r}" + (
        f", experiment {experiment!r}" if experiment else "") + "\nwritten by cleaner.engines.verl.overrides"
    path = write_overrides(out / overrides_name, overrides, header=header)
    return RunFiles(path, tool_path, overrides)


def ppo_command(overrides: Sequence[str], *, python: str | None = None) -> list[str]:
    """``python -m verl.trainer.main_ppo <overrides>`` (RL and eval; Ray starts the workers)."""
    return [python or sys.executable, "-m", "verl.trainer.main_ppo", *overrides]


def sft_command(overrides: Sequence[str], *, nnodes: int, n_gpus_per_node: int, torchrun: str = "torchrun") -> list[str]:
    """``torchrun --nnodes N --nproc_per_node G -m verl.trainer.sft_trainer <overrides>``."""
    return [torchrun, f"--nnodes={nnodes}", f"--nproc_per_node={n_gpus_per_node}", "-m", "verl.trainer.sft_trainer",
            *overrides]


def verl_config_dir() -> Path:
    """verl's installed Hydra config directory (``verl/trainer/config``), found without importing verl."""
    spec = find_spec("verl")
    if spec is None or spec.origin is None:
        raise ConfigError("verl is not installed in this environment")
    path = Path(spec.origin).parent / "trainer" / "config"
    if not (path / "ppo_trainer.yaml").is_file():
        raise ConfigError(f"verl's config directory not found at {path}")
    return path


def _compose(config_name: str, overrides: Sequence[str]) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(verl_config_dir()), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


def compose_ppo_config(overrides: Sequence[str]) -> Any:
    """verl's ``ppo_trainer`` config with ``overrides`` (what ``verl.trainer.main_ppo`` would run), a DictConfig."""
    return _compose("ppo_trainer", overrides)


def compose_sft_config(overrides: Sequence[str]) -> Any:
    """verl's ``sft_trainer_engine`` config with ``overrides`` (what ``verl.trainer.sft_trainer`` would run)."""
    return _compose("sft_trainer_engine", overrides)


def validate_ppo_config(cfg: Any) -> None:
    """verl's own checks of a composed PPO config, on CPU (imports verl; no Ray, no GPU).

    Runs ``verl.utils.config.validate_config`` (what ``main_ppo`` runs before starting Ray), builds the typed
    rollout and algorithm configs the workers build, and resolves the reward manager class and the custom reward
    function the way verl's reward loop does; raises whatever verl raises.
    """
    from verl.trainer.ppo.reward import get_custom_reward_fn, resolve_reward_manager_cls
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config as verl_validate

    verl_validate(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    omega_conf_to_dataclass(cfg.algorithm)
    resolve_reward_manager_cls(cfg)
    if cfg.reward.custom_reward_function.get("path") and get_custom_reward_fn(cfg) is None:
        raise ConfigError("verl could not load reward.custom_reward_function")
