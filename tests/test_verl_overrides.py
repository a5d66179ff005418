"""verl override builder (cleaner.engines.verl.overrides): every experiment of both paper-shaped configs composes
with verl 0.9.1's own Hydra configs (``ppo_trainer``, ``sft_trainer_engine``) and passes verl's config checks;
recipe rows land on the right verl keys; bad settings fail with a message naming the field.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from cleaner.config import ConfigError, load_config, resolve_experiment
from cleaner.evaluate import saar_at_validation
from cleaner.engines.verl import AGENT_NAME, package_file
from cleaner.engines.verl.overrides import (
    arm,
    build_eval_overrides,
    build_ppo_overrides,
    build_sft_overrides,
    compose_ppo_config,
    compose_sft_config,
    hydra_value,
    ppo_command,
    prepare_run,
    read_overrides,
    sft_command,
    validate_ppo_config,
    write_overrides,
)

FIXTURES = Path(__file__).parent / "fixtures" / "verl"
CONFIGS = ("paper_like_4b.yaml", "paper_like_7b.yaml")
TRAIN = ["/data/open_agentrl_30k.parquet"]
VAL = ["/data/aime24.parquet", "/data/aime25.parquet"]


@pytest.fixture(scope="module")
def configs() -> dict[str, dict]:
    return {name: load_config(FIXTURES / name) for name in CONFIGS}


def test_hydra_value_grammar():
    assert hydra_value(None) == "null" and hydra_value(True) == "true" and hydra_value(3) == "3"
    assert hydra_value(2e-6) == "2e-06"
    assert hydra_value("/a/b-c.parquet") == "/a/b-c.parquet"
    assert hydra_value("pkg://x.y") == "'pkg://x.y'"
    assert hydra_value("it's") == "'it\\'s'"
    assert hydra_value("true") == "'true'" and hydra_value("1e3") == "'1e3'"  # strings stay strings
    assert hydra_value(["a", 1]) == "[a,1]"
    assert hydra_value({"param_dtype": "fp16"}) == "{param_dtype:fp16}"
    with pytest.raises(TypeError):
        hydra_value(object())


@pytest.mark.parametrize("name", CONFIGS)
def test_every_experiment_composes_and_validates(configs, name, tmp_path):
    """RL and eval overrides of every experiment compose with ppo_trainer.yaml and pass verl's own checks."""
    cfg = configs[name]
    model = {"model_path": "/models/ra-sft"}
    for exp in cfg["experiments"]:
        resolved = resolve_experiment(cfg, exp)
        rl = compose_ppo_config(build_ppo_overrides(cfg, exp, train_files=TRAIN, val_files=VAL,
                                                    output_dir=tmp_path / exp, **model))
        validate_ppo_config(rl)
        ev = compose_ppo_config(build_eval_overrides(cfg, exp, val_files=VAL, output_dir=tmp_path / f"{exp}-eval",
                                                     **model))
        validate_ppo_config(ev)
        r = rl.actor_rollout_ref.rollout
        which = arm(resolved)
        assert r.agent.default_agent_loop == {
            "cleaner": AGENT_NAME, "tools": resolved["verl"]["baseline_agent_loop"], "notool": "single_turn_agent"}[which]
        assert r.multi_turn.enable == (which != "notool")
        # CLEANER arm: no rollout log-probs, no IS correction (CLEANER.md step 6); baseline: IS correction on.
        assert r.calculate_log_probs == (which != "cleaner" and resolved["rl"]["rollout_is_correction"])
        # The reference baseline: sequence-level rollout IS (verl.rollout_is_level).
        assert rl.algorithm.rollout_correction.rollout_is == (
            resolved["verl"]["rollout_is_level"] if r.calculate_log_probs else None)
        if r.agent.default_agent_loop == AGENT_NAME:
            assert r.agent.agent_loop_config_path == str(package_file("agent_loops.yaml"))
            assert rl.cleaner.saar.enabled == resolved["saar"]["enabled"]
            assert rl.cleaner.saar.rollback_probability == resolved["saar"]["rollback_probability"]
            assert rl.cleaner.mode == "train" and rl.cleaner.agent.max_turns == resolved["rollout"]["max_turns"]
        else:
            assert "cleaner" not in rl
        # Evaluation: validation only, avg@k at top-p 0.6, SAAR off, one code path for every tool arm.
        assert ev.trainer.val_only and ev.actor_rollout_ref.rollout.val_kwargs.n == resolved["eval"]["k"]
        assert ev.actor_rollout_ref.rollout.val_kwargs.top_p == 0.6
        assert not ev.actor_rollout_ref.rollout.calculate_log_probs
        if which != "notool":
            assert ev.actor_rollout_ref.rollout.agent.default_agent_loop == AGENT_NAME
            assert ev.cleaner.mode == "eval" and ev.cleaner.saar.enabled is False
            assert ev.cleaner.val_saar.enabled is resolved["eval"]["saar_at_test_time"]
        if "cleaner" in rl:
            assert rl.cleaner.val_saar.enabled is saar_at_validation(resolved)


