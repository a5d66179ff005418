r"""One-GPU check of the paper config's actor memory and speed: Qwen3-4B shapes, random weights, no verl, no network.

What it runs (config/paper-qwen3-4b.yaml through src/cleaner/engines/verl/overrides.py; verl 0.9.1's FSDP engine,
``verl/workers/engine/fsdp/transformer_impl.py``):

* the model: ``Qwen3ForCausalLM`` built from a config only, random weights, Qwen3-4B-Instruct-2507's shapes
  (hidden 2560, 36 layers, 32 query / 8 KV heads, head_dim 128, MLP 9728, vocab 151936, tied embeddings,
  rope_theta 5e6 and 262,144 positions: the 2507 release's values; the original Qwen3-4B had 1e6 and 40,960);
* FSDP2 as verl's ``apply_fsdp2`` does it: ``fully_shard`` on every ``Qwen3DecoderLayer`` then on the root, fp32
  master weights, ``MixedPrecisionPolicy(param_dtype=fp16, reduce_dtype=fp32)``, forward under
  ``torch.autocast(fp16)``, ``ShardedGradScaler(growth_interval=400)``, AdamW (betas 0.9/0.999, weight decay 0.01,
  lr 2e-6), grad clip 1.0, gradient checkpointing (``use_reentrant=False``);
* ``param_offload`` / ``optimizer_offload`` as the paper config sets them (both on): weights and Adam state live
  on the CPU between calls and move to the GPU for each call, as verl's ``EngineTrainModeCtx`` /
  ``EngineEvalModeCtx`` do (train: weights + grads + optimizer state; log-prob: weights only);
* phase ``logprob`` (run first: it is issue 10's failure 8): the no-grad old-log-prob pass with entropy over
  ``log_prob_max_token_len_per_gpu`` = 4 x 23,040 = 92,160 tokens (4 full-length sequences), computed two ways:
  ``full_logits``: what verl does without ``use_fused_kernels`` (our config): the model's fp16 logits
  (92,160 x 151,936 x 2 bytes = 28 GB) then ``entropy_from_logits`` (through ``torch.compile``, verl's default
  ``use_torch_compile=True``; compiled once on a small input first, timed apart) and ``logprobs_from_logits``;
  ``full_logits_eager_entropy``: the same with the uncompiled entropy (``use_torch_compile=False``);
  ``fused_chunked``: what ``use_fused_kernels=True`` does with its default ``impl_backend: torch``: the model's
  forward is replaced (``verl/models/transformers/dense_common.py: forward_with_torch_backend``) and
  ``FusedLinearForPPOFunction`` computes log-prob and entropy 512 tokens at a time from the hidden states and the
  lm_head weight, so the full logits never exist. The two ways must agree (``agreement`` in the JSON);
* phase ``train``: one PPO update (two by default, the second timed warm) on one micro-batch of
  ``ppo_max_token_len_per_gpu`` = 2,560 + 20,480 = 23,040 tokens (one sequence at full length, the worst case of
  verl's dynamic batching), verl's vanilla clipped policy loss (clip 0.2 / 0.28, dual clip 10, token-mean),
  ``logprobs_from_logits`` with ``inplace_backward=True``, no entropy (``entropy_coef`` 0).

The verl functions used are copied below (verl is not on the device machine); tests/test_h200_check.py checks each
copy against verl's own function on the CPU.

Where this differs from a verl run (and why):
* one GPU, world size 1: FSDP shards nothing, so the weights, grads and Adam state (4.0B params x 16 bytes =
  64 GB) are 4x what each of the paper's 4 GPUs holds; the JSON reports ``resident_gib`` (what is on the GPU
  before the forward) next to the peak, so the 4-GPU figure is ``peak - resident * 3/4``;
* verl packs sequences into one row (``use_remove_padding``) and runs flash-attn's varlen kernel; here the
  micro-batch is a batch of equal full-length rows (no padding), which the same causal kernels compute with the
  same token count and the same per-sequence attention (torch's SDPA flash kernel, or flash-attn when installed);
* without flash-attn, verl's ``logprobs_from_logits`` falls back to ``logprobs_from_logits_v2`` (a Python loop
  over tokens); with flash-attn (the cluster image) it uses flash-attn's Triton cross-entropy, which needs less
  memory: the script takes whichever is importable and says which in the JSON (``logprob_impl``);
* the Adam state is created before the measured step (one zero-gradient step, which moves no weight but weight
  decay), so the measured step is a steady-state one, as every verl step after the first;
* lr is the recipe's 2e-6 without the warm-up schedule (verl's step 1 runs at lr 0).

Run (device machine, from the repo root; writes ``$OUT/h200_check.json``, ``./out`` when OUT is unset):
    bash scripts/device/h200_check.sh            # the full check, about 4-6 minutes once the machine is up
    bash scripts/device/h200_check.sh --quick    # one train step, no eager-entropy variant
CPU dry run (tiny shapes, gloo; what tests/test_h200_check.py runs):
    python scripts/device/h200_check.py --device cpu --tiny --out /tmp/h200
Needs torch >= 2.6 (``fully_shard``) and transformers with ``Qwen3Config``; the device image has torch 2.11 and
transformers 5.17 (KINDS.md), so nothing travels. Were transformers missing there, carry our lock's version as
wheels (run here in the repo root; h200_check.sh installs whatever is in ``.whl``, and ``carry: [".whl"]``):
    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl transformers==5.10.4 tokenizers==0.22.2
(14 MB; tokenizers because transformers 5.10.4 refuses the machine's tokenizers 0.23.2 at import.)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

SCHEMA = "h200_check/1"
GIB = 2**30

# Qwen3-4B-Instruct-2507's config.json (architecture fields only).
QWEN3_4B = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                rope_theta=5_000_000.0, max_position_embeddings=262144, rms_norm_eps=1e-6)
# CPU dry run: small enough for seconds on one core; init wide enough that the distributions are peaked, so a
# misaligned label or a lost chunk moves the log-probs far beyond the agreement tolerance.
TINY = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, rope_theta=5_000_000.0,
            max_position_embeddings=4096, rms_norm_eps=1e-6, initializer_range=0.25)

# The recipe's token budgets (overrides.py: ppo_max_token_len_per_gpu = prompt + response; log-prob = 4x that).
PROMPT_TOKENS, RESPONSE_TOKENS = 2560, 20480
TRAIN_TOKENS = PROMPT_TOKENS + RESPONSE_TOKENS
LOGPROB_SEQS = 4
# Max |full - fused| per token that still counts as agreement, by compute dtype (fp16 logits carry ~1e-3
# relative rounding, and verl's fused path returns entropy in the compute dtype).
AGREEMENT_TOLERANCE = {"float32": 1e-3, "float16": 5e-2, "bfloat16": 2.5e-1}


# -- verl 0.9.1, copied (verl/utils/torch_functional.py, verl/utils/experimental/torch_functional.py) -----------
try:
    from flash_attn.ops.triton.cross_entropy import cross_entropy_loss as _flash_cross_entropy
except ImportError:
    _flash_cross_entropy = None


def logprobs_from_logits_v2(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """verl's fallback without flash-attn: row by row, log_softmax for half precision (logsumexp for fp32)."""
    if logits.dtype in (torch.float32, torch.float64):
        logits_labels = torch.gather(logits, dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)
        logsumexp_values = torch.stack([torch.logsumexp(logit, dim=-1) for logit in logits])
        return logits_labels - logsumexp_values
    rows = []
    for row_logits, row_labels in zip(logits, labels, strict=True):
        row_logprobs = F.log_softmax(row_logits, dim=-1)
        rows.append(row_logprobs.gather(dim=-1, index=row_labels.unsqueeze(-1)).squeeze(-1))
    return torch.stack(rows)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, inplace_backward: bool = True) -> torch.Tensor:
    """verl's ``logprobs_from_logits``: flash-attn's Triton cross-entropy when importable, else the v2 loop."""
    if _flash_cross_entropy is not None and os.environ.get("VERL_DISABLE_FLASH_ATTN_CE", "0") != "1":
        batch_dim = logits.shape[:-1]
        losses = _flash_cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                      inplace_backward=inplace_backward)[0]
        return -losses.view(*batch_dim)
    return logprobs_from_logits_v2(logits, labels)


