"""Sampling throughput of ``cleaner.engines.hf.HFGenerator`` (batched, KV cache, per-request seeds).

Either a checkpoint directory (``--model results/testbed/sft/final``) or a randomly initialised transformers
config of a real architecture (``--random qwen3-0.6b``: Qwen3-0.6B's shapes, no weights needed, no hub). Each
row samples ``batch`` requests of ``prompt_len`` random prompt tokens for exactly ``new_tokens`` tokens (no stop
token) and reports generated tokens/s. It also checks batch invariance of seeded sampling: request 0 sampled
alone and inside the largest batch must give the same tokens (exact in float32; in bf16 batched kernels may
round differently, which is reported, not hidden). Usage::

    python benchmarks/bench_hf_generator.py --model results/testbed/sft/final --batch 1,16,64
    python benchmarks/bench_hf_generator.py --random qwen3-0.6b --device cuda --dtype bfloat16 --batch 1,16,64,256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time

import torch

from cleaner.engines.base import SamplingParams
from cleaner.engines.hf import HFGenerator

RANDOM_CONFIGS = {
    # Qwen3-0.6B's published shapes (config.json of Qwen/Qwen3-0.6B), weights random.
    "qwen3-0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                       tie_word_embeddings=True, rope_theta=1000000.0),
    # Qwen3-4B's shapes (the paper's first model).
    "qwen3-4b": dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                     tie_word_embeddings=True, rope_theta=1000000.0),
}


def _load(args) -> HFGenerator:
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    if args.model:
        gen, _tok = HFGenerator.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                                max_batch_size=max(args.batch))
        return gen
    from transformers import AutoModelForCausalLM, Qwen3Config

    torch.manual_seed(0)
    cfg = Qwen3Config(**RANDOM_CONFIGS[args.random])
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.to(args.device).eval()
    return HFGenerator(model, pad_token_id=0, max_batch_size=max(args.batch))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="HF checkpoint directory")
    src.add_argument("--random", choices=sorted(RANDOM_CONFIGS), help="random weights in a real architecture")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--batch", default="1,16,64", help="comma-separated batch sizes")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats per batch size (best is reported)")
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args()
    args.batch = sorted({int(b) for b in args.batch.split(",")})

    gen = _load(args)
    vocab = gen.model.config.vocab_size
    n_params = sum(p.numel() for p in gen.model.parameters())
    rng = random.Random(0)
    prompts = [[rng.randrange(1, vocab) for _ in range(args.prompt_len)] for _ in range(max(args.batch))]
    params = [SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=args.new_tokens, seed=1000 + i)
              for i in range(max(args.batch))]
    gen.generate_batch(prompts[:2], params[:2])  # warm-up (kernels, allocator)

    rows = []
    print(f"model: {args.model or args.random} ({n_params / 1e6:.1f}M parameters), device {args.device}, "
          f"dtype {args.dtype}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{torch.cuda.get_device_name() if args.device.startswith('cuda') else platform.processor() or 'cpu'}")
    print("| batch | prompt tokens | new tokens | seconds | generated tokens/s |")
    print("|---:|---:|---:|---:|---:|")
    for b in args.batch:
        best = float("inf")
        for _ in range(args.repeats):
            _sync(args.device)
            t0 = time.perf_counter()
            outs = gen.generate_batch(prompts[:b], params[:b])
            _sync(args.device)
            best = min(best, time.perf_counter() - t0)
        toks = sum(len(o.token_ids) for o in outs)
        row = {"batch": b, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "seconds": round(best, 3),
               "tokens_per_s": round(toks / best, 1)}
        rows.append(row)
        print(f"| {b} | {args.prompt_len} | {args.new_tokens} | {best:.3f} | {toks / best:,.0f} |")

    alone = gen.generate_batch(prompts[:1], params[:1])[0].token_ids
    inside = gen.generate_batch(prompts[: max(args.batch)], params[: max(args.batch)])[0].token_ids
    same = sum(a == b for a, b in zip(alone, inside))
    first_diff = next((i for i, (a, b) in enumerate(zip(alone, inside)) if a != b), None)
    print(f"batch invariance of seeded sampling (request 0 alone vs in a batch of {max(args.batch)}): "
          f"{same}/{len(alone)} tokens equal" + ("" if first_diff is None else f", first difference at {first_diff}"))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"model": args.model or args.random, "parameters": n_params, "device": args.device,
                       "dtype": args.dtype, "rows": rows, "batch_invariant_tokens": [same, len(alone)],
                       "host": platform.node(), "cpus": os.cpu_count()}, f, indent=2)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