def test_recipe_table_rows(configs, tmp_path):
    """CLEANER.md's recipe table, row by row, for the Qwen3-4B column (read from our sections)."""
    cfg = configs["paper_like_4b.yaml"]
    c = compose_ppo_config(build_ppo_overrides(cfg, "cleaner", train_files=TRAIN, val_files=VAL,
                                               output_dir=tmp_path, model_path="/models/ra-sft"))
    a, r, alg = c.actor_rollout_ref.actor, c.actor_rollout_ref.rollout, c.algorithm
    assert c.actor_rollout_ref.model.path == "/models/ra-sft"                                    # init
    assert alg.adv_estimator == "grpo" and alg.norm_adv_by_std_in_grpo and not alg.use_kl_in_reward
    assert not a.use_kl_loss and a.entropy_coeff == 0.0 and a.loss_agg_mode == "token-mean"    # algorithm
    assert (a.clip_ratio_low, a.clip_ratio_high, a.clip_ratio_c) == (0.2, 0.28, 10.0)           # clip
    assert c.reward.custom_reward_function.path == "pkg://cleaner.engines.verl.reward"          # reward
    assert c.reward.reward_manager.name == "CleanerRewardManager"
    assert c.reward.reward_kwargs.overlong_buffer_cfg.enable and c.reward.reward_kwargs.overlong_buffer_cfg.len == 4096
    assert c.reward.reward_kwargs.max_resp_len == 20480
    assert c.reward.custom_reward_function.reward_kwargs.math_mode == "strict"
    assert a.optim.lr == 2e-6 and a.optim.lr_warmup_steps == 20 and a.grad_clip == 1.0          # lr
    assert a.optim.weight_decay == 0.01
    assert c.data.train_batch_size == 128 and r.n == 16 and a.ppo_mini_batch_size == 32         # batch
    assert a.ppo_epochs == 1 and c.trainer.total_epochs == 1 and c.trainer.total_training_steps == 235
    assert c.data.max_prompt_length == 2560 and c.data.max_response_length == 20480             # lengths
    assert r.prompt_length == 2560 and r.response_length == 20480
    assert r.multi_turn.max_assistant_turns == 16 and c.cleaner.agent.max_turns == 16
    assert (r.temperature, r.top_p) == (1.0, 1.0) and r.val_kwargs.top_p == 0.6                 # sampling
    assert r.dtype == "float16" and a.fsdp_config.mixed_precision.param_dtype == "fp16"          # precision
    assert a.fsdp_config.dtype == "float16"
    saar = c.cleaner.saar                                                                        # SAAR
    assert (saar.enabled, saar.max_retries, saar.gamma, saar.rollback_probability) == (True, 3, 0.5, 1.0)
    assert c.trainer.nnodes == 1 and c.trainer.n_gpus_per_node == 4                               # hardware
    assert a.strategy == "fsdp2" and a.fsdp_config.param_offload and a.fsdp_config.optimizer_offload
    assert r.name == "sglang" and r.mode == "async"
    assert not r.calculate_log_probs and alg.rollout_correction.rollout_is is None
    assert a.ppo_max_token_len_per_gpu == 2560 + 20480
    # Reference scripts: fused log-prob/entropy kernels (triton), verl's default max_num_batched_tokens (not set).
    m = c.actor_rollout_ref.model
    assert m.use_fused_kernels and m.fused_kernel_options.impl_backend == "triton"
    assert a.use_fused_kernels  # the actor reads the model's flag (oc.select in verl's config)
    assert not any(o.startswith("actor_rollout_ref.rollout.max_num_batched_tokens") for o in build_ppo_overrides(
        cfg, "cleaner", train_files=TRAIN, val_files=VAL, output_dir=tmp_path, model_path="/m"))
    assert c.trainer.rollout_data_dir == str(tmp_path.resolve() / "rollouts")
    # 7B column: lr 1e-6, p = 0.7, avg@32.
    cfg7 = configs["paper_like_7b.yaml"]
    c7 = compose_ppo_config(build_ppo_overrides(cfg7, "cleaner", train_files=TRAIN, val_files=VAL,
                                                output_dir=tmp_path / "7b"))
    assert c7.actor_rollout_ref.actor.optim.lr == 1e-6 and c7.cleaner.saar.rollback_probability == 0.7
    assert c7.actor_rollout_ref.model.path == "/models/Qwen2.5-7B-RA-SFT"                        # verl.sft_model_path
    ev7 = compose_ppo_config(build_eval_overrides(cfg7, "cleaner", val_files=VAL, output_dir=tmp_path / "e7",
                                                  model_path="/m/hf"))
    assert ev7.actor_rollout_ref.rollout.val_kwargs.n == 32


