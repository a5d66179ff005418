"""The token-in/token-out generation protocol every engine implements (HF here, verl's server manager on GPUs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

__all__ = ["GenerationOutput", "Generator", "SamplingParams"]


@dataclass(frozen=True)
class SamplingParams:
    """Sampling for one request. ``seed`` makes a request's draw independent of how requests are batched."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    logprobs: bool = False

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class GenerationOutput:
    token_ids: list[int]
    logprobs: list[float] | None = None
    finish_reason: str = "stop"  # "stop" (a stop token, included in token_ids) or "length"
    extra: dict = field(default_factory=dict)


@runtime_checkable
class Generator(Protocol):
    async def generate(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> GenerationOutput:
        """Continue ``prompt_ids``; stop after a stop token (kept in the output) or ``max_new_tokens``."""
        ...
