"""Checkpoint conversion (cleaner.engines.verl.convert): verl FSDP checkpoint -> HF directory via verl's merger.

The slow test saves a REAL verl checkpoint on CPU (FSDP2 ``fully_shard`` on a one-process gloo group, verl's own
``FSDPCheckpointManager``) in a subprocess, converts it with ``python -m verl.model_merger`` and checks the merged
weights against the model that was saved.
"""

from __future__ import annotations

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


def test_find_actor_checkpoint_and_command(tmp_path):
    for step in (5, 20):
        (tmp_path / f"global_step_{step}" / "actor").mkdir(parents=True)
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
    assert merger_command("/c/actor", "/hf", python="py") == [
        "py", "-m", "verl.model_merger", "merge", "--backend", "fsdp", "--local_dir", "/c/actor", "--target_dir", "/hf"]
    with pytest.raises(ValueError, match="backend"):
        merger_command("/c", "/hf", backend="deepspeed")
    with pytest.raises(ConversionError, match="not a verl FSDP checkpoint"):
        convert_checkpoint(tmp_path / "global_step_5" / "actor", tmp_path / "hf")
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