@pytest.mark.parametrize("name", CONFIGS)
def test_sft_overrides_compose(configs, name, tmp_path):
    cfg = configs[name]
    c = compose_sft_config(build_sft_overrides(cfg, train_files=["/data/sft_3k.parquet"], output_dir=tmp_path))
    assert c.model.path == cfg["verl"]["model_path"]
    assert c.data.messages_key == "messages" and c.data.tools_key == "tools"
    assert c.data.train_batch_size == cfg["sft"]["batch_size"] and c.data.max_length == cfg["sft"]["max_length"]
    assert c.optim.lr == cfg["sft"]["lr"] and c.trainer.total_training_steps == cfg["sft"]["max_steps"]
    assert c.engine.strategy == "fsdp2" and c.trainer.total_epochs == 5 and c.data.val_files is None
    assert c.trainer.default_local_dir == str(tmp_path.resolve() / "checkpoints")
    assert sft_command(["a=1"], nnodes=1, n_gpus_per_node=4)[:4] == [
        "torchrun", "--nnodes=1", "--nproc_per_node=4", "-m"]


def test_bad_settings_name_the_field(configs, tmp_path):
    cfg = copy.deepcopy(configs["paper_like_4b.yaml"])
    kw = dict(train_files=TRAIN, val_files=VAL, output_dir=tmp_path, model_path="/m")
    cfg["experiments"]["cleaner_is"] = {"saar": {"enabled": True}, "rl": {"rollout_is_correction": True}}
    with pytest.raises(ConfigError, match="rollout_is_correction"):
        build_ppo_overrides(cfg, "cleaner_is", **kw)
    with pytest.raises(ConfigError, match="no model"):
        build_ppo_overrides(cfg, "cleaner", train_files=TRAIN, val_files=VAL, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown experiment"):
        build_ppo_overrides(cfg, "nope", **kw)
    cfg["rl"]["precision"] = "fp32"
    with pytest.raises(ConfigError, match="rl.precision"):
        build_ppo_overrides(cfg, "cleaner", **kw)
    cfg["rl"]["precision"] = "bf16"
    cfg["rl"]["overlong_buffer"] = 30000
    with pytest.raises(ConfigError, match="overlong_buffer"):
        build_ppo_overrides(cfg, "cleaner", **kw)
    cfg["rl"]["overlong_buffer"] = 4096
    cfg["verl"]["ppo_max_token_len_per_gpu"] = 1000
    with pytest.raises(ConfigError, match="ppo_max_token_len_per_gpu"):
        build_ppo_overrides(cfg, "cleaner", **kw)
    with pytest.raises(ConfigError, match="train_files"):
        build_ppo_overrides(configs["paper_like_4b.yaml"], "cleaner", train_files=[], val_files=VAL,
                            output_dir=tmp_path, model_path="/m")


def test_prepare_run_writes_overrides_and_tool_config(configs, tmp_path):
    """The rule's files: overrides.txt (read back identically) and the tool YAML verl instantiates our tool from."""
    from verl.tools.tool_registry import initialize_tools_from_config

    from cleaner.engines.verl.tool import CodeInterpreterTool

    cfg = configs["paper_like_4b.yaml"]
    run = prepare_run(cfg, "tools_baseline", "rl", output_dir=tmp_path, train_files=TRAIN, val_files=VAL,
                      model_path="/m")
    assert read_overrides(run.overrides_path) == run.overrides
    assert run.overrides_path.read_text().startswith("# verl rl overrides")
    (tool,) = initialize_tools_from_config(str(run.tool_config_path))
    assert isinstance(tool, CodeInterpreterTool) and tool.name == "code_interpreter"
    assert (tool.settings.timeout_s, tool.settings.memory_mb, tool.settings.max_tool_response_chars,
            tool.settings.workers) == (10.0, 1024, 256, 8)
    c = compose_ppo_config(run.overrides)
    assert c.actor_rollout_ref.rollout.multi_turn.tool_config_path == str(run.tool_config_path)
    notool = prepare_run(cfg, "notool", "rl", output_dir=tmp_path / "nt", train_files=TRAIN, val_files=VAL,
                         model_path="/m")
    assert notool.tool_config_path is None and not (tmp_path / "nt" / "tool_config.yaml").exists()
    sft = prepare_run(cfg, None, "sft", output_dir=tmp_path / "sft", train_files=["/data/sft.parquet"])
    assert compose_sft_config(read_overrides(sft.overrides_path)).model.path == "Qwen/Qwen3-4B-Instruct-2507"
    with pytest.raises(ConfigError, match="model_path"):
        prepare_run(cfg, "cleaner", "eval", output_dir=tmp_path / "e", val_files=VAL)
    with pytest.raises(ValueError, match="newline"):
        write_overrides(tmp_path / "x.txt", ["a=1\nb=2"])
    assert ppo_command(["a=1"], python="py") == ["py", "-m", "verl.trainer.main_ppo", "a=1"]
    packaged = yaml.safe_load(package_file("tool_config.yaml").read_text())
    assert packaged["tools"][0]["class_name"] == "cleaner.engines.verl.tool.CodeInterpreterTool"


def test_cli_overrides_and_train_without_gpu(tmp_path, capsys):
    """``cleaner verl overrides`` writes the files; ``verl train`` on a machine without CUDA stops cleanly."""
    import argparse

    import torch

    from cleaner.engines.verl.cli import add_commands

    parser = argparse.ArgumentParser(prog="cleaner")
    add_commands(parser.add_subparsers(dest="command"))

    def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        return args.func(args)

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"data_source": ["math_dapo"], "agent_name": ["tool_agent"]}), rows)
    out = tmp_path / "run"
    assert run("verl", "overrides", "--config", str(FIXTURES / "paper_like_7b.yaml"), "--stage", "rl",
               "--experiment", "cleaner", "--output-dir", str(out), "--train-files", str(rows),
               "--val-files", str(rows), "--seed", "1") == 0
    lines = read_overrides(out / "overrides.txt")
    assert "+cleaner.seed=1" in lines and "data.seed=1" in lines and (out / "tool_config.yaml").is_file()
    # The rows verl reads name no agent loop: a row's agent_name would override the CLEANER loop.
    train_line = next(x for x in lines if x.startswith("data.train_files="))
    assert str(out / "data" / "train" / "rows.parquet") in train_line
    assert pq.read_table(out / "data" / "train" / "rows.parquet").column_names == ["data_source"]
    assert run("verl", "train", "--overrides", str(out / "overrides.txt"), "--stage", "rl", "--dry-run") == 0
    assert "-m verl.trainer.main_ppo" in capsys.readouterr().out
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: `verl train` would really start training")
    assert run("verl", "train", "--overrides", str(out / "overrides.txt"), "--stage", "rl") == 2
    err = capsys.readouterr().err
    assert "needs CUDA GPUs" in err and "Traceback" not in err


