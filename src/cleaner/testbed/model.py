"""A tiny Qwen3-architecture causal LM for the testbed, initialised from a seed.

The model is a real ``transformers`` Qwen3 model (the architecture of the paper's Qwen3-4B, scaled down), so
every engine path -- our HF generator, the SFT/RL trainers, verl's adapters -- runs on it unchanged and would run on
a real checkpoint directory too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["TinyModelConfig", "init_model"]


@dataclass(frozen=True)
class TinyModelConfig:
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    head_dim: int = 32
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "TinyModelConfig":
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown model config field(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        cfg = cls(**d)
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise ValueError("model.num_attention_heads must be a multiple of model.num_key_value_heads")
        return cfg


def init_model(tokenizer: Any, cfg: TinyModelConfig, *, seed: int, out_dir: str | Path | None = None):
    """Build a randomly initialised Qwen3 model for ``tokenizer``; save it (with the tokenizer) if out_dir."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen3Config

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
        **asdict(cfg),
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.generation_config = GenerationConfig(
            eos_token_id=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id, do_sample=True
        )
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    return model
