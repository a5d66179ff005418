"""Checkpoint conversion (cleaner.engines.verl.convert): verl FSDP checkpoint -> HF directory via verl's merger.

Two slow tests, one per layout verl 0.9.1 really writes:

- PPO trainer layout (``global_step_<N>/actor/``): a REAL checkpoint saved on CPU by verl's own
  ``FSDPCheckpointManager`` (FSDP2 ``fully_shard`` on a one-process gloo group), converted with
  ``python -m verl.model_merger``; merged weights equal the saved model's.
- SFT trainer layout (``global_step_<N>/``): verl's SFT trainer itself (``verl.trainer.sft_trainer``: its FSDP2
  engine, ``CheckpointHandler`` and ``FSDPCheckpointManager``) runs two steps under ``torchrun`` on CPU with the
  overrides this package builds for the paper config (scaled to the testbed's tiny model), and the checkpoint it
  wrote is converted. verl 0.9.1 has no CPU platform, so :data:`CPU_SFT_LAUNCHER` adds one through verl's own
  plugin API (``set_platform``) and starts the default process group as plain gloo (verl asks for
  ``cpu:gloo,<device>:<backend>``, which on CPU is ``cpu:gloo,cpu:gloo`` and torch refuses); ``VERL_ENGINE_DEVICE``
  (verl's own override) selects the FSDP engine registered for CUDA, and eager attention replaces flash-attn.
  Everything else, the training step, the save and the layout, is verl's code unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cleaner.engines.verl.convert import ConversionError, convert_checkpoint, find_actor_checkpoint, merger_command

SAVE_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch, torch.distributed as dist
    from omegaconf import OmegaConf
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager

    src, out, port = sys.argv[1], sys.argv[2], sys.argv[3]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("fsdp",))
    model = AutoModelForCausalLM.from_pretrained(src)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    contents = OmegaConf.create({"save_contents": ["model", "optimizer", "extra"], "load_contents": ["model"],
                                 "async_save": False})
    manager = FSDPCheckpointManager(model, optim, None, processing_class=AutoTokenizer.from_pretrained(src),
                                    checkpoint_config=contents)
    manager.save_checkpoint(out, global_step=3)
    dist.destroy_process_group()
    """
)


CPU_SFT_LAUNCHER = textwrap.dedent(
    """
    import runpy, sys
    from contextlib import contextmanager
    import torch
    import verl.utils.distributed as verl_distributed
    from verl.plugin.platform.platform_cuda import PlatformCUDA
    from verl.plugin.platform.platform_manager import set_platform


    class CpuDeviceModule:
        # torch.cpu plus the accelerator-memory queries verl logs (0: there is no accelerator pool).
        def __getattr__(self, name):
            if name.startswith(("memory_", "max_memory_")):
                return lambda *a, **k: 0
            if name in ("reset_peak_memory_stats", "empty_cache", "ipc_collect"):
                return lambda *a, **k: None
            if name == "get_device_name":
                return lambda *a, **k: "CPU"
            if name == "mem_get_info":
                return lambda *a, **k: (0, 0)
            return getattr(torch.cpu, name)


    class PlatformCPU(PlatformCUDA):
        device_name = "cpu"
        vendor_name = "cpu"
        device_module = CpuDeviceModule()
        def is_available(self): return True
        def current_device(self): return "cpu"  # verl moves modules with .to(get_device_id())
        def device_count(self): return 1
        def set_device(self, device_index): pass
        def synchronize(self, device_index=None): pass
        def manual_seed(self, seed): torch.manual_seed(seed)
        def manual_seed_all(self, seed): torch.manual_seed(seed)
        def set_allocator_settings(self, settings): pass
        def empty_cache(self): pass
        def communication_backend_name(self): return "gloo"
        @contextmanager
        def nvtx_range(self, msg): yield
        def profiler_start(self): pass
        def profiler_stop(self): pass


    def init_gloo(timeout_second=36000):
        torch.distributed.init_process_group(backend="gloo")


    set_platform(PlatformCPU())
    verl_distributed.initialize_global_process_group = init_gloo
    sys.argv[0] = "sft_trainer"
    runpy.run_module("verl.trainer.sft_trainer", run_name="__main__")
    """
)


def _fsdp_shards(directory: Path) -> None:
    directory.mkdir(parents=True)
    (directory / "fsdp_config.json").write_text('{"FSDP_version": 2, "world_size": 1}')


