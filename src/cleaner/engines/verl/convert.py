"""verl FSDP checkpoint -> Hugging Face model directory for evaluation (verl's own model merger).

verl 0.9.1's trainers write per-rank shards (``model_world_size_<W>_rank_<r>.pt`` + ``fsdp_config.json`` + the HF
config/tokenizer in ``huggingface/``) in two layouts under ``<trainer.default_local_dir>``:

- the PPO trainer (``verl.trainer.ppo.ray_trainer._save_checkpoint``): ``global_step_<N>/actor/`` (and
  ``critic/`` when there is one);
- the SFT trainer (``verl.utils.checkpoint.checkpoint_handler.CheckpointHandler.save_checkpoint``):
  ``global_step_<N>/`` itself, next to the dataloader state ``data_<dp_rank>.pt``.

Both keep the newest step in ``latest_checkpointed_iteration.txt``. :func:`find_actor_checkpoint` accepts either
layout; :func:`convert_checkpoint` runs

    python -m verl.model_merger merge --backend fsdp --local_dir <actor dir> --target_dir <hf dir>

in a subprocess (the merger loads every shard; a separate process returns that memory), writing into a temporary
sibling directory that is renamed into place only when the merge succeeded, so a half-written model is never
mistaken for a finished one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["ConversionError", "convert_checkpoint", "find_actor_checkpoint", "merger_command"]

BACKENDS = ("fsdp", "megatron")


class ConversionError(RuntimeError):
    """The checkpoint is missing / malformed or verl's merger failed (the message says which)."""


def _newest_step(root: Path) -> int:
    tracker = root / "latest_checkpointed_iteration.txt"
    if tracker.is_file() and tracker.read_text().strip().isdigit():
        return int(tracker.read_text().strip())
    steps = [int(p.name.split("_")[-1]) for p in root.glob("global_step_*") if p.name.split("_")[-1].isdigit()]
    if not steps:
        raise ConversionError(f"no global_step_* checkpoint in {root}")
    return max(steps)


def find_actor_checkpoint(checkpoint_dir: str | os.PathLike, step: int | None = None) -> Path:
    """The policy's shard directory of one step: ``global_step_<step>/actor`` (PPO trainer) or
    ``global_step_<step>`` itself (SFT trainer, shards directly inside). ``step=None`` = the newest (verl's tracker
    file, else the highest ``global_step_*``). Raises :class:`ConversionError` when there is none."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        raise ConversionError(f"checkpoint directory not found: {root}")
    step_dir = root / f"global_step_{_newest_step(root) if step is None else step}"
    for candidate in (step_dir / "actor", step_dir):
        if (candidate / "fsdp_config.json").is_file() or list(candidate.glob("model_world_size_*_rank_*.pt")):
            return candidate
    if not step_dir.is_dir():
        raise ConversionError(f"no checkpoint for step {step_dir.name.split('_')[-1]}: {step_dir} does not exist")
    raise ConversionError(f"{step_dir} holds no model shards: neither {step_dir / 'actor'} (PPO trainer layout) nor "
                          f"{step_dir} itself (SFT trainer layout) has fsdp_config.json or model_world_size_*.pt")


def merger_command(
    local_dir: str | os.PathLike, target_dir: str | os.PathLike, *, backend: str = "fsdp", python: str | None = None
) -> list[str]:
    """The ``verl.model_merger merge`` command line for one checkpoint."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return [python or sys.executable, "-m", "verl.model_merger", "merge", "--backend", backend,
            "--local_dir", str(local_dir), "--target_dir", str(target_dir)]


def _check_fsdp_checkpoint(local_dir: Path) -> None:
    missing = [name for name in ("fsdp_config.json", "huggingface") if not (local_dir / name).exists()]
    if not list(local_dir.glob("model_world_size_*_rank_0.pt")):
        missing.append("model_world_size_<W>_rank_0.pt")
    if missing:
        raise ConversionError(f"{local_dir} is not a verl FSDP checkpoint: missing {missing}")


def convert_checkpoint(
    local_dir: str | os.PathLike,
    target_dir: str | os.PathLike,
    *,
    backend: str = "fsdp",
    python: str | None = None,
    log_path: str | os.PathLike | None = None,
    extra_env: dict[str, str] | None = None,
) -> Path:
    """Merge the checkpoint in ``local_dir`` into an HF directory at ``target_dir`` (replaced atomically).

    The merger's output goes to ``log_path`` (default: ``<target_dir>.merge.log``). Returns ``target_dir``.
    """
    src, dst = Path(local_dir).resolve(), Path(target_dir).resolve()
    if backend == "fsdp":
        _check_fsdp_checkpoint(src)
    elif not src.is_dir():
        raise ConversionError(f"checkpoint directory not found: {src}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log = Path(log_path) if log_path is not None else dst.parent / f"{dst.name}.merge.log"
    cmd = merger_command(src, tmp, backend=backend, python=python)
    with open(log, "w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=str(dst.parent),
                              env={**os.environ, **(extra_env or {})}, check=False)
    if proc.returncode != 0 or not (tmp / "config.json").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConversionError(f"verl model merger failed (exit {proc.returncode}); see {log}")
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return dst

