"""Time of one embedded RL step: rollout (agent loop + HF sampling + sandbox) and update (log-probs + backward).

Runs the testbed recipe's step (``rl.batch_prompts`` prompts x ``rl.n`` rollouts from the config, default
8 x 8) on a model directory, with this checkout's code (``new``) and, for comparison in the same process and on
the same prompts and seeds, with the engine and update code of an earlier commit (``old``, read with
``git show REF:path``, so nothing old stays in the package). Each implementation runs ``--repeats`` steps, in
alternation, from the same weights (the update's weights are restored after each step); reported: rollout s,
update s, generated tokens/s, trained tokens/s, the old/new ratios, and whether both produced the same
trajectories and the same updated weights (they must: the speed-ups keep the numerics). Usage::

    PYTHONPATH=src python benchmarks/bench_rl_step.py --model results/testbed/sft/final \\
        --data results/testbed/data/train.parquet --threads 2 --repeats 2
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OLD_FILES = {"hf": "src/cleaner/engines/hf.py", "rl": "src/cleaner/train/rl.py", "packing": "src/cleaner/train/packing.py"}


def _old_modules(ref: str) -> dict:
    """Import the engine, trainer and packing modules of commit ``ref`` under private names."""
    tmp = Path(tempfile.mkdtemp(prefix="bench_old_"))
    mods = {}
    for key, path in OLD_FILES.items():
        src = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True)
        file = tmp / f"old_{key}.py"
        file.write_text(src.stdout)
        spec = importlib.util.spec_from_file_location(f"_bench_old_{key}", file)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        mods[key] = mod
    return mods


def _weights_hash(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(v.detach().numpy().tobytes())
    return h.hexdigest()[:16]


def _step(impl: str, model, fmt, rows, rl_mod, gen_cls, args, cfg, step: int) -> dict:
    from cleaner.commands import _agent_config
    from cleaner.sandbox import Sandbox
    from cleaner.train import rl as new_rl

    rl = new_rl.RLConfig.from_dict(cfg["rl"])
    agent = _agent_config(cfg["rollout"], cfg["saar"])
    pad = fmt.tokenizer.pad_token_id if fmt.tokenizer.pad_token_id is not None else fmt.tokenizer.eos_token_id
    saved = copy.deepcopy(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=rl.lr, weight_decay=rl.weight_decay)
    gen = new_rl.rollout_generator(model, pad_id=pad, seed=0) if impl == "new" else gen_cls(
        model, pad_token_id=pad, max_batch_size=256, seed=0)

    async def rollout():
        async with Sandbox(workers=2, config=None) as box:
            ctx = new_rl.RolloutContext(gen, box, fmt, rows, rl, agent, new_rl.PeersConfig(), 0)
            try:
                await asyncio.sleep(0.2)  # the fork servers start before the clock does
                return await new_rl.rollout_and_score(ctx, step)
            finally:
                await gen.aclose()

    model.eval()
    ro = asyncio.run(rollout())
    batch = new_rl.build_update_batch(ro.kept, pad_id=pad, norm_adv_by_std=rl.norm_adv_by_std)
    state = new_rl.TrainState(model, opt, step=step)
    actor_cfg = new_rl._actor_config(rl, rl.batch_prompts * rl.n)  # imports verl: outside the clock
    t0 = time.perf_counter()
    if impl == "old":
        # The old trainer's update was a closure; its arithmetic is the new rl_update's (bit-identical, checked
        # on seeded runs), so "old" is the new update with the old log-prob function (packed rows).
        with _patched(new_rl, rl_mod):
            new_rl.rl_update(state, batch, rl, actor_cfg, pad_id=pad, seed=0)
    else:
        new_rl.rl_update(state, batch, rl, actor_cfg, pad_id=pad, seed=0)
    update_s = time.perf_counter() - t0
    after = _weights_hash(model)
    model.load_state_dict(saved)
    gen_tokens = sum(s.traj.stats["generated_tokens"] for s in ro.all_samples)
    trained = int(sum(len(p) + len(r) for p, r in zip(batch.prompts, batch.responses)))
    traj_hash = hashlib.sha256(json.dumps([s.traj.response_ids for s in ro.all_samples]).encode()).hexdigest()[:16]
    return {"impl": impl, "rollout_s": ro.rollout_s, "update_s": update_s, "generated_tokens": gen_tokens,
            "gen_tok_per_s": gen_tokens / ro.rollout_s, "trained_tokens": trained,
            "train_tok_per_s": trained / update_s, "trajectories": traj_hash, "weights_after": after,
            "mean_response_tokens": sum(len(s.traj.response_ids) for s in ro.all_samples) / len(ro.all_samples)}


class _patched:
    """Swap the new trainer's log-prob function for the old one for the duration of a ``with`` block."""

    def __init__(self, new_rl, old_rl):
        self.new_rl, self.old_rl = new_rl, old_rl

    def __enter__(self):
        self.saved = self.new_rl.sequence_logprobs
        self.new_rl.sequence_logprobs = self.old_rl.sequence_logprobs

    def __exit__(self, *exc):
        self.new_rl.sequence_logprobs = self.saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF model directory (e.g. results/testbed/sft/final)")
    ap.add_argument("--data", required=True, help="RL prompts parquet")
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--experiment", default="baseline")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="steps per implementation (step numbers 0..R-1)")
    ap.add_argument("--old-ref", default="5ec9e38", help="commit whose engine/update code is 'old'")
    ap.add_argument("--impl", choices=["both", "new", "old"], default="both")
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cleaner.agent import filter_long_prompts
    from cleaner.chat import ChatFormat
    from cleaner.config import load_config, resolve_experiment
    from cleaner.data.schema import read_parquet_rows
    from cleaner.engines.hf import HFGenerator
    from cleaner.prompts import tool_schemas

    cfg = resolve_experiment(load_config(args.config), args.experiment)
    tok = AutoTokenizer.from_pretrained(args.model)
    fmt = ChatFormat(tok, tool_schemas())
    from cleaner.commands import _agent_config

    rows, _ = filter_long_prompts(read_parquet_rows(args.data), fmt, _agent_config(cfg["rollout"], cfg["saar"]))
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    old = _old_modules(args.old_ref) if args.impl in ("both", "old") else None
    impls = {"new": (HFGenerator, None)}
    if old is not None:
        impls["old"] = (old["hf"].HFGenerator, old["rl"])
    order = [i for i in ("old", "new") if args.impl in (i, "both")]
    results = []
    for step in range(args.repeats):
        for impl in order:
            gen_cls, rl_mod = impls[impl]
            row = _step(impl, model, fmt, rows, rl_mod, gen_cls, args, cfg, step)
            row["step"] = step
            results.append(row)
            print(json.dumps(row), flush=True)
    summary = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
               "threads": args.threads, "batch": f"{cfg['rl']['batch_prompts']} x {cfg['rl']['n']}"}
    for impl in order:
        rs = [r for r in results if r["impl"] == impl]
        summary[impl] = {k: sum(r[k] for r in rs) / len(rs) for k in ("rollout_s", "update_s", "gen_tok_per_s",
                                                                     "train_tok_per_s")}
    if len(order) == 2:
        summary["speedup_rollout"] = summary["old"]["rollout_s"] / summary["new"]["rollout_s"]
        summary["speedup_update"] = summary["old"]["update_s"] / summary["new"]["update_s"]
        pairs = [(a, b) for a in results for b in results if a["impl"] == "old" and b["impl"] == "new"
                 and a["step"] == b["step"]]
        summary["same_trajectories"] = all(a["trajectories"] == b["trajectories"] for a, b in pairs)
        summary["same_weights_after_update"] = all(a["weights_after"] == b["weights_after"] for a, b in pairs)
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
