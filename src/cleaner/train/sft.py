"""Cold-start SFT on tool-use trajectories (the paper's RA-SFT stage, embedded engine).

Loss is on assistant tokens only: prompts and tool responses are masked, and the masks come from
:meth:`cleaner.chat.ChatFormat.encode_messages`, the same segment builders the agent loop uses at rollout time.
Random (not length-grouped) batches, AdamW with warm-up + cosine decay, gradient clipping. Checkpoints every
``checkpoint_every`` steps and resumes from the newest one; metrics per step go to ``metrics.jsonl``; the final
model is written with ``save_pretrained`` (with its tokenizer) so ``AutoModelForCausalLM`` loads it.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from cleaner.chat import ChatFormat
from cleaner.train.packing import pack_sequences
from cleaner.data.schema import write_json_atomic
from cleaner.train.common import (
    MetricsLog,
    latest_checkpoint,
    load_checkpoint,
    lr_at,
    save_checkpoint,
    save_hf_model,
)

__all__ = ["SFTConfig", "encode_sft_examples", "train_sft"]

IGNORE = -100


@dataclass(frozen=True)
class SFTConfig:
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    batch_size: int = 16
    max_steps: int = 900
    max_minutes: float | None = None  # stop early (and save) after this much training wall time
    max_length: int = 768
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 1
    threads: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "SFTConfig":
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"sft: unknown field(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        cfg = cls(**d)
        for name in ("lr", "batch_size", "max_steps", "max_length", "checkpoint_every"):
            if getattr(cfg, name) <= 0:
                raise ValueError(f"sft.{name} must be > 0, got {getattr(cfg, name)}")
        return cfg


def load_conversations(data_path: str | Path) -> list[dict]:
    """SFT conversations from JSONL (one ``{"messages": [...]}`` per line) or a parquet of SFT rows."""
    if str(data_path).endswith(".parquet"):
        from cleaner.data.schema import read_parquet_rows

        return read_parquet_rows(data_path)
    conversations = []
    with open(data_path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                conversations.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{data_path}:{lineno}: not valid JSON ({exc.msg})") from None
    return conversations


def encode_sft_examples(
    conversations: Sequence[dict], fmt: ChatFormat, *, max_length: int
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """(input ids, labels) per conversation; labels are -100 outside assistant tokens. Returns (examples, n_cut)."""
    examples: list[tuple[list[int], list[int]]] = []
    too_long = 0
    for conv in conversations:
        messages = conv["messages"] if isinstance(conv, dict) and "messages" in conv else conv
        enc = fmt.encode_messages(messages)
        ids = enc.prompt_ids + enc.response_ids
        labels = [IGNORE] * len(enc.prompt_ids) + [t if m else IGNORE for t, m in zip(enc.response_ids, enc.response_mask)]
        if len(ids) > max_length:
            too_long += 1
            continue
        examples.append((ids, labels))
    return examples, too_long


def packed_loss(model: Any, batch: Sequence[tuple[list[int], list[int]]], *, max_len: int,
                pad_id: int) -> tuple[torch.Tensor, int, int]:
    """Token-mean cross-entropy over the labelled tokens of ``batch`` (packed rows, no padding waste).

    Returns (loss, labelled tokens, real tokens). A sequence's first label is always -100 (prompt), so the
    prediction across a packing boundary is never trained.
    """
    packed = pack_sequences([ids for ids, _ in batch], max_len, pad_id)
    labels = torch.full(packed.input_ids.shape, IGNORE, dtype=torch.long)
    for (row, start, n), (_, y) in zip(packed.spans, batch):
        labels[row, start : start + n] = torch.tensor(y)
    logits = packed.forward(model)[:, :-1, :].float()
    target = labels[:, 1:]
    n_lab = int((target != IGNORE).sum())
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return loss / max(n_lab, 1), n_lab, sum(len(ids) for ids, _ in batch)


def train_sft(
    model_dir: str | Path,
    data_path: str | Path,
    out_dir: str | Path,
    cfg: SFTConfig,
    *,
    tools: Sequence[dict] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``model_dir`` on the conversations in ``data_path`` (JSONL, one ``{"messages": [...]}`` per line).

    Writes ``out_dir/final`` (HF model + tokenizer), ``out_dir/metrics.jsonl``, ``out_dir/checkpoints/``, and
    returns a summary. Re-running after an interruption resumes from the newest checkpoint.
    """
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cleaner.prompts import tool_schemas

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    fmt = ChatFormat(tok, tools if tools is not None else tool_schemas())
    conversations = load_conversations(data_path)
    examples, too_long = encode_sft_examples(conversations, fmt, max_length=cfg.max_length)
    if not examples:
        raise ValueError(f"{data_path}: no usable conversations (read {len(conversations)}, {too_long} too long)")

    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )
    ckpt_dir = out / "checkpoints"
    step, elapsed, order_rng_state, tokens_seen = 0, 0.0, None, 0
    latest = latest_checkpoint(ckpt_dir)
    if latest is not None:
        state = load_checkpoint(latest)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed, tokens_seen = state["step"], state["elapsed_s"], state["tokens_seen"]
        order_rng_state = state["order_rng"]
        torch.set_rng_state(state["torch_rng"])
        print(f"sft: resuming from checkpoint {latest} (step {step} of {cfg.max_steps})", file=sys.stderr, flush=True)
    order_rng = random.Random(cfg.seed)
    if order_rng_state is not None:
        order_rng.setstate(order_rng_state)
    metrics = MetricsLog(out / "metrics.jsonl", resume_step=step)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def save(at: int) -> None:
        save_checkpoint(ckpt_dir, at, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "step": at, "elapsed_s": elapsed,
            "tokens_seen": tokens_seen, "order_rng": order_rng.getstate(), "torch_rng": torch.get_rng_state(),
            "config": asdict(cfg),
        })

    bar = tqdm(total=cfg.max_steps, initial=step, desc="sft", disable=not progress, dynamic_ncols=True)
    stopped_early = False
    last_loss = float("nan")
    while step < cfg.max_steps:
        if cfg.max_minutes is not None and elapsed >= 60 * cfg.max_minutes:
            stopped_early = True
            break
        t0 = time.perf_counter()
        batch = [examples[order_rng.randrange(len(examples))] for _ in range(cfg.batch_size)]
        lr = lr_at(step, base_lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=cfg.max_steps,
                   min_lr_ratio=cfg.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        loss, n_tok, real_tokens = packed_loss(model, batch, max_len=cfg.max_length, pad_id=pad)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        dt = time.perf_counter() - t0
        elapsed += dt
        tokens_seen += real_tokens
        last_loss = loss.item()
        if step % cfg.log_every == 0:
            metrics.write({"step": step, "loss": last_loss, "lr": lr, "grad_norm": float(gnorm),
                           "loss_tokens": n_tok, "tokens_per_s": real_tokens / dt, "elapsed_s": elapsed})
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.1e}")
        if step % cfg.checkpoint_every == 0:
            save(step)
    bar.close()
    save(step)
    metrics.close()
    model.eval()
    final = save_hf_model(model, tok, out / "final")
    summary = {"steps": step, "final_loss": last_loss, "elapsed_s": elapsed, "tokens_seen": tokens_seen,
               "examples": len(examples), "dropped_too_long": too_long, "stopped_early": stopped_early,
               "model_dir": str(final)}
    write_json_atomic(summary, out / "summary.json")
    return summary
