"""Token-in/token-out generation with a transformers causal LM (KV cache, batched, seeded), CPU or GPU.

:class:`HFGenerator` serves the testbed's tiny model and a real HF checkpoint (a Qwen3 directory) alike: it only
uses ``AutoModelForCausalLM`` and the model's forward with ``past_key_values``. Concurrent ``generate`` calls from
many agent trajectories are gathered into batches (dynamic batching: requests that arrive while a batch runs wait
for the next one). Each request may carry its own seed; its tokens are then drawn with Gumbel-max noise from a
per-request generator, so a trajectory's sample does not depend on which other requests shared its batch.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from cleaner.engines.base import GenerationOutput, SamplingParams

__all__ = ["HFGenerator"]


@dataclass
class _Request:
    prompt_ids: list[int]
    sampling: SamplingParams
    future: asyncio.Future


def _growing_cache() -> Any:
    """A transformers ``DynamicCache`` whose layers keep capacity-doubling key/value buffers."""
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache()
    cache.layer_class_to_replicate = _growing_layer_class()
    return cache


@functools.cache
def _growing_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """``DynamicLayer`` that writes each step's keys/values in place into buffers that double when full,
        instead of concatenating the whole cache every step (that copy was ~13% of a testbed decode step); the
        cached values, and so the samples, are the same."""

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self.used = 0
                self.key_buf = self.value_buf = None
            new = key_states.shape[-2]
            if self.key_buf is None or self.used + new > self.key_buf.shape[-2]:
                self._grow(max(64, 2 * (self.used + new)), key_states)
            self.key_buf[..., self.used : self.used + new, :] = key_states
            self.value_buf[..., self.used : self.used + new, :] = value_states
            self.used += new
            self.keys = self.key_buf[..., : self.used, :]
            self.values = self.value_buf[..., : self.used, :]
            return self.keys, self.values

        def _grow(self, capacity: int, like: torch.Tensor) -> None:
            shape = (*like.shape[:-2], capacity, like.shape[-1])
            key_buf, value_buf = like.new_empty(shape), like.new_empty(shape)
            if self.key_buf is not None:
                key_buf[..., : self.used, :] = self.key_buf[..., : self.used, :]
                value_buf[..., : self.used, :] = self.value_buf[..., : self.used, :]
            self.key_buf, self.value_buf = key_buf, value_buf

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.get_seq_length() > 0:
                self.key_buf = self.key_buf[indices, ...]
                self.value_buf = self.value_buf[indices, ...]
                self.keys = self.key_buf[..., : self.used, :]
                self.values = self.value_buf[..., : self.used, :]

    return GrowingLayer


def _nucleus_mask(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Boolean mask of tokens outside the top-p nucleus (the most likely token is always kept)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    cum = torch.cumsum(probs, dim=-1)
    outside_sorted = (cum - probs) >= top_p[:, None]
    outside_sorted[:, 0] = False
    outside = torch.zeros_like(outside_sorted)
    outside.scatter_(1, order, outside_sorted)
    return outside


class HFGenerator:
    """Batched sampler over a transformers causal LM; implements :class:`cleaner.engines.base.Generator`."""

    def __init__(
        self,
        model: Any,
        *,
        pad_token_id: int,
        max_batch_size: int = 64,
        seed: int = 0,
        batch_wait_s: float = 0.002,
        batch_settle_s: float = 0.0,
        batch_max_wait_s: float = 0.5,
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.model = model
        self.device = next(model.parameters()).device
        self.pad_token_id = int(pad_token_id)
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.batch_settle_s = batch_settle_s
        self.batch_max_wait_s = batch_max_wait_s
        self._shared_gen = torch.Generator(device=self.device).manual_seed(seed)
        self._queue: list[_Request] = []
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._lock = threading.Lock()  # one forward pass at a time on the model
        self.stats = {"batches": 0, "requests": 0, "generated_tokens": 0}

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | None = None, dtype: str = "auto", **kw):
        """Load a checkpoint directory (tokenizer + model); returns (generator, tokenizer)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path))
        torch_dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
                       "float16": torch.float16}[dtype]
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device).eval()
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return cls(model, pad_token_id=pad, **kw), tok

    # -- synchronous batched core ---------------------------------------------------------------------
    @torch.inference_mode()
    def generate_batch(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]) -> list[GenerationOutput]:
        """Generate for a batch of prompts (left-padded, KV cache); finished rows leave the cache."""
        if len(prompts) != len(params):
            raise ValueError("prompts and params differ in length")
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt")
        with self._lock:
            return self._generate_batch(prompts, params)

    def _generate_batch(self, prompts, params) -> list[GenerationOutput]:
        dev = self.device
        n = len(prompts)
        width = max(len(p) for p in prompts)
        ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            attn[i, width - len(p):] = 1
        ids, attn = ids.to(dev), attn.to(dev)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        temps = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=dev)
        top_ps = torch.tensor([p.top_p for p in params], dtype=torch.float32, device=dev)
        # Per-request generators live on the model's device: drawing a vocabulary of noise per row on the CPU and
        # copying it over dominated a GPU step (measured: Qwen3-0.6B shapes, batch 256, 763 tokens/s on an H100).
        gens = [torch.Generator(device=dev).manual_seed(p.seed) if p.seed is not None else None for p in params]
        stop_sets = [set(p.stop_token_ids) for p in params]
        max_new = [p.max_new_tokens for p in params]
        out_tokens: list[list[int]] = [[] for _ in range(n)]
        out_lps: list[list[float]] = [[] for _ in range(n)]
        finish = ["length"] * n
        alive = list(range(n))  # original row index of each row still in the batch

        out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=_growing_cache(),
                         use_cache=True)
        past = out.past_key_values
        logits = out.logits[:, -1, :].float()
        dead = [False] * n  # per batch row: finished, still in the cache until the next compaction
        step = 0
        while True:
            rows_t = torch.tensor(alive, device=dev)
            t = temps.index_select(0, rows_t)
            tp = top_ps.index_select(0, rows_t)
            greedy = t <= 0
            scaled = logits / torch.where(greedy, torch.ones_like(t), t)[:, None]
            logp = torch.log_softmax(scaled, dim=-1)
            if bool((tp < 1).any()):
                scaled = scaled.masked_fill(_nucleus_mask(scaled, tp), float("-inf"))
            vocab = scaled.shape[-1]
            noise = torch.full((len(alive), vocab), 0.5, dtype=torch.float32, device=dev)
            for j, row in enumerate(alive):
                if not dead[j]:  # a finished row draws nothing: its generator (maybe the shared one) stays put
                    g = gens[row] if gens[row] is not None else self._shared_gen
                    torch.rand(vocab, generator=g, device=dev, out=noise[j])
            gumbel = -torch.log(-torch.log(noise.clamp_(1e-20, 1.0 - 1e-7)))
            gumbel[greedy] = 0.0
            nxt = torch.argmax(scaled + gumbel, dim=-1)
            lp = logp.gather(1, nxt[:, None])[:, 0]
            nxt_l, lp_l = nxt.tolist(), lp.tolist()
            for j, row in enumerate(alive):
                if dead[j]:
                    continue
                tok = nxt_l[j]
                out_tokens[row].append(tok)
                out_lps[row].append(lp_l[j])
                if tok in stop_sets[row]:
                    finish[row] = "stop"
                    dead[j] = True
                elif len(out_tokens[row]) >= max_new[row]:
                    dead[j] = True
            step += 1
            keep = [j for j in range(len(alive)) if not dead[j]]
            if not keep:
                break
            # Finished rows leave the cache once they are a quarter of the batch: a decode step of a small model
            # costs about the same with a few idle rows, while every compaction copies the whole cache.
            if 4 * (len(alive) - len(keep)) >= len(alive):
                keep_t = torch.tensor(keep, device=dev)
                past.batch_select_indices(keep_t)
                attn = attn.index_select(0, keep_t)
                pos = pos.index_select(0, keep_t)
                nxt = nxt.index_select(0, keep_t)
                alive = [alive[j] for j in keep]
                dead = [False] * len(alive)
            attn = torch.cat([attn, torch.ones((len(alive), 1), dtype=attn.dtype, device=dev)], dim=1)
            pos = pos[:, -1:] + 1
            out = self.model(
                input_ids=nxt[:, None], attention_mask=attn, position_ids=pos, past_key_values=past, use_cache=True
            )
            past = out.past_key_values
            logits = out.logits[:, -1, :].float()
        self.stats["batches"] += 1
        self.stats["requests"] += n
        self.stats["generated_tokens"] += sum(len(t) for t in out_tokens)
        return [
            GenerationOutput(out_tokens[i], out_lps[i] if params[i].logprobs else None, finish[i]) for i in range(n)
        ]

    # -- asynchronous dynamic batching ------------------------------------------------------------------
    async def generate(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> GenerationOutput:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._wakeup = asyncio.Event()
            self._queue = []
            self._worker = loop.create_task(self._serve())
        fut = loop.create_future()
        self._queue.append(_Request(list(prompt_ids), sampling, fut))
        self._wakeup.set()
        return await fut

    async def _gather_requests(self) -> None:
        """Hold the batch open while requests keep arriving: after a batch, trajectories come back from their tool
        calls a few milliseconds apart, and a decode step costs about the same for 8 rows as for 64 (per-step
        overhead dominates small models), so closing the batch at the first arrival ran the rest as a train of
        small batches, each as long as its longest turn (measured: 9 batches of 64, 13, 48, 14, 26, 8, 8, 6, 1
        rows for one testbed RL step). The batch closes once no request arrived for ``batch_settle_s``, after
        ``batch_max_wait_s`` at most, or when it is full."""
        await asyncio.sleep(self.batch_wait_s)
        waited, seen = self.batch_wait_s, len(self._queue)
        while self.batch_settle_s > 0 and waited < self.batch_max_wait_s and len(self._queue) < self.max_batch_size:
            await asyncio.sleep(self.batch_settle_s)
            waited += self.batch_settle_s
            if len(self._queue) == seen:
                break
            seen = len(self._queue)

    async def _serve(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            # Let other trajectories finish their tool calls and enqueue before the batch closes.
            await self._gather_requests()
            batch, self._queue = self._queue[: self.max_batch_size], self._queue[self.max_batch_size:]
            if not self._queue:
                self._wakeup.clear()
            batch = [r for r in batch if not r.future.cancelled()]
            if not batch:
                continue
            try:
                results = await asyncio.to_thread(
                    self.generate_batch, [r.prompt_ids for r in batch], [r.sampling for r in batch]
                )
            except Exception as exc:  # deliver the engine error to every waiting trajectory
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            for r, res in zip(batch, results):
                if not r.future.done():
                    r.future.set_result(res)

    async def aclose(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._worker = None