def logprob_impl() -> str:
    use_flash = _flash_cross_entropy is not None and os.environ.get("VERL_DISABLE_FLASH_ATTN_CE", "0") != "1"
    return "flash_attn_cross_entropy" if use_flash else "logprobs_from_logits_v2"


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """verl's ``entropy_from_logits``: logsumexp(logits) - sum(softmax(logits) * logits)."""
    pd = torch.nn.functional.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - torch.sum(pd * logits, dim=-1)


def _fused_linear_for_ppo_fwd(hidden_states: torch.Tensor, vocab_weights: torch.Tensor, input_ids: torch.Tensor,
                              temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's ``_fused_linear_for_ppo_fwd``: one chunk's logits, upcast to fp32, log-prob and entropy."""
    logits = (hidden_states @ vocab_weights.t()) / temperature
    orig_dtype = logits.dtype
    logits = logits.to(torch.float32)
    probs = logits.softmax(dim=-1)
    entropy = torch.logsumexp(logits, dim=-1) - torch.sum(probs * logits, dim=-1)
    if _flash_cross_entropy is not None:
        token_log_probs = -_flash_cross_entropy(logits, input_ids)[0]
    else:
        token_log_probs = logits.log_softmax(dim=-1).gather(-1, input_ids.unsqueeze(-1)).squeeze(-1)
    return token_log_probs, entropy.to(orig_dtype)


def fused_logprobs_entropy(hidden_states: torch.Tensor, vocab_weights: torch.Tensor, input_ids: torch.Tensor,
                           temperature: float = 1.0, chunk_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward of verl's ``FusedLinearForPPOFunction`` (no autograd: the log-prob pass runs without grad)."""
    batch = hidden_states.shape[0] if hidden_states.ndim == 3 else -1
    hidden_states = hidden_states.flatten(0, 1) if hidden_states.ndim == 3 else hidden_states
    input_ids = input_ids.flatten(0, 1) if input_ids.ndim == 2 else input_ids
    tokens = hidden_states.shape[0]
    log_probs = torch.zeros(tokens, device=hidden_states.device, dtype=torch.float32)
    entropy = hidden_states.new_zeros(tokens)
    for start in range(0, tokens, chunk_size):
        end = min(start + chunk_size, tokens)
        log_probs[start:end], entropy[start:end] = _fused_linear_for_ppo_fwd(
            hidden_states[start:end], vocab_weights, input_ids[start:end], temperature)
    if batch > 0:
        return log_probs.view(batch, -1), entropy.view(batch, -1)
    return log_probs, entropy


def policy_loss_vanilla(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                        response_mask: torch.Tensor, clip_low: float = 0.2, clip_high: float = 0.28,
                        clip_c: float = 10.0) -> torch.Tensor:
    """verl's ``compute_policy_loss_vanilla`` (dual clip), token-mean over the response tokens."""
    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    clip_pg_losses2 = torch.min(-advantages * clip_c, clip_pg_losses1)
    pg_losses = torch.where(advantages < 0, clip_pg_losses2, clip_pg_losses1)
    return (pg_losses * response_mask).sum() / response_mask.sum().clamp(min=1)


# -- the run's settings and its clock ---------------------------------------------------------------------------
@dataclass
class Settings:
    device: str
    tiny: bool
    dtype: str
    train_tokens: int
    prompt_tokens: int
    train_steps: int
    logprob_tokens: int
    logprob_seqs: int
    attn_implementation: str
    compile_entropy: bool
    eager_entropy_variant: bool
    fused_chunk_size: int
    param_offload: bool
    optimizer_offload: bool
    gradient_checkpointing: bool
    lr: float
    seed: int
    budget_s: float


class BudgetExceeded(Exception):
    """The run's time budget ran out inside a step."""


class Budget:
    """Wall-clock budget of the whole run; a step is skipped when less is left than it needs."""

    def __init__(self, seconds: float):
        self.start = time.monotonic()
        self.deadline = self.start + seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Raise :class:`BudgetExceeded` in the main thread when the deadline passes (SIGALRM, whole seconds)."""
        def _expired(signum, frame):
            raise BudgetExceeded(f"time budget exhausted after {self.elapsed():.0f} s")
        previous = signal.signal(signal.SIGALRM, _expired)
        signal.alarm(max(1, math.ceil(self.remaining())))
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)


# -- memory and time ----------------------------------------------------------------------------------------------
class CudaMemory:
    """The CUDA caching allocator's counters, in one place (tests swap in a fake to check the span bookkeeping)."""

    def sync(self, device: torch.device) -> None:
        torch.cuda.synchronize(device)

    def current(self, device: torch.device) -> tuple[int, int]:
        return torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)

    def peak(self, device: torch.device) -> tuple[int, int]:
        return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)

    def reset_peak(self, device: torch.device) -> None:
        torch.cuda.reset_peak_memory_stats(device)