# -- verl's own dataset + dataloader construction from the composed overrides ---------------------------------------
EVAL_SPLIT_ROWS = {"aime24": 30, "aime25": 30, "gpqa_diamond": 198, "livecodebench": 175}


def _eval_row(split: str, i: int, *, filler: int = 0) -> dict:
    """One row in the normalised RL/eval schema (cleaner.data.schema), with the real prompt wrappers."""
    from cleaner.prompts import aime_user_prompt, code_user_prompt, multiple_choice_user_prompt

    problem = f"Problem {i} of {split}: find the value of {i} + {i}." + " more words" * filler
    if split == "gpqa_diamond":
        content, ability, source = multiple_choice_user_prompt(problem, ["1", "2", "3", "4"]), "science", split
    elif split == "livecodebench":
        content, ability, source = code_user_prompt(problem), "code", split
    else:
        content, ability, source = aime_user_prompt(problem), "math", split
    return {"data_source": source, "prompt": [{"role": "user", "content": content}], "ability": ability,
            "reward_model": {"style": "rule", "ground_truth": str(2 * i)},
            "extra_info": {"index": str(i), "source": source, "split": split}, "agent_name": "tool_agent"}


def _write_split(path: Path, split: str, n: int, *, long_rows: int = 0) -> Path:
    from cleaner.data.schema import write_rl_parquet

    rows = [_eval_row(split, i) for i in range(n - long_rows)]
    rows += [_eval_row(split, i, filler=2000) for i in range(n - long_rows, n)]  # ~20K characters each
    return write_rl_parquet(rows, path)


def _verl_loaders(cfg, tokenizer):
    """verl's ``RayPPOTrainer._create_dataloader`` on a trainer holding only what it reads (config, tokenizer)."""
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    trainer = RayPPOTrainer.__new__(RayPPOTrainer)
    trainer.config, trainer.tokenizer, trainer.processor = cfg, tokenizer, None
    trainer._create_dataloader(None, None, None, None)
    return trainer


PAPER_CONFIGS = ("paper-qwen3-4b.yaml", "paper-qwen2.5-7b.yaml")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_every_eval_split_builds_verl_loaders(name, tiny_tokenizer, tmp_path):
    """Every eval split at its real size (30, 30, 198, 175 rows) gets a non-empty train loader and its val loader."""
    cfg = load_config(ROOT / "config" / name)
    for split, n in EVAL_SPLIT_ROWS.items():
        data = _write_split(tmp_path / f"{split}.parquet", split, n)
        run = prepare_run(cfg, "cleaner", "eval", output_dir=tmp_path / split, val_files=[data], model_path="/m")
        c = compose_ppo_config(run.overrides)
        validate_ppo_config(c)
        trainer = _verl_loaders(c, tiny_tokenizer)
        assert len(trainer.val_dataset) == n and len(trainer.train_dataloader) >= 1, split
        assert len(trainer.val_dataloader) == 1 and trainer.val_dataloader.batch_size == 256  # none dropped
        assert c.data.max_prompt_length == cfg["eval"]["max_prompt_tokens"] and not c.data.filter_overlong_prompts
    tiny = _write_split(tmp_path / "tiny.parquet", "aime24", 3)
    with pytest.raises(ConfigError, match="tiny.parquet: 3 row"):
        prepare_run(cfg, "cleaner", "eval", output_dir=tmp_path / "tiny", val_files=[tiny], model_path="/m")