def test_find_actor_checkpoint_and_command(tmp_path):
    for step in (5, 20):
        _fsdp_shards(tmp_path / f"global_step_{step}" / "actor")
    assert find_actor_checkpoint(tmp_path) == tmp_path / "global_step_20" / "actor"
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("5\n")
    assert find_actor_checkpoint(tmp_path) == tmp_path / "global_step_5" / "actor"
    assert find_actor_checkpoint(tmp_path, 20) == tmp_path / "global_step_20" / "actor"
    with pytest.raises(ConversionError, match="step 7"):
        find_actor_checkpoint(tmp_path, 7)
    with pytest.raises(ConversionError, match="not found"):
        find_actor_checkpoint(tmp_path / "missing")
    with pytest.raises(ConversionError, match="no global_step"):
        find_actor_checkpoint(tmp_path / "global_step_5")
    (tmp_path / "global_step_30").mkdir()
    with pytest.raises(ConversionError, match="holds no model shards"):
        find_actor_checkpoint(tmp_path, 30)
    assert merger_command("/c/actor", "/hf", python="py") == [
        "py", "-m", "verl.model_merger", "merge", "--backend", "fsdp", "--local_dir", "/c/actor", "--target_dir", "/hf"]
    with pytest.raises(ValueError, match="backend"):
        merger_command("/c", "/hf", backend="deepspeed")
    with pytest.raises(ConversionError, match="not a verl FSDP checkpoint"):
        convert_checkpoint(tmp_path / "global_step_5" / "actor", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_find_sft_trainer_layout(tmp_path):
    """verl's SFT trainer puts the shards in global_step_<N>/ itself (no actor/), next to data_0.pt."""
    _fsdp_shards(tmp_path / "global_step_4")
    (tmp_path / "global_step_4" / "data_0.pt").write_bytes(b"")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("4")
    assert find_actor_checkpoint(tmp_path) == tmp_path / "global_step_4"
    with pytest.raises(ConversionError, match="not a verl FSDP checkpoint"):
        convert_checkpoint(tmp_path / "global_step_4", tmp_path / "hf")   # no shard, no huggingface/
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow
def test_real_fsdp_checkpoint_converts(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    ckpt = tmp_path / "checkpoints"
    actor = ckpt / "global_step_3" / "actor"
    port = str(29500 + (abs(hash(str(tmp_path))) % 400))
    proc = subprocess.run([sys.executable, "-c", SAVE_SCRIPT, str(tiny_model_dir), str(actor), port],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (actor / "fsdp_config.json").is_file() and (actor / "model_world_size_1_rank_0.pt").is_file()
    target = tmp_path / "hf"
    assert convert_checkpoint(find_actor_checkpoint(ckpt), target) == target.resolve()
    assert (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file()
    assert not list(tmp_path.glob(".hf.tmp-*"))
    merged = AutoModelForCausalLM.from_pretrained(target).state_dict()
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert merged.keys() == original.keys()
    for key, value in original.items():
        # verl's merger writes the weights in its own dtype (bf16 here): exactly the saved weights, rounded.
        torch.testing.assert_close(merged[key], value.to(merged[key].dtype), rtol=0, atol=0)
    # A broken shard makes verl's merger fail: the error names the log, no half-written target appears.
    (actor / "model_world_size_1_rank_0.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="merger failed"):
        convert_checkpoint(actor, tmp_path / "hf2")
    assert not (tmp_path / "hf2").exists() and (tmp_path / "hf2.merge.log").is_file()


def _tiny_sft_config(tiny_model_dir: Path) -> dict:
    """config/paper-qwen3-4b.yaml scaled to the tiny model: 2 steps of 4 conversations, one CPU process."""
    import yaml

    cfg = yaml.safe_load((Path(__file__).parents[1] / "config" / "paper-qwen3-4b.yaml").read_text())
    cfg["sft"].update(batch_size=4, max_length=512, max_steps=2, warmup_steps=0, lr=1.0e-3)
    cfg["verl"].update(model_path=str(tiny_model_dir), n_gpus_per_node=1, logger=["console"],
                       use_remove_padding=False)   # remove-padding needs flash-attn's varlen kernels
    return cfg


@pytest.mark.slow
def test_verl_sft_trainer_checkpoint_converts(tiny_model_dir, sample_conversations, tmp_path):
    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM

    from cleaner.engines.verl.overrides import build_sft_overrides
    from cleaner.prompts import tool_schemas

    data = tmp_path / "sft.parquet"
    pd.DataFrame([{"messages": c, "tools": tool_schemas()} for c in sample_conversations]).to_parquet(data)
    overrides = build_sft_overrides(_tiny_sft_config(tiny_model_dir), train_files=[data], output_dir=tmp_path / "run")
    overrides += ["trainer.device=cpu", "data.num_workers=0", "+model.override_config.attn_implementation=eager"]
    launcher = tmp_path / "cpu_sft.py"
    launcher.write_text(CPU_SFT_LAUNCHER)
    port = str(29100 + (abs(hash(str(tmp_path))) % 400))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "VERL_ENGINE_DEVICE": "cuda", "VERL_ENGINE_VENDOR": "nvidia",
           "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=1",
           "--master_addr=127.0.0.1", f"--master_port={port}", str(launcher), *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "step:2 - " in proc.stdout and "train/loss" in proc.stdout

    ckpt = tmp_path / "run" / "checkpoints"
    step_dir = ckpt / "global_step_2"
    # The layout verl's SFT trainer really writes: shards directly in global_step_2/, no actor/.
    assert (step_dir / "model_world_size_1_rank_0.pt").is_file() and (step_dir / "data_0.pt").is_file()
    assert not (step_dir / "actor").exists()
    assert find_actor_checkpoint(ckpt) == step_dir
    target = tmp_path / "hf"
    assert convert_checkpoint(step_dir, target) == target.resolve()
    merged = AutoModelForCausalLM.from_pretrained(target).state_dict()
    saved = torch.load(step_dir / "model_world_size_1_rank_0.pt", map_location="cpu", weights_only=False)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert set(saved) <= set(merged)
    for key, value in saved.items():
        local = value.to_local() if hasattr(value, "to_local") else value
        torch.testing.assert_close(merged[key], local.to(merged[key].dtype), rtol=0, atol=0)
    # Two optimiser steps at lr 1e-3 moved the weights: the merged model is the trained one, not the init.
    assert any(not torch.equal(merged[k].float(), initial[k].to(merged[k].dtype).float()) for k in saved)