CUDA_MEMORY = CudaMemory()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        CUDA_MEMORY.sync(device)


def _gib(value: int) -> float:
    return round(value / GIB, 3)


def memory_now(device: torch.device) -> dict[str, float | None]:
    if device.type != "cuda":
        return {"allocated_gib": None, "reserved_gib": None}
    allocated, reserved = CUDA_MEMORY.current(device)
    return {"allocated_gib": _gib(allocated), "reserved_gib": _gib(reserved)}


# Spans being measured, outermost first: each holds the highest (allocated, reserved) seen inside it so far.
_open_spans: list[list[int]] = []


def _fold_peaks(device: torch.device) -> None:
    """Carry the allocator's peaks since its last reset into every open span, then reset them for the next span.

    The allocator has one peak counter, so a nested span's reset would otherwise wipe what its parents saw.
    """
    allocated, reserved = CUDA_MEMORY.peak(device)
    for span in _open_spans:
        span[0], span[1] = max(span[0], allocated), max(span[1], reserved)
    CUDA_MEMORY.reset_peak(device)


@contextlib.contextmanager
def measured(device: torch.device, record: dict[str, Any], tokens: int | None = None) -> Iterator[dict[str, Any]]:
    """Fill ``record`` with seconds, peak allocated/reserved GiB (CUDA) and tokens/s of the enclosed work."""
    cuda = device.type == "cuda"
    _sync(device)
    if cuda:
        _fold_peaks(device)
    span = list(CUDA_MEMORY.current(device)) if cuda else [0, 0]
    _open_spans.append(span)
    start = time.perf_counter()
    try:
        yield record
    finally:
        _sync(device)
        seconds = time.perf_counter() - start
        if cuda:
            _fold_peaks(device)
        _open_spans.pop()
        record["seconds"] = round(seconds, 3)
        if tokens:
            record["tokens_per_s"] = round(tokens / seconds, 1) if seconds > 0 else None
        record["peak_allocated_gib"] = _gib(span[0]) if cuda else None
        record["peak_reserved_gib"] = _gib(span[1]) if cuda else None