def test_difficulty_filter_validates_in_bounded_batches(configs, tiny_tokenizer, tmp_path):
    """The 7B filter scores every training prompt as validation: batches of verl.val_batch_size, not one batch."""
    cfg = copy.deepcopy(configs["paper_like_7b.yaml"])
    cfg["verl"]["val_batch_size"] = 64
    data = _write_split(tmp_path / "train.parquet", "aime24", 300, long_rows=20)
    run = prepare_run(cfg, "cleaner", "eval", output_dir=tmp_path / "run", val_files=[data], model_path="/m",
                      drop_overlong=True)
    trainer = _verl_loaders(compose_ppo_config(run.overrides), tiny_tokenizer)
    # The 20 over-long prompts are dropped (RL drops them too); 280 prompts in 5 batches of at most 64.
    assert len(trainer.val_dataset) == 280 and trainer.val_dataloader.batch_size == 64
    assert len(trainer.val_dataloader) == 5


def test_total_training_steps_derived_after_overlong_filtering(configs, tiny_tokenizer, tmp_path):
    """verl.derive_total_steps: verl counts the steps of one epoch over the prompts left after filtering."""
    cfg = copy.deepcopy(configs["paper_like_4b.yaml"])
    cfg["verl"].update(derive_total_steps=True, keep_checkpoints=3)
    cfg["rl"].update(batch_prompts=16, mini_batch_prompts=16)
    train = _write_split(tmp_path / "train.parquet", "aime24", 300, long_rows=40)
    val = _write_split(tmp_path / "aime25.parquet", "aime25", 30)
    run = prepare_run(cfg, "cleaner", "rl", output_dir=tmp_path / "rl", train_files=[train], val_files=[val],
                      model_path="/m")
    c = compose_ppo_config(run.overrides)
    assert c.trainer.total_training_steps is None
    assert c.trainer.max_actor_ckpt_to_keep == 3
    trainer = _verl_loaders(c, tiny_tokenizer)
    assert len(trainer.train_dataset) == 260 and trainer.total_training_steps == 260 // 16
    assert trainer.train_dataset.tool_schemas[0]["function"]["name"] == "code_interpreter"  # counted when filtering
    assert c.actor_rollout_ref.actor.optim.total_training_steps == 260 // 16  # the lr schedule sees the same count
    cfg["verl"]["derive_total_steps"] = False  # the constant, as before
    fixed = compose_ppo_config(build_ppo_overrides(cfg, "cleaner", train_files=[train], val_files=[val],
                                                   output_dir=tmp_path / "rl2", model_path="/m"))
    assert fixed.trainer.total_training_steps == cfg["rl"]["steps"]


