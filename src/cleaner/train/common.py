"""Pieces shared by the embedded trainers: checkpoints that survive kill -9, metrics logs, LR schedules."""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from cleaner.fsutil import write_text_atomic

__all__ = [
    "MetricsLog",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_at",
    "save_checkpoint",
    "save_hf_model",
    "set_seed",
]

_CKPT = re.compile(r"^step_(\d+)$")


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def lr_at(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, schedule: str = "cosine",
          min_lr_ratio: float = 0.1) -> float:
    """Linear warm-up, then constant or cosine decay to ``min_lr_ratio * base_lr`` (step is 0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return base_lr
    if schedule != "cosine":
        raise ValueError(f"unknown lr schedule {schedule!r} (constant | cosine)")
    frac = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def save_checkpoint(ckpt_dir: Path, step: int, state: dict[str, Any], *, keep: int = 2) -> Path:
    """Write ``ckpt_dir/step_<step>/state.pt`` atomically (temp dir + rename); keep the newest ``keep``."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step_{step}.", dir=ckpt_dir))
    try:
        torch.save(state, tmp / "state.pt")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    steps = sorted(int(m.group(1)) for p in ckpt_dir.iterdir() if (m := _CKPT.match(p.name)))
    for old in steps[:-keep]:
        shutil.rmtree(ckpt_dir / f"step_{old}", ignore_errors=True)
    for stray in ckpt_dir.glob(".step_*"):  # temp dirs of a run killed mid-save
        shutil.rmtree(stray, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    if not ckpt_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _CKPT.match(p.name)) and (p / "state.pt").exists()]
    return max(found)[1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path / "state.pt", map_location="cpu", weights_only=False)


class MetricsLog:
    """Append-only JSONL of per-step metrics; on resume, rows after the checkpoint's step are dropped."""

    def __init__(self, path: Path, *, resume_step: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if resume_step > 0 and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
        write_text_atomic(self.path, "".join(k + "\n" for k in kept))
        self._fh = open(self.path, "a", buffering=1)

    def write(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps(row, sort_keys=True) + "\n")

    def close(self) -> None:
        self._fh.close()


def save_hf_model(model: Any, tokenizer: Any, final: Path) -> Path:
    """``save_pretrained`` model + tokenizer into ``final`` atomically: a complete directory or none."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp")
    old = final.with_name(f".{final.name}.old")
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final