def _reached(span: dict[str, Any]) -> dict[str, Any]:
    return {"seconds": span.get("seconds"), "peak_allocated_gib": span.get("peak_allocated_gib"),
            "peak_reserved_gib": span.get("peak_reserved_gib")}


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def guarded(name: str, budget: Budget, need_s: float, device: torch.device,
            step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one step; an out-of-memory, an error or the deadline becomes the step's status, not the run's end."""
    if budget.remaining() < need_s:
        left = budget.remaining()
        return {"status": "skipped", "reason": f"time budget: {left:.0f} s left, {name} needs ~{need_s:.0f} s"}
    record: dict[str, Any]
    span: dict[str, Any] = {}  # the whole step, so an out-of-memory still says how far it got
    try:
        with budget.guard(), measured(device, span):
            record = step()
        record["status"] = "ok"
    except torch.OutOfMemoryError as err:
        record = {"status": "oom", "error": str(err).splitlines()[0][:400], **_reached(span)}
    except BudgetExceeded as err:
        record = {"status": "timeout", "error": str(err), **_reached(span)}
    except Exception as err:  # noqa: BLE001 -- any failure of one step is a finding, the next step still runs
        record = {"status": "error", "error": f"{type(err).__name__}: {err}"[:600], **_reached(span),
                  "traceback": traceback.format_exc(limit=6)[-2000:]}
    _free_memory(device)
    return record


# -- set-up ------------------------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict[str, Any]:
    import transformers
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "torch_cuda": torch.version.cuda, "transformers": transformers.__version__,
                           "flash_attn": _module_version("flash_attn"), "logprob_impl": logprob_impl(),
                           "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_total_gib=_gib(props.total_memory), capability=f"{props.major}.{props.minor}",
                   cudnn=torch.backends.cudnn.version(), device_count=torch.cuda.device_count())
    return env


def _module_version(name: str) -> str | None:
    try:
        module = __import__(name)
    except ImportError:
        return None
    return getattr(module, "__version__", "unknown")


def init_distributed(device: torch.device, workdir: Path):
    """World size 1 process group (NCCL on CUDA, gloo on CPU) through a file store: no port to pick."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store = workdir / "dist_store"
    store.unlink(missing_ok=True)
    dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)
    return init_device_mesh(device.type, (1,))