def test_wandb_only_when_asked_and_credentialed(tmp_path):
    """Paper configs log to the console + a local metrics file; wandb without credentials stops before verl starts."""
    from cleaner.engines.verl.cli import logging_problem, run_environment

    for name in PAPER_CONFIGS:
        assert "wandb" not in load_config(ROOT / "config" / name)["verl"]["logger"]
    plain = ["trainer.logger=[console,file]"]
    wandb = ["trainer.logger=[console,wandb]"]
    home = tmp_path / "home"
    home.mkdir()
    assert logging_problem(plain, {}, home) is None
    assert "WANDB_API_KEY" in logging_problem(wandb, {}, home)
    assert logging_problem(wandb, {"WANDB_API_KEY": "k"}, home) is None
    assert logging_problem(wandb, {"WANDB_MODE": "offline"}, home) is None
    (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password k\n")
    assert logging_problem(wandb, {}, home) is None
    env = run_environment(tmp_path / "run" / "overrides.txt", plain, {"PATH": "/bin"})
    assert env["VERL_FILE_LOGGER_PATH"] == str(tmp_path.resolve() / "run" / "metrics.jsonl")
    assert "VERL_FILE_LOGGER_PATH" not in run_environment(tmp_path / "o.txt", wandb, {})


def test_notool_arm_prompts_do_not_mention_the_tool(tmp_path):
    """The no-tool arm's rows lose the tool hint / note; the tool arms' rows keep them (CLI rewrites the copies)."""
    import pyarrow.parquet as pq

    from cleaner.engines.verl.overrides import loop_neutral_copies
    from cleaner.prompts import AGENT_NOTE, TOOL_HINT

    rows = {s: _write_split(tmp_path / f"{s}.parquet", s, 4) for s in EVAL_SPLIT_ROWS}
    tool_text = ("tool", "Tool")
    for split, path in rows.items():
        (copy_,) = loop_neutral_copies([path], tmp_path / "notool", tools=False)
        prompts = [p[0]["content"] for p in pq.read_table(copy_).column("prompt").to_pylist()]
        assert not any(word in p for p in prompts for word in tool_text), (split, prompts[0])
        assert all("\\boxed{" in p or "```python" in p for p in prompts)  # the answer format stays
        (kept,) = loop_neutral_copies([path], tmp_path / "tools", tools=True)
        original = pq.read_table(kept).column("prompt").to_pylist()[0][0]["content"]
        assert AGENT_NOTE in original and (TOOL_HINT in original or split == "livecodebench")


@pytest.mark.parametrize("stage", ["sft", "rl", "eval"])
def test_smoke_overrides_compose_and_shrink_the_run(stage, tmp_path):
    """paper_smoke: each stage composes with verl's config and passes its checks, one step / few rows, one node,
    the recipe's model lengths and memory settings untouched."""
    cfg = load_config(ROOT / "config" / "paper-qwen3-4b.yaml")
    kw = dict(output_dir=tmp_path, model_path="/m")
    if stage == "sft":
        run = prepare_run(cfg, None, "sft", train_files=["/d/sft.parquet"], smoke=True, **kw)
        c = compose_sft_config(run.overrides)
        assert c.trainer.total_training_steps == 1 and c.trainer.save_freq == 1
        assert c.data.train_max_samples == cfg["sft"]["batch_size"] and c.data.max_length == cfg["sft"]["max_length"]
        return
    exp = "cleaner"
    full = prepare_run(cfg, exp, stage, train_files=TRAIN, val_files=VAL, **kw).overrides
    run = prepare_run(cfg, exp, stage, train_files=TRAIN, val_files=VAL, smoke=True, **kw)
    c = compose_ppo_config(run.overrides)
    validate_ppo_config(c)
    assert len({line.lstrip("+").split("=")[0] for line in run.overrides}) == len(run.overrides)  # no duplicates
    assert c.trainer.nnodes == 1 and c.data.val_max_samples == 4
    assert c.data.max_response_length == 20480 and c.actor_rollout_ref.rollout.gpu_memory_utilization == 0.8
    if stage == "rl":
        assert c.trainer.total_training_steps == 1 and c.trainer.save_freq == 1 and c.trainer.test_freq == -1
        assert (c.data.train_batch_size, c.data.train_max_samples, c.actor_rollout_ref.rollout.n) == (4, 4, 2)
    assert set(full) - set(run.overrides) and compose_ppo_config(full).trainer.nnodes == 1


def test_probe_checks_on_cpu(tiny_model_dir, tiny_tokenizer):
    """The first-GPU probe's logic: template check on the testbed tokenizer; stop / seed checks on fake engines."""
    import random

    from cleaner.chat import ChatFormat
    from cleaner.engines.verl.probe import run_probe, seed_problem, stop_problem, template_problem
    from cleaner.prompts import tool_schemas

    assert template_problem(tiny_tokenizer) is None and run_probe(str(tiny_model_dir), engine=False) == 0
    broken = copy.deepcopy(tiny_tokenizer)
    broken.chat_template = tiny_tokenizer.chat_template.replace("<tool_response>", "<tool_result>")
    assert "differ from the chat template" in template_problem(broken)
    fmt = ChatFormat(tiny_tokenizer, tool_schemas())
    call = fmt.encode(fmt.assistant_text("Let me compute.", "print(1)"))
    assert stop_problem(lambda p, s: call, fmt) is None
    assert "trimmed" in stop_problem(lambda p, s: call[:-1], fmt)

    def engine(prompt, params):  # honours only "sampling_seed", rejects "seed"
        if "seed" in params:
            raise TypeError("unexpected keyword 'seed'")
        rng = random.Random(params.get("sampling_seed"))
        return [rng.randrange(100) for _ in range(8)]

    assert seed_problem(engine, fmt) == ("sampling_seed", None)
    key, why = seed_problem(engine, fmt, keys=("seed",))
    assert key is None and "refused" in why


def test_docs_table_names_every_override_key():
    """docs/verl.md compares every key the builder writes for the paper configs with the reference scripts."""
    doc = (ROOT / "docs" / "verl.md").read_text()
    table = doc[doc.index("## The recipe against the reference scripts"):doc.index("## Checked here")]
    keys = set()
    for name in PAPER_CONFIGS:
        cfg = load_config(ROOT / "config" / name)
        for exp in ("tools_baseline", "cleaner", "notool"):
            lines = build_ppo_overrides(cfg, exp, train_files=TRAIN, val_files=VAL, output_dir="/r", model_path="/m")
            lines += build_eval_overrides(cfg, exp, val_files=VAL, output_dir="/r", model_path="/m")
            keys |= {line.lstrip("+").split("=", 1)[0] for line in lines}
    missing = sorted(k for k in keys if f"`{k}`" not in table)
    assert not missing, f"docs/verl.md's recipe table lacks {missing}"


def test_experiment_verl_overrides_are_validated(configs, tmp_path):
    """An experiment may pick the stock loop (verl.baseline_agent_loop); a bad value names the experiment and key."""
    cfg = copy.deepcopy(configs["paper_like_4b.yaml"])
    cfg["experiments"]["stock"] = {"rl": {"rollout_is_correction": True}, "verl": {"baseline_agent_loop": "tool_agent"}}
    c = compose_ppo_config(build_ppo_overrides(cfg, "stock", train_files=TRAIN, val_files=VAL, output_dir=tmp_path,
                                               model_path="/m"))
    assert c.actor_rollout_ref.rollout.agent.default_agent_loop == "tool_agent" and "cleaner" not in c
    cfg["experiments"]["bad"] = {"verl": {"baseline_agent_loop": "nope"}}
    with pytest.raises(ConfigError, match="experiments.bad: verl.baseline_agent_loop"):
        build_ppo_overrides(cfg, "bad", train_files=TRAIN, val_files=VAL, output_dir=tmp_path, model_path="/m")


# -- test-time SAAR per arm: +cleaner.val_saar ----------------------------------------------------------------------
def _val_saar(c) -> dict:
    return dict(c.cleaner.val_saar)


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_eval_stage_val_saar_follows_the_saar_flag(name, tmp_path):
    """--saar on|off (default eval.saar_at_test_time) switches the eval run's val_saar, with the eval.saar settings
    for every tool arm (not the arm's training saar: the 7B CLEANER gate is 0.7, test time uses 1.0)."""
    cfg = load_config(ROOT / "config" / name)
    ev = cfg["eval"]
    assert ev["saar_at_test_time"] is True and ev["saar_at_validation"] is True
    for exp in ("tools_baseline", "tools_baseline_stock_loop", "cleaner", "cleaner_gamma0.3"):
        for flag, expected in ((True, True), (False, False), (None, ev["saar_at_test_time"])):
            run = prepare_run(cfg, exp, "eval", output_dir=tmp_path / f"{exp}-{flag}", val_files=VAL, model_path="/m",
                              saar=flag)
            c = compose_ppo_config(run.overrides)
            validate_ppo_config(c)
            assert c.cleaner.mode == "eval" and c.cleaner.saar.enabled is False  # no training rollouts here
            assert _val_saar(c) == {**ev["saar"], "enabled": expected}, (exp, flag)
            assert not c.actor_rollout_ref.rollout.calculate_log_probs
        assert c.cleaner.val_saar.gamma == 0.5 and c.cleaner.val_saar.rollback_probability == 1.0
    notool = prepare_run(cfg, "notool", "eval", output_dir=tmp_path / "nt", val_files=VAL, model_path="/m", saar=True)
    assert "cleaner" not in compose_ppo_config(notool.overrides)  # single_turn_agent: nothing to roll back
    with pytest.raises(ConfigError, match="--saar applies to the eval stage only"):
        prepare_run(cfg, "cleaner", "rl", output_dir=tmp_path / "rl", train_files=TRAIN, val_files=VAL,
                    model_path="/m", saar=True)


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_rl_stage_carries_the_arms_saar_and_validation_saar(name, tmp_path):
    """Training rollouts: the arm's saar section; validation: eval.saar, on per eval.saar_at_validation (the paper
    configs: CLEANER arms on, as the authors; tools baselines off, they run rollout IS correction)."""
    cfg = load_config(ROOT / "config" / name)
    kw = dict(train_files=TRAIN, val_files=VAL, model_path="/m")
    for exp in cfg["experiments"]:
        resolved = resolve_experiment(cfg, exp)
        c = compose_ppo_config(build_ppo_overrides(cfg, exp, output_dir=tmp_path / exp, **kw))
        if "cleaner" not in c:
            assert arm(resolved) == "notool" or resolved["verl"]["baseline_agent_loop"] == "tool_agent"
            continue
        assert dict(c.cleaner.saar) == resolved["saar"]
        assert _val_saar(c) == {**resolved["eval"]["saar"], "enabled": arm(resolved) == "cleaner"}, exp
    seven_b = compose_ppo_config(build_ppo_overrides(load_config(ROOT / "config" / "paper-qwen2.5-7b.yaml"), "cleaner",
                                                     output_dir=tmp_path / "7b", **kw))
    assert seven_b.cleaner.saar.rollback_probability == 0.7 and seven_b.cleaner.val_saar.rollback_probability == 1.0
    # eval.saar_at_validation null follows eval.saar_at_test_time; false turns validation SAAR off.
    for at_validation, at_test, expected in ((None, True, True), (None, False, False), (False, True, False)):
        other = copy.deepcopy(cfg)
        other["eval"].update(saar_at_validation=at_validation, saar_at_test_time=at_test)
        c = compose_ppo_config(build_ppo_overrides(other, "cleaner", output_dir=tmp_path / "o", **kw))
        assert c.cleaner.val_saar.enabled is expected and c.cleaner.saar.enabled is True


def test_validation_saar_refused_where_verl_cannot_run_it(configs, tmp_path):
    """Validation SAAR with rollout IS correction (verl asks validation for rollout log-probs, spliced trajectories
    have none) or with verl's stock loop (no SAAR) fails naming the keys; a tools arm without IS correction runs it."""
    cfg = copy.deepcopy(configs["paper_like_4b.yaml"])
    cfg["eval"]["saar_at_validation"] = True
    cfg["experiments"].update({
        "tools_is": {"rl": {"rollout_is_correction": True}},
        "stock": {"verl": {"baseline_agent_loop": "tool_agent"}},
        "tools_plain": {},
        "tools_is_val_off": {"rl": {"rollout_is_correction": True}, "eval": {"saar_at_validation": False}},
    })
    kw = dict(train_files=TRAIN, val_files=VAL, output_dir=tmp_path, model_path="/m")
    with pytest.raises(ConfigError, match=r"experiments.tools_is: rl.rollout_is_correction .*eval.saar_at_validation"):
        build_ppo_overrides(cfg, "tools_is", **kw)
    with pytest.raises(ConfigError, match=r"experiments.stock: verl.baseline_agent_loop=tool_agent .*at_validation"):
        build_ppo_overrides(cfg, "stock", **kw)
    plain = compose_ppo_config(build_ppo_overrides(cfg, "tools_plain", **kw))
    validate_ppo_config(plain)
    assert plain.cleaner.val_saar.enabled and not plain.cleaner.saar.enabled
    assert not plain.actor_rollout_ref.rollout.calculate_log_probs
    off = compose_ppo_config(build_ppo_overrides(cfg, "tools_is_val_off", **kw))
    assert not off.cleaner.val_saar.enabled and off.actor_rollout_ref.rollout.calculate_log_probs
    cfg["eval"].update(saar_at_validation=None, saar_at_test_time=True)  # null: as at test time, named as such
    with pytest.raises(ConfigError, match=r"null: eval.saar_at_test_time"):
        build_ppo_overrides(cfg, "tools_is", **kw)


def test_cli_saar_flag(tmp_path):
    """`cleaner verl overrides --stage eval --saar on|off` writes val_saar on / off; without it: saar_at_test_time."""
    import argparse

    from cleaner.engines.verl.cli import add_commands

    parser = argparse.ArgumentParser(prog="cleaner")
    add_commands(parser.add_subparsers(dest="command"))
    config = str(ROOT / "config" / "paper-qwen3-4b.yaml")
    rows = _write_split(tmp_path / "aime24.parquet", "aime24", 4)
    for flag, expected in ((["--saar", "on"], "true"), (["--saar", "off"], "false"), ([], "true")):
        out = tmp_path / (flag[-1] if flag else "default")
        args = parser.parse_args(["verl", "overrides", "--config", config, "--stage", "eval", "--experiment",
                                  "tools_baseline", "--output-dir", str(out), "--val-files", str(rows),
                                  "--model-path", "/m", *flag])
        assert args.func(args) == 0
        assert f"+cleaner.val_saar.enabled={expected}" in read_overrides(out / "overrides.txt")
    with pytest.raises(SystemExit):
        parser.parse_args(["verl", "overrides", "--config", config, "--stage", "eval", "--output-dir", "x",
                           "--saar", "maybe"])


def test_paper_configs_evaluate_every_tool_arm_both_ways():
    """No separate SAAR-at-test-time experiment: every arm is evaluated both ways instead."""
    for name in PAPER_CONFIGS:
        cfg = load_config(ROOT / "config" / name)
        assert "cleaner_saar_eval" not in cfg["experiments"]
        assert cfg["eval"]["saar"] == {"gamma": 0.5, "max_retries": 3, "rollback_probability": 1.0,
                                       "similarity_on": "code", "autojunk": False, "replacement": "adaptive",
                                       "max_tool_attempts": 30, "attempted_note": True}
        for exp in cfg["experiments"]:
            resolved = resolve_experiment(cfg, exp)
            assert resolved["eval"]["saar_at_test_time"] is True, exp
            assert saar_at_validation(resolved) is (arm(resolved) != "tools"), exp