def pick_attention(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    return "flash_attention_2" if device.type == "cuda" and _module_version("flash_attn") else "sdpa"


def qwen3_config(shapes: dict[str, Any]):
    """``Qwen3Config`` of these shapes; rope_theta goes where the installed transformers reads it (5.x:
    ``rope_parameters``; 4.x: ``rope_theta``)."""
    from transformers import Qwen3Config
    fields = dict(shapes)
    theta = fields.pop("rope_theta")
    if "rope_parameters" in inspect.signature(Qwen3Config.__init__).parameters:
        fields["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    else:
        fields["rope_theta"] = theta
    return Qwen3Config(**fields)


def build_model(shapes: dict[str, Any], settings: Settings, device: torch.device, mesh):
    """Random-weight ``Qwen3ForCausalLM`` in fp32 (verl's training ``model_dtype``), sharded as ``apply_fsdp2``."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import Qwen3ForCausalLM
    config = qwen3_config(shapes)
    config._attn_implementation = settings.attn_implementation
    torch.manual_seed(settings.seed)
    with torch.device(device):
        model = Qwen3ForCausalLM(config)
    random_init(model, config.initializer_range)
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    param_dtype = getattr(torch, settings.dtype)
    mp_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=True)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=True)
    return model, config


@torch.no_grad()
def random_init(model, std: float) -> None:
    """Matrices ~ N(0, std), norm weights 1 (what transformers' init draws), set here so that no transformers
    version can leave a weight uninitialised; the tied embedding is one parameter and drawn once."""
    for param in model.parameters():
        if param.dim() >= 2:
            param.normal_(0.0, std)
        else:
            param.fill_(1.0)


def model_summary(model, config) -> dict[str, Any]:
    rope = getattr(config, "rope_parameters", None) or {"rope_theta": getattr(config, "rope_theta", None)}
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size, "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads,
            "head_dim": config.head_dim, "intermediate_size": config.intermediate_size,
            "tie_word_embeddings": bool(config.tie_word_embeddings), "rope_theta": rope.get("rope_theta"),
            "attn_implementation": config._attn_implementation}


def build_optimizer(model, settings: Settings, device: torch.device):
    """AdamW as verl builds it, its state created by one zero-gradient step (so every measured step is steady)."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.999), weight_decay=0.01)
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scaler = ShardedGradScaler(device=device.type, growth_interval=400) if settings.dtype == "float16" else None
    return optimizer, scaler


# -- offload, as verl's engine contexts do it (verl/utils/fsdp_utils.py) -----------------------------------------
def optimizer_to(optimizer, device: torch.device | str) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                state[key] = value.to(device, non_blocking=True)


def offload(model, optimizer, settings: Settings, device: torch.device) -> None:
    model.reshard()  # the root module keeps its (tied embedding) weight unsharded after a no-grad forward
    if device.type != "cuda":
        return
    if settings.param_offload:
        model.to("cpu", non_blocking=True)
    if optimizer is not None and settings.optimizer_offload:
        optimizer_to(optimizer, "cpu")
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()


def load(model, optimizer, settings: Settings, device: torch.device) -> None:
    if device.type != "cuda":
        return
    if settings.param_offload:
        model.to(device, non_blocking=True)
    if optimizer is not None and settings.optimizer_offload:
        optimizer_to(optimizer, device)


def attention_backends(device: torch.device):
    """On CUDA, SDPA's fused kernels only: the math fallback would build 32 x 23,040^2 scores per sequence and
    hide the real memory; when no fused kernel fits, the step fails and says so instead."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])


def autocast(device: torch.device, settings: Settings):
    if settings.dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, settings.dtype))


def random_tokens(vocab_size: int, shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, shape, generator=generator).to(device)


def rolled_labels(input_ids: torch.Tensor) -> torch.Tensor:
    """verl's labels: the packed sequence rolled by one (``torch.roll(input_ids_rmpad, -1)``)."""
    return torch.roll(input_ids.flatten(), shifts=-1).view_as(input_ids)


# -- phase 1: one PPO update on a 23,040-token micro-batch --------------------------------------------------------
def train_step(model, optimizer, scaler, settings: Settings, device: torch.device, step: int) -> dict[str, Any]:
    """verl's ``update_actor`` for one micro-batch: load, forward + loss, backward, clip + step, offload."""
    vocab = model.config.vocab_size
    input_ids = random_tokens(vocab, (1, settings.train_tokens), settings.seed + 100 + step, device)
    labels = rolled_labels(input_ids).flatten()
    response_mask = torch.zeros(settings.train_tokens, device=device)
    response_mask[settings.prompt_tokens:] = 1.0
    advantage = torch.full((settings.train_tokens,), 1.0 if step % 2 == 0 else -1.0, device=device)
    watched = model.model.norm.weight.to_local().detach().to("cpu", copy=True)
    record: dict[str, Any] = {"step": step, "tokens": settings.train_tokens, "substeps": {}}
    sub = record["substeps"]
    with measured(device, record, tokens=settings.train_tokens):
        with measured(device, sub.setdefault("load", {})):
            load(model, optimizer, settings, device)
        record["resident_gib"] = memory_now(device)["allocated_gib"]
        model.train()
        with measured(device, sub.setdefault("forward", {}), tokens=settings.train_tokens):
            with autocast(device, settings):
                logits = model(input_ids=input_ids, use_cache=False).logits.squeeze(0)
                log_prob = logprobs_from_logits(logits, labels, inplace_backward=True)
                loss = policy_loss_vanilla(log_prob.detach(), log_prob, advantage, response_mask)
        with measured(device, sub.setdefault("backward", {}), tokens=settings.train_tokens):
            (scaler.scale(loss) if scaler is not None else loss).backward()
            del logits, log_prob
        with measured(device, sub.setdefault("optimizer", {})):
            record.update(_optimizer_step(model, optimizer, scaler))
        with measured(device, sub.setdefault("offload", {})):
            offload(model, optimizer, settings, device)
    record["compute_tokens_per_s"] = _compute_rate(settings.train_tokens, sub, ("forward", "backward"))
    record["loss"] = float(loss.detach())
    record["weights_changed"] = bool((model.model.norm.weight.to_local().detach().cpu() - watched).abs().max() > 0)
    return record


def _optimizer_step(model, optimizer, scaler) -> dict[str, Any]:
    """verl's ``optimizer_step``: unscale, clip to 1.0, scaler step (skips non-finite), update the scale."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    if scaler is not None:
        scale_before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        skipped = scaler.get_scale() < scale_before
    else:
        skipped = not bool(torch.isfinite(grad_norm))
        if not skipped:
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"grad_norm": float(grad_norm), "optimizer_step_skipped": bool(skipped),
            "loss_scale": scaler.get_scale() if scaler is not None else None}


# -- phase 2: no-grad log-prob + entropy over 92,160 tokens -------------------------------------------------------
def logprob_inputs(model, settings: Settings, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    per_seq = settings.logprob_tokens // settings.logprob_seqs
    input_ids = random_tokens(model.config.vocab_size, (settings.logprob_seqs, per_seq), settings.seed + 7, device)
    return input_ids, rolled_labels(input_ids)


def full_logits_pass(model, settings: Settings, device: torch.device, entropy_fn: Callable,
                     with_logprobs: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """verl without fused kernels: full logits, then entropy, then ``logprobs_from_logits`` (rmpad layout)."""
    input_ids, labels = logprob_inputs(model, settings, device)
    tokens = input_ids.numel()
    record: dict[str, Any] = {"tokens": tokens, "substeps": {}}
    sub, outputs = record["substeps"], {}
    with measured(device, record, tokens=tokens), torch.no_grad():
        with measured(device, sub.setdefault("load", {})):
            load(model, None, settings, device)
        model.eval()
        with autocast(device, settings):
            if entropy_fn is not entropy_from_logits:  # compiled: compile once on a small input, as verl's first step
                with measured(device, sub.setdefault("entropy_compile_warmup", {})):
                    entropy_fn(torch.randn(17, model.config.vocab_size, device=device,
                                           dtype=getattr(torch, settings.dtype)))
            with measured(device, sub.setdefault("forward", {}), tokens=tokens):
                logits = model(input_ids=input_ids, use_cache=False).logits.flatten(0, 1)
            record["logits_gib"] = _gib(logits.numel() * logits.element_size())
            with measured(device, sub.setdefault("entropy", {}), tokens=tokens):
                outputs["entropy"] = entropy_fn(logits).float().cpu()
            if with_logprobs:
                with measured(device, sub.setdefault("log_probs", {}), tokens=tokens):
                    outputs["log_probs"] = logprobs_from_logits(logits, labels.flatten(),
                                                                inplace_backward=False).float().cpu()
        del logits
        with measured(device, sub.setdefault("offload", {})):
            offload(model, None, settings, device)
    record["compute_tokens_per_s"] = _compute_rate(tokens, sub, ("forward", "entropy", "log_probs"))
    return record, outputs


@contextlib.contextmanager
def fused_forward(chunk_size: int) -> Iterator[None]:
    """Swap ``Qwen3ForCausalLM.forward`` for verl's ``forward_with_torch_backend`` while the block runs.

    Like verl's ``patch_forward_with_backends``, the class forward is replaced, so FSDP2's hooks on the root module
    still unshard the (tied) lm_head weight before it is read.
    """
    from transformers import Qwen3ForCausalLM
    original = Qwen3ForCausalLM.forward

    def forward_with_torch_backend(self, input_ids=None, position_ids=None, shift_labels=None, temperature=1.0,
                                   **kwargs):
        hidden_states = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False)[0]
        labels = shift_labels if shift_labels is not None else torch.roll(input_ids, shifts=-1, dims=-1)
        return fused_logprobs_entropy(hidden_states, self.lm_head.weight, labels, temperature, chunk_size)

    Qwen3ForCausalLM.forward = forward_with_torch_backend
    try:
        yield
    finally:
        Qwen3ForCausalLM.forward = original


def fused_pass(model, settings: Settings, device: torch.device) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """verl with ``use_fused_kernels=True`` (impl_backend torch): log-prob + entropy, never the full logits."""
    input_ids, labels = logprob_inputs(model, settings, device)
    tokens = input_ids.numel()
    record: dict[str, Any] = {"tokens": tokens, "chunk_size": settings.fused_chunk_size, "substeps": {}}
    sub = record["substeps"]
    with measured(device, record, tokens=tokens), torch.no_grad():
        with measured(device, sub.setdefault("load", {})):
            load(model, None, settings, device)
        model.eval()
        with autocast(device, settings), fused_forward(settings.fused_chunk_size):
            with measured(device, sub.setdefault("forward_log_probs_entropy", {}), tokens=tokens):
                log_probs, entropy = model(input_ids=input_ids, shift_labels=labels)
        outputs = {"log_probs": log_probs.flatten().float().cpu(), "entropy": entropy.flatten().float().cpu()}
        with measured(device, sub.setdefault("offload", {})):
            offload(model, None, settings, device)
    record["compute_tokens_per_s"] = _compute_rate(tokens, sub, ("forward_log_probs_entropy",))
    return record, outputs


def _compute_rate(tokens: int, substeps: dict[str, dict], names: tuple[str, ...]) -> float | None:
    """Tokens/s of the compute alone (no weight copies, no one-off compile)."""
    seconds = sum(substeps[name]["seconds"] for name in names if name in substeps)
    return round(tokens / seconds, 1) if seconds > 0 else None


def agreement(full: dict[str, torch.Tensor], fused: dict[str, torch.Tensor], dtype: str) -> dict[str, Any]:
    """Per-token |full - fused| of log-prob and entropy, against the dtype's tolerance."""
    tolerance = AGREEMENT_TOLERANCE[dtype]
    result: dict[str, Any] = {"tolerance": tolerance}
    for key in ("log_probs", "entropy"):
        diff = (full[key] - fused[key]).abs()
        result[f"{key}_max_abs_diff"] = float(diff.max())
        result[f"{key}_mean_abs_diff"] = float(diff.mean())
        result[f"{key}_std"] = float(full[key].std())
        result[f"{key}_mean"] = float(full[key].mean())
    result["agree"] = all(result[f"{k}_max_abs_diff"] <= tolerance for k in ("log_probs", "entropy"))
    return result


# -- the run -----------------------------------------------------------------------------------------------------
def run_logprob_phase(model, settings: Settings, device: torch.device, budget: Budget, report: dict,
                      save: Callable[[], None]) -> None:
    """Both ways of the log-prob pass, each measured on its own, then their agreement."""
    phase = report["phases"]["logprob"] = {"variants": {}}
    variants, outputs = phase["variants"], {}
    entropy_fn = torch.compile(entropy_from_logits, dynamic=True) if settings.compile_entropy else entropy_from_logits

    def variant(name: str, need_s: float, run: Callable) -> None:
        def step() -> dict[str, Any]:
            record, outputs[name] = run()
            return record
        variants[name] = guarded(name, budget, need_s, device, step)
        if variants[name]["status"] != "ok":
            _recover(model, None, settings, device)
        variants[name]["entropy_compiled"] = settings.compile_entropy if name == "full_logits" else None
        _print_record(f"logprob/{name}", variants[name])
        save()

    variant("full_logits", 20 if settings.tiny else 150, lambda: full_logits_pass(model, settings, device, entropy_fn))
    variant("fused_chunked", 10 if settings.tiny else 45, lambda: fused_pass(model, settings, device))
    if settings.eager_entropy_variant:
        variant("full_logits_eager_entropy", 10 if settings.tiny else 60,
                lambda: full_logits_pass(model, settings, device, entropy_from_logits, with_logprobs=False))
    if "full_logits" in outputs and "fused_chunked" in outputs:
        phase["agreement"] = agreement(outputs["full_logits"], outputs["fused_chunked"], settings.dtype)
    if "full_logits" in outputs and "full_logits_eager_entropy" in outputs:
        diff = outputs["full_logits"]["entropy"] - outputs["full_logits_eager_entropy"]["entropy"]
        phase["entropy_compiled_vs_eager_max_abs_diff"] = float(diff.abs().max())
    statuses = [v["status"] for v in variants.values()]
    phase["status"] = "ok" if all(s == "ok" for s in statuses) else "partial"


def run_train_phase(model, optimizer, scaler, settings: Settings, device: torch.device, budget: Budget,
                    report: dict, save: Callable[[], None]) -> None:
    phase = report["phases"]["train"] = {"steps": []}
    for step in range(settings.train_steps):
        record = guarded(f"train step {step}", budget, 10 if settings.tiny else 75, device,
                         lambda: train_step(model, optimizer, scaler, settings, device, step))
        phase["steps"].append(record)
        _print_record(f"train/step{step}", record)
        save()
        if record["status"] != "ok":
            _recover(model, optimizer, settings, device)
            break
    phase["status"] = "ok" if all(s["status"] == "ok" for s in phase["steps"]) else "partial"


def _recover(model, optimizer, settings: Settings, device: torch.device) -> None:
    """After a failed step: drop grads and move everything back off the GPU, so the next phase starts clean."""
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    with contextlib.suppress(Exception):
        offload(model, optimizer, settings, device)
    _free_memory(device)


def findings(report: dict) -> list[str]:
    """Plain-language lines for the coordinator: OOMs, errors, skipped steps, disagreement."""
    lines = []
    train = report["phases"].get("train", {})
    for record in train.get("steps", []):
        if record["status"] != "ok":
            lines.append(f"train step {record.get('step', '?')}: {record['status']}: {_why(record)}")
    for name in ("distributed", "build"):
        record = report["phases"].get(name)
        if record and record["status"] != "ok":
            lines.append(f"{name}: {record['status']}: {_why(record)}")
    for name, record in report["phases"].get("logprob", {}).get("variants", {}).items():
        if record["status"] != "ok":
            lines.append(f"logprob {name}: {record['status']}: {_why(record)}")
    agree = report["phases"].get("logprob", {}).get("agreement")
    if agree and not agree["agree"]:
        lines.append(f"full and fused log-prob/entropy disagree beyond {agree['tolerance']}: {agree}")
    return lines


def _why(record: dict[str, Any]) -> str:
    return record.get("error") or record.get("reason") or ""


def headline(report: dict) -> dict[str, Any]:
    """The figures docs/gpu.md asks for, in one place: peak GiB and seconds of each way and of the train step."""
    variants = report["phases"].get("logprob", {}).get("variants", {})
    steps = [s for s in report["phases"].get("train", {}).get("steps", []) if s["status"] == "ok"]
    keys = ("status", "seconds", "compute_tokens_per_s", "peak_allocated_gib", "peak_reserved_gib")
    out: dict[str, Any] = {f"logprob_{name}": {k: r.get(k) for k in keys} for name, r in variants.items()}
    if steps:
        last = steps[-1]
        out["train_step"] = {k: last.get(k) for k in ("seconds", "compute_tokens_per_s", "peak_allocated_gib",
                                                      "peak_reserved_gib", "resident_gib")}
    return out


def _print_record(name: str, record: dict[str, Any]) -> None:
    keys = ("status", "seconds", "tokens_per_s", "compute_tokens_per_s", "peak_allocated_gib", "peak_reserved_gib",
            "resident_gib", "logits_gib", "error", "reason")
    shown = ", ".join(f"{k}={record[k]}" for k in keys if record.get(k) is not None)
    print(f"[{name}] {shown}", flush=True)


def _summary_table(report: dict) -> str:
    """The last lines of the output (the device reply keeps only its tail)."""
    phases = report["phases"]
    entries = [("build", phases["build"])] if "build" in phases else []
    entries += [(f"logprob {n}", r) for n, r in phases.get("logprob", {}).get("variants", {}).items()]
    entries += [(f"train step {r.get('step', i)}", r) for i, r in enumerate(phases.get("train", {}).get("steps", []))]
    rows = [f"{'phase':34s} {'status':8s} {'seconds':>8s} {'compute tok/s':>13s} {'peak alloc GiB':>14s} "
            f"{'peak rsvd GiB':>13s} {'resident GiB':>12s}"]
    for name, r in entries:
        rows.append(f"{name:34s} {r['status']:8s} {_fmt(r.get('seconds')):>8s} "
                    f"{_fmt(r.get('compute_tokens_per_s')):>13s} "
                    f"{_fmt(r.get('peak_allocated_gib')):>14s} {_fmt(r.get('peak_reserved_gib')):>13s} "
                    f"{_fmt(r.get('resident_gib')):>12s}")
    agree = phases.get("logprob", {}).get("agreement")
    if agree:
        rows.append(f"full vs fused: max |d log-prob| {agree['log_probs_max_abs_diff']:.2e}, max |d entropy| "
                    f"{agree['entropy_max_abs_diff']:.2e} (tolerance {agree['tolerance']}): "
                    f"{'agree' if agree['agree'] else 'DISAGREE'}")
    return "\n".join(rows)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)


def write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(report, handle, indent=1, default=str)
    os.replace(handle.name, path)


def settings_from_args(args: argparse.Namespace) -> Settings:
    device = torch.device(args.device)
    tiny = args.tiny
    train_tokens = args.train_tokens or (180 if tiny else TRAIN_TOKENS)
    logprob_tokens = args.logprob_tokens or (600 if tiny else LOGPROB_SEQS * TRAIN_TOKENS)
    if logprob_tokens % args.logprob_seqs:
        raise SystemExit(f"--logprob-tokens ({logprob_tokens}) must be a multiple of "
                         f"--logprob-seqs ({args.logprob_seqs})")
    compile_entropy = {"on": True, "off": False, "auto": device.type == "cuda"}[args.compile_entropy]
    return Settings(
        device=args.device, tiny=tiny, dtype=args.dtype, train_tokens=train_tokens,
        prompt_tokens=train_tokens * PROMPT_TOKENS // TRAIN_TOKENS,
        train_steps=(1 if args.quick else 2) if args.train_steps is None else args.train_steps,
        logprob_tokens=logprob_tokens, logprob_seqs=args.logprob_seqs,
        attn_implementation=pick_attention(args.attn, device), compile_entropy=compile_entropy,
        eager_entropy_variant=compile_entropy and not args.quick,
        fused_chunk_size=args.fused_chunk_size, param_offload=not args.no_offload,
        optimizer_offload=not args.no_offload, gradient_checkpointing=True, lr=2e-6, seed=args.seed,
        budget_s=args.budget_s)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and token counts (the CPU dry run)")
    parser.add_argument("--quick", action="store_true", help="one train step, no eager-entropy variant")
    parser.add_argument("--dtype", choices=sorted(AGREEMENT_TOLERANCE), default="float16",
                        help="compute dtype (rl.precision: fp16); master weights stay fp32")
    parser.add_argument("--train-tokens", type=int, default=None, help=f"default {TRAIN_TOKENS}")
    parser.add_argument("--train-steps", type=int, default=None, help="default 2 (--quick: 1)")
    parser.add_argument("--logprob-tokens", type=int, default=None, help=f"default {LOGPROB_SEQS * TRAIN_TOKENS}")
    parser.add_argument("--logprob-seqs", type=int, default=LOGPROB_SEQS)
    parser.add_argument("--attn", choices=["auto", "sdpa", "flash_attention_2", "eager"], default="auto",
                        help="auto: flash_attention_2 where flash-attn is installed, else sdpa")
    parser.add_argument("--compile-entropy", choices=["auto", "on", "off"], default="auto",
                        help="torch.compile the full-logits entropy (verl's default); auto: on for CUDA")
    parser.add_argument("--fused-chunk-size", type=int, default=512, help="verl's FusedLinearForPPO chunk_size")
    parser.add_argument("--no-offload", action="store_true", help="keep weights and optimizer state on the GPU")
    parser.add_argument("--budget-s", type=float, default=330.0, help="wall-clock budget of the whole run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.environ.get("OUT") or "out", help="folder for h200_check.json ($OUT)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from_args(args)
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
    # an indexed device: torch.cuda.set_device refuses a bare "cuda"
    device = torch.device("cuda", 0) if settings.device == "cuda" else torch.device("cpu")
    budget = Budget(settings.budget_s)
    out_path = Path(args.out) / "h200_check.json"
    report: dict[str, Any] = {"schema": SCHEMA, "argv": sys.argv[1:] if argv is None else argv,
                              "settings": asdict(settings), "env": environment(device), "phases": {}}
    print("env:", json.dumps(report["env"]), flush=True)

    def save() -> None:
        report["elapsed_s"] = round(budget.elapsed(), 1)
        report["findings"] = findings(report)
        report["headline"] = headline(report)
        write_json(out_path, report)

    with tempfile.TemporaryDirectory() as workdir:
        holder: dict[str, Any] = {}

        def start() -> dict[str, Any]:
            holder["mesh"] = init_distributed(device, Path(workdir))
            return {"backend": "nccl" if device.type == "cuda" else "gloo", "world_size": 1}

        report["phases"]["distributed"] = guarded("distributed", budget, 0, device, start)
        if "mesh" in holder:
            try:
                run_phases(settings, device, holder["mesh"], budget, report, save)
            finally:
                import torch.distributed as dist
                dist.destroy_process_group()
    save()
    print(_summary_table(report), flush=True)
    for line in report["findings"]:
        print("finding:", line, flush=True)
    print(f"wrote {out_path} ({report['elapsed_s']} s)", flush=True)
    return 0


def run_phases(settings: Settings, device: torch.device, mesh, budget: Budget, report: dict,
               save: Callable[[], None]) -> None:
    holder: dict[str, Any] = {}

    def build() -> dict[str, Any]:
        record: dict[str, Any] = {}
        with measured(device, record):
            holder["model"], config = build_model(TINY if settings.tiny else QWEN3_4B, settings, device, mesh)
            holder["optimizer"], holder["scaler"] = build_optimizer(holder["model"], settings, device)
            offload(holder["model"], holder["optimizer"], settings, device)
        record["model"] = model_summary(holder["model"], config)
        return record

    report["phases"]["build"] = guarded("build", budget, 5 if settings.tiny else 60, device, build)
    _print_record("build", report["phases"]["build"])
    save()
    if "model" not in holder:
        return
    # The log-prob pass first: it is what issue 10's failure 8 asks about, and it needs no optimizer state.
    with attention_backends(device):  # around backward too: checkpointed layers recompute their forward there
        run_logprob_phase(holder["model"], settings, device, budget, report, save)
        run_train_phase(holder["model"], holder["optimizer"], holder["scaler"], settings, device, budget, report,
                        save)


if __name__ == "__main__":
    # verl trains with expandable segments (engine_workers.py: set_expandable_segments(True) after each sync)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    sys.exit(main())
