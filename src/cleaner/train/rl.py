"""Embedded GRPO/DAPO trainer with CLEANER's self-purified rollouts (CLEANER.md, "Training recipe").

One step: sample ``batch_prompts`` prompts, roll out ``n`` trajectories each through :mod:`cleaner.agent`
(multi-turn, real sandbox, SAAR when the experiment enables it), score them with :mod:`cleaner.rewards` (+ DAPO's
overlong penalty), compute GRPO group-normalised advantages, RECOMPUTE old log-probs on the final (purified)
sequences, and update the policy with the PPO clipped loss with DAPO clip-higher and dual-clip, token-mean
aggregation, no KL, tool tokens masked out. Advantages and the policy loss are verl's own
``core_algos.compute_grpo_outcome_advantage`` and ``compute_policy_loss_vanilla`` with verl's ``ActorConfig``,
so this engine optimises the same objective as the paper-scale verl runs (tests check it).

Options: DAPO dynamic sampling (drop zero-variance groups, resample up to ``max_sampling_rounds``), and two peer
methods as ablations: rStar2-Agent's Resample-on-Correct (oversample, keep the correct rollouts with the fewest
tool errors and a uniform sample of the incorrect ones) and SimpleTIR's void-turn filter (trajectories with an
assistant turn that has neither a tool call nor a final answer are excluded from the loss).

A step reads top to bottom in ``_train_loop``: :func:`rollout_and_score` -> :func:`build_update_batch` (loss mask,
advantages) -> :func:`rl_update` (module-level, over an explicit :class:`TrainState`; tested alone) -> log.
Checkpoints every ``checkpoint_every`` steps (model, optimiser, step) and resumes from the newest one; metrics
per step to ``metrics.jsonl`` (among them ``grad_norm`` before clipping, ``zero_adv_group_frac`` -- the groups
that give no gradient -- and ``optimizer_updates``); a progress bar shows step, reward, accuracy and tool failures.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cleaner.agent import AgentConfig, Trajectory, filter_long_prompts, run_agent
from cleaner.chat import ChatFormat
from cleaner.data.schema import write_json_atomic
from cleaner.train.common import (
    MetricsLog,
    latest_checkpoint,
    load_checkpoint,
    lr_at,
    save_checkpoint,
    save_hf_model,
)

__all__ = [
    "PeersConfig",
    "RLConfig",
    "Sample",
    "TrainState",
    "UpdateBatch",
    "build_update_batch",
    "grpo_advantages",
    "group_mini_batches",
    "policy_loss",
    "recompute_old_logprobs",
    "rl_update",
    "rollout_and_score",
    "train_rl",
    "zero_advantage_group_fraction",
]


@dataclass(frozen=True)
class RLConfig:
    """The paper's recipe knobs (config section ``rl``; defaults and comments in the schema)."""

    steps: int = 235
    lr: float = 2e-6
    warmup_steps: int = 20
    lr_schedule: str = "constant"
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    batch_prompts: int = 128
    n: int = 16
    mini_batch_prompts: int = 32
    micro_batch_tokens: int = 16384
    ppo_epochs: int = 1
    adv_estimator: str = "grpo"
    norm_adv_by_std: bool = True
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.28
    clip_ratio_c: float = 10.0
    loss_agg_mode: str = "token-mean"
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    overlong_penalty: bool = True
    overlong_buffer: int = 4096
    overlong_penalty_factor: float = 1.0
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 3
    reward_math_mode: str = "strict"
    rollout_is_correction: bool = False
    checkpoint_every: int = 10
    val_every: int = 0
    val_k: int = 1
    seed_offset: int = 0
    precision: str = "fp32"

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "RLConfig":
        d = dict(d or {})
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"rl: unknown field(s) {unknown}")
        cfg = cls(**d)
        if cfg.mini_batch_prompts > cfg.batch_prompts or cfg.batch_prompts % cfg.mini_batch_prompts:
            raise ValueError("rl.mini_batch_prompts must divide rl.batch_prompts")
        if cfg.kl_coef != 0:
            raise ValueError("rl.kl_coef: the embedded trainer implements the paper's no-KL recipe only (set 0)")
        if cfg.precision != "fp32":
            raise ValueError("rl.precision: the embedded CPU trainer runs fp32 (fp16/bf16 are verl-engine settings)")
        if cfg.rollout_is_correction:
            raise ValueError("rl.rollout_is_correction: the embedded trainer recomputes old log-probs (set false)")
        return cfg


@dataclass(frozen=True)
class PeersConfig:
    resample_on_correct: bool = False
    roc_oversample: float = 2.0
    void_turn_filter: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "PeersConfig":
        return cls(**dict(d or {}))


# ------------------------------------------------------------------------------------------ objective
def _actor_config(cfg: RLConfig, n_traj: int):
    from verl.workers.config import ActorConfig

    return ActorConfig(
        strategy="fsdp", clip_ratio_low=cfg.clip_ratio_low, clip_ratio_high=cfg.clip_ratio_high,
        clip_ratio_c=cfg.clip_ratio_c, loss_agg_mode=cfg.loss_agg_mode, ppo_mini_batch_size=max(1, n_traj // cfg.n),
        ppo_micro_batch_size_per_gpu=1, use_dynamic_bsz=False, rollout_n=cfg.n, entropy_coeff=cfg.entropy_coef,
    )


def grpo_advantages(scores: Sequence[float], response_mask: torch.Tensor, group_ids: Sequence[Any], *,
                    norm_by_std: bool = True) -> torch.Tensor:
    """Token-level advantages via verl's ``compute_grpo_outcome_advantage`` (reward on the last response token)."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    rewards = torch.zeros_like(response_mask, dtype=torch.float32)
    lengths = response_mask.shape[1] - 1 - torch.flip(response_mask, dims=[1]).float().argmax(dim=1)
    has_tokens = response_mask.sum(dim=1) > 0
    for i, s in enumerate(scores):
        if has_tokens[i]:
            rewards[i, lengths[i]] = float(s)
    adv, _ = compute_grpo_outcome_advantage(
        token_level_rewards=rewards, response_mask=response_mask.float(), index=np.array(group_ids, dtype=object),
        norm_adv_by_std_in_grpo=norm_by_std,
    )
    return adv


def policy_loss(old_logp: torch.Tensor, logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, actor_cfg,
                *, batch_num_tokens: int, global_batch_size: int) -> tuple[torch.Tensor, dict[str, float]]:
    """verl's clipped PPO loss (clip-higher, dual-clip) with token-mean over the whole mini-batch."""
    from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla

    actor_cfg.global_batch_info.clear()
    actor_cfg.global_batch_info.update(
        {"dp_size": 1, "batch_num_tokens": batch_num_tokens, "global_batch_size": global_batch_size}
    )
    return compute_policy_loss_vanilla(old_logp, logp, adv, mask.float(), loss_agg_mode=actor_cfg.loss_agg_mode,
                                       config=actor_cfg)


def _pad(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    return out


def length_buckets(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices sorted by length, cut into buckets whose padded size (rows x longest) stays within ``budget``
    tokens (a sequence longer than the budget gets a bucket of its own)."""
    buckets: list[list[int]] = []
    cur: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if cur and (len(cur) + 1) * lengths[i] > budget:
            buckets.append(cur)
            cur = []
        cur.append(i)
    if cur:
        buckets.append(cur)
    return buckets


def sequence_logprobs(model: Any, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int,
                      *, with_entropy: bool = False, bucket_tokens: int = 4096
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropies) of the response tokens, right-padded to the longest response: [B, R].

    Sequences of similar length share a right-padded batch (``length_buckets``): with padding only at the end, the
    plain causal mask is exact (no real token attends to padding), so attention runs as the fused causal kernel on
    each sequence's own length instead of a masked square over a packed row (3-4x less attention work and no
    [rows, width, width] mask at testbed lengths).
    """
    full = [list(p) + list(r) for p, r in zip(prompts, responses)]
    r_len = max(len(r) for r in responses)
    B = len(full)
    picked_all, ent_all, out_rows, out_cols = [], [], [], []
    for bucket in length_buckets([len(f) for f in full], bucket_tokens):
        width = max(len(full[i]) for i in bucket)
        ids = torch.full((len(bucket), width), pad_id, dtype=torch.long)
        for k, i in enumerate(bucket):
            ids[k, : len(full[i])] = torch.tensor(full[i], dtype=torch.long)
        logits = model(input_ids=ids).logits.float()
        rows, cols, tgt = [], [], []
        for k, i in enumerate(bucket):
            n, start = len(responses[i]), len(prompts[i]) - 1
            rows += [k] * n
            cols += list(range(start, start + n))
            tgt += list(responses[i])
            out_rows += [i] * n
            out_cols += list(range(n))
        if not rows:
            continue
        lp = torch.log_softmax(logits[torch.tensor(rows), torch.tensor(cols)], dim=-1)
        picked_all.append(lp.gather(1, torch.tensor(tgt)[:, None])[:, 0])
        if with_entropy:
            ent_all.append(-(lp.exp() * lp).sum(-1).detach())
    out = torch.zeros((B, r_len), dtype=torch.float32)
    ent = torch.zeros((B, r_len), dtype=torch.float32) if with_entropy else None
    if picked_all:
        where = (torch.tensor(out_rows), torch.tensor(out_cols))
        out = out.index_put(where, torch.cat(picked_all))
        if ent is not None:
            ent[where] = torch.cat(ent_all)
    return out, ent


def _micro_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Group trajectory indices into micro-batches of at most ``budget`` tokens (packed, so lengths add up)."""
    batches: list[list[int]] = []
    cur: list[int] = []
    total = 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if cur and total + lengths[i] > budget:
            batches.append(cur)
            cur, total = [], 0
        cur.append(i)
        total += lengths[i]
    if cur:
        batches.append(cur)
    return batches


# ------------------------------------------------------------------------------------------ peers
def has_void_turn(traj: Trajectory, fmt: ChatFormat) -> bool:
    """SimpleTIR: an assistant turn with neither a (complete) tool call nor a final answer."""
    from cleaner.protocol import parse_assistant

    segs: list[list[int]] = []
    cur: list[int] = []
    for t, m in zip(traj.response_ids, traj.response_mask):
        if m:
            cur.append(t)
        elif cur:
            segs.append(cur)
            cur = []
    if cur:
        segs.append(cur)
    for seg in segs:
        turn = parse_assistant(fmt.decode(seg))
        if turn.call is None and turn.answer is None:
            return True
    return False


def resample_on_correct(group: list[tuple[Trajectory, float, bool]], n: int, rng: random.Random) -> list[int]:
    """rStar2-Agent GRPO-RoC: from an oversampled group keep n: correct ones with the fewest tool errors
    (ties broken at random), incorrect ones uniformly, in the proportion they were sampled."""
    idx = list(range(len(group)))
    pos = [i for i in idx if group[i][2]]
    neg = [i for i in idx if not group[i][2]]
    n_pos = round(n * len(pos) / len(group))
    n_neg = n - n_pos
    if n_neg > len(neg):
        n_neg, n_pos = len(neg), n - len(neg)
    if n_pos > len(pos):
        n_pos, n_neg = len(pos), n - len(pos)
    rng.shuffle(pos)
    pos.sort(key=lambda i: group[i][0].stats["tool_failures_after"] + group[i][0].stats["malformed_calls"])
    return sorted(pos[:n_pos] + rng.sample(neg, n_neg))


# ------------------------------------------------------------------------------------------ rollout and scoring
@dataclass
class Sample:
    """One scored trajectory of a group (the rollouts of one prompt)."""

    traj: Trajectory
    group: str
    score: float
    acc: bool
    reward: float
    in_loss: bool = True


def _score(row: dict[str, Any], traj: Trajectory, cfg: RLConfig, max_response: int) -> tuple[float, bool, float]:
    from cleaner.rewards import compute_score, overlong_penalty

    res = compute_score(row["data_source"], traj.response_text, row["reward_model"]["ground_truth"],
                        row.get("extra_info"), math_mode=cfg.reward_math_mode)
    score = float(res["score"])
    reward = score
    if cfg.overlong_penalty and cfg.overlong_buffer > 0:
        reward += overlong_penalty(len(traj.response_ids), max_response_length=max_response,
                                   overlong_buffer_len=min(cfg.overlong_buffer, max_response),
                                   penalty_factor=cfg.overlong_penalty_factor)
    return score, bool(res["acc"]), reward


async def _rollout_round(gen, box, fmt, rows, idxs, n_per, agent: AgentConfig, seed_base: int) -> list[list[Trajectory]]:
    async def group(k: int, i: int) -> list[Trajectory]:
        return list(await asyncio.gather(*(
            run_agent(gen, box, fmt, rows[i]["prompt"], agent, seed=seed_base + k * 10_007 + j) for j in range(n_per)
        )))

    return list(await asyncio.gather(*(group(k, i) for k, i in enumerate(idxs))))


@dataclass
class RolloutContext:
    """What a rollout step needs besides the step number: engine, sandbox, prompts and the run's settings."""

    gen: Any
    box: Any
    fmt: ChatFormat
    rows: list[dict[str, Any]]
    rl: RLConfig
    agent: AgentConfig
    peers: PeersConfig
    seed: int


@dataclass
class StepRollouts:
    all_samples: list[Sample]  # every scored trajectory (metrics)
    kept: list[Sample]  # the ones the update trains on
    rounds: int
    rollout_s: float


async def rollout_and_score(ctx: RolloutContext, step: int) -> StepRollouts:
    """Sample ``batch_prompts`` prompts (seeded by run seed and step), roll out and score their groups.

    DAPO dynamic sampling drops one-reward groups and resamples up to ``max_sampling_rounds``; Resample-on-Correct
    oversamples and keeps ``n`` per group; the void-turn filter marks trajectories out of the loss.
    """
    rl, peers = ctx.rl, ctx.peers
    rng = random.Random(f"rl:{ctx.seed}:{rl.seed_offset}:{step}")
    kept: list[Sample] = []
    all_samples: list[Sample] = []
    rounds = 0
    n_per = max(rl.n, math.ceil(rl.n * peers.roc_oversample)) if peers.resample_on_correct else rl.n
    t_roll = time.perf_counter()
    while rounds < (rl.max_sampling_rounds if rl.dynamic_sampling else 1):
        need = rl.batch_prompts - len({s.group for s in kept})
        if need <= 0:
            break
        idxs = [rng.randrange(len(ctx.rows)) for _ in range(need)]
        groups = await _rollout_round(ctx.gen, ctx.box, ctx.fmt, ctx.rows, idxs, n_per, ctx.agent,
                                      seed_base=(ctx.seed * 7_919 + step * 104_729 + rounds * 1_299_709) % (2**40))
        for k, (i, trajs) in enumerate(zip(idxs, groups)):
            gid = f"{step}:{rounds}:{k}"
            scored = [(t, *_score(ctx.rows[i], t, rl, ctx.agent.max_response_tokens)) for t in trajs]
            samples = [Sample(t, gid, s, a, r) for t, s, a, r in scored]
            if peers.resample_on_correct:
                keep = resample_on_correct([(s.traj, s.score, s.acc) for s in samples], rl.n, rng)
                samples = [samples[j] for j in keep]
            all_samples.extend(samples)
            if rl.dynamic_sampling and len({s.reward for s in samples}) == 1:
                continue  # DAPO: a group with one reward value has zero advantage
            kept.extend(samples)
        rounds += 1
    rollout_s = time.perf_counter() - t_roll
    if rl.dynamic_sampling:
        groups_kept = set(list(dict.fromkeys(s.group for s in kept))[: rl.batch_prompts])
        kept = [s for s in kept if s.group in groups_kept]
    if peers.void_turn_filter:
        for s in kept:
            s.in_loss = not has_void_turn(s.traj, ctx.fmt)
    return StepRollouts(all_samples, kept, rounds, rollout_s)


# ------------------------------------------------------------------------------------------ update
@dataclass
class UpdateBatch:
    """The tensors one RL update consumes, one row per trajectory (right-padded to the longest response).

    ``mask`` is the loss mask: 1 on model tokens, 0 on tool-response tokens, padding, and whole rows excluded from
    the loss (void-turn filter). ``advantages`` is GRPO's group-normalised outcome advantage on every masked-in
    token of a row (0 elsewhere).
    """

    prompts: list[list[int]]
    responses: list[list[int]]  # the final (purified) response ids; [pad] for an empty response
    mask: torch.Tensor  # [B, R] long
    advantages: torch.Tensor  # [B, R] float
    groups: list[str]  # group id per row
    spliced: torch.Tensor  # [B] bool: SAAR replaced a turn of this trajectory
    in_loss: list[bool]  # False: excluded from the loss (its mask row is 0)

    @property
    def lengths(self) -> list[int]:
        return [len(p) + len(r) for p, r in zip(self.prompts, self.responses)]


def build_update_batch(samples: Sequence[Sample], *, pad_id: int, norm_adv_by_std: bool = True) -> UpdateBatch:
    """Loss mask and GRPO advantages of the scored samples (rewards include the overlong penalty)."""
    prompts = [list(s.traj.prompt_ids) for s in samples]
    responses = [list(s.traj.response_ids) if s.traj.response_ids else [pad_id] for s in samples]
    mask = _pad([s.traj.response_mask if s.traj.response_ids else [0] for s in samples], 0)
    for i, s in enumerate(samples):
        if not s.in_loss:
            mask[i] = 0
    groups = [s.group for s in samples]
    adv = grpo_advantages([s.reward for s in samples], mask, groups, norm_by_std=norm_adv_by_std)
    spliced = torch.tensor([bool(s.traj.stats.get("spliced")) for s in samples])
    return UpdateBatch(prompts, responses, mask, adv, groups, spliced, [s.in_loss for s in samples])


def zero_advantage_group_fraction(batch: UpdateBatch, *, atol: float = 1e-6) -> float:
    """Fraction of groups whose advantages are zero on every token: they contribute nothing to the gradient
    (all rollouts of the prompt got the same reward, or none of its tokens is in the loss)."""
    zero: dict[str, bool] = {}
    for i, g in enumerate(batch.groups):
        zero[g] = zero.get(g, True) and bool(batch.advantages[i].abs().max() <= atol)
    return sum(zero.values()) / max(len(zero), 1)


def group_mini_batches(groups: Sequence[str], groups_per_mini: int, rng: random.Random) -> list[list[int]]:
    """Row indices of each PPO mini-batch: whole groups (verl splits by prompt; a group's advantages are relative
    to each other), ``groups_per_mini`` per mini-batch, group order shuffled by ``rng``, rows in batch order."""
    order = list(dict.fromkeys(groups))
    rng.shuffle(order)
    out = []
    for g0 in range(0, len(order), groups_per_mini):
        members = set(order[g0 : g0 + groups_per_mini])
        out.append([i for i, g in enumerate(groups) if g in members])
    return out


def recompute_old_logprobs(model: Any, batch: UpdateBatch, *, pad_id: int, micro_batch_tokens: int) -> torch.Tensor:
    """Log-probs of the final (purified) responses under the current policy, before any update: the "old" policy
    of the PPO ratio (CLEANER.md step 6; the rollout's own log-probs belong to contexts SAAR deleted)."""
    old = torch.zeros_like(batch.advantages)
    with torch.no_grad():
        for mb in _micro_batches(batch.lengths, micro_batch_tokens):
            lp, _ = sequence_logprobs(model, [batch.prompts[i] for i in mb], [batch.responses[i] for i in mb], pad_id)
            old[mb, : lp.shape[1]] = lp
    return old


@dataclass
class TrainState:
    """What a checkpoint restores: the policy, its optimiser, the step count and the wall time spent so far."""

    model: Any
    opt: torch.optim.Optimizer
    step: int = 0  # completed RL steps
    elapsed_s: float = 0.0

    def checkpoint(self, rl: RLConfig) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "step": self.step,
                "elapsed_s": self.elapsed_s, "config": asdict(rl)}

    def restore(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["optimizer"])
        self.step, self.elapsed_s = saved["step"], saved["elapsed_s"]


def rl_update(state: TrainState, batch: UpdateBatch, rl: RLConfig, actor_cfg: Any, *, pad_id: int,
              seed: int) -> dict[str, Any]:
    """One RL step's policy update: ``ppo_epochs`` passes over group-aligned mini-batches, one optimiser step each.

    Loss: verl's clipped PPO loss (clip-higher, dual-clip), token-mean over each mini-batch's masked-in tokens,
    accumulated over packed micro-batches of at most ``micro_batch_tokens``; gradient clipped at ``grad_clip``
    (``grad_norm`` is the norm before clipping). Returns the means of the per-update statistics, the number of
    optimiser updates, the mean log-prob of the trained tokens of spliced vs unspliced trajectories, and
    ``updates`` (one dict per optimiser update).
    """
    t0 = time.perf_counter()
    model, opt, step = state.model, state.opt, state.step
    mask, adv, lengths = batch.mask, batch.advantages, batch.lengths
    groups = list(dict.fromkeys(batch.groups))
    per_mini = max(1, len(groups) * rl.mini_batch_prompts // rl.batch_prompts)
    lr = lr_at(step, base_lr=rl.lr, warmup_steps=rl.warmup_steps, total_steps=rl.steps, schedule=rl.lr_schedule)
    # Old log-probs are recomputed on the final (purified) sequences (CLEANER.md step 6). When the step makes a
    # single optimiser update (one epoch, one mini-batch) the policy has not moved yet, so the training
    # forward pass gives exactly those values (ratio 1) and a separate no-grad pass would be redundant.
    single_update = rl.ppo_epochs == 1 and per_mini >= len(groups)
    if single_update:
        old = torch.zeros_like(adv)
    else:
        old = recompute_old_logprobs(model, batch, pad_id=pad_id, micro_batch_tokens=rl.micro_batch_tokens)
    model.train()
    stats: dict[str, list[float]] = {"pg_loss": [], "clipfrac": [], "clipfrac_lower": [], "ppo_kl": [],
                                     "grad_norm": [], "entropy": []}
    updates: list[dict[str, float]] = []
    for _ in range(rl.ppo_epochs):
        for idx in group_mini_batches(batch.groups, per_mini, random.Random(f"mb:{seed}:{step}")):
            n_tok = int(mask[idx].sum())
            if n_tok == 0:
                continue
            for gparam in opt.param_groups:
                gparam["lr"] = lr
            opt.zero_grad(set_to_none=True)
            ent_sum, ent_n = 0.0, 0
            first_micro = len(stats["pg_loss"])
            for mb_local in _micro_batches([lengths[i] for i in idx], rl.micro_batch_tokens):
                mb = [idx[j] for j in mb_local]
                lp, ent = sequence_logprobs(model, [batch.prompts[i] for i in mb], [batch.responses[i] for i in mb],
                                            pad_id, with_entropy=True)
                w = lp.shape[1]
                if single_update:
                    old[mb, :w] = lp.detach()
                loss, pm = policy_loss(old[mb, :w], lp, adv[mb, :w], mask[mb, :w], actor_cfg,
                                       batch_num_tokens=n_tok, global_batch_size=len(idx))
                if rl.entropy_coef:
                    ent_w = (ent * mask[mb, :w]).sum() / n_tok
                    loss = loss - rl.entropy_coef * ent_w
                loss.backward()
                stats["pg_loss"].append(loss.item())
                stats["clipfrac"].append(pm["actor/pg_clipfrac"])
                stats["clipfrac_lower"].append(pm["actor/pg_clipfrac_lower"])
                stats["ppo_kl"].append(pm["actor/ppo_kl"])
                ent_sum += float((ent * mask[mb, :w]).sum())
                ent_n += int(mask[mb, :w].sum())
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), rl.grad_clip)
            opt.step()
            stats["grad_norm"].append(float(grad_norm))
            stats["entropy"].append(ent_sum / max(ent_n, 1))
            updates.append({"rows": len(idx), "tokens": n_tok, "grad_norm": float(grad_norm),
                            "ppo_kl": _mean(stats["ppo_kl"][first_micro:]),
                            "clipfrac": _mean(stats["clipfrac"][first_micro:])})
    model.eval()
    # How far from the policy the trained tokens are: spliced (purified) turns were sampled in a context
    # that no longer exists, so their recomputed log-probs show how off-policy SAAR makes the batch.
    logp_stats = {}
    for name, sel in (("logp_spliced", batch.spliced), ("logp_unspliced", ~batch.spliced)):
        m = mask[sel].float()
        logp_stats[name] = float((old[sel] * m).sum() / m.sum()) if m.sum() > 0 else None
    out: dict[str, Any] = {k: _mean(v) for k, v in stats.items()}
    out.update({"updated": True, "update_s": time.perf_counter() - t0, "lr": lr,
                "trained_trajectories": sum(batch.in_loss),
                "optimizer_updates": len(updates), **logp_stats})
    out["updates"] = updates
    return out


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


# ------------------------------------------------------------------------------------------ trainer
async def validate(gen: Any, box: Any, fmt: ChatFormat, rows: list[dict[str, Any]], agent: AgentConfig, *,
                   k: int) -> dict[str, Any]:
    """Validation metrics (``val/...``) with the same sampling seeds at every call, so arms' curves are paired."""
    from cleaner.evaluate import evaluate_rows

    gen.model.eval()
    t0 = time.perf_counter()
    summary, _ = await evaluate_rows(gen, box, fmt, rows, agent, k=k, seed=10_007)
    return {"val/pass@1": summary["pass@1"], "val/tool_failures": summary["tool_failures_per_trajectory"],
            "val/first_call_failure_rate": summary["first_call_failure_rate"],
            "val/response_length": summary["response_length"], "val_s": time.perf_counter() - t0}


def train_rl(
    model_dir: str | Path,
    train_path: str | Path,
    out_dir: str | Path,
    *,
    rl: RLConfig,
    agent: AgentConfig,
    peers: PeersConfig = PeersConfig(),
    seed: int = 0,
    val_path: str | Path | None = None,
    val_agent: AgentConfig | None = None,
    sandbox_workers: int = 2,
    sandbox_config: Any = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) RL from ``model_dir`` on the prompts in ``train_path``; writes ``out_dir/final``.

    ``stop_after``: stop (with a checkpoint) after this many steps in this call -- for tests of resumption.
    ``val_path``: every ``rl.val_every`` steps (and before the first step) the policy is evaluated on these rows
    with ``val_agent`` (the test-time protocol: SAAR per ``eval.saar_at_test_time``), ``rl.val_k`` samples each,
    with the same sampling seeds every time, so the curves of different arms are paired; metrics ``val/pass@1``,
    ``val/tool_failures``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cleaner.data.schema import read_parquet_rows
    from cleaner.prompts import tool_schemas

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    fmt = ChatFormat(tok, tool_schemas())
    rows = _training_rows(train_path, fmt, agent)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=rl.lr, betas=(0.9, 0.999), weight_decay=rl.weight_decay)
    state = TrainState(model, opt)
    latest = latest_checkpoint(out / "checkpoints")
    if latest is not None:
        state.restore(load_checkpoint(latest))
        print(f"rl: resuming from checkpoint {latest} (step {state.step} of {rl.steps})", file=sys.stderr, flush=True)
    write_json_atomic(json.loads(json.dumps({"rl": asdict(rl), "agent": asdict(agent), "peers": asdict(peers),
                                             "seed": seed}, default=str)), out / "config.json")
    val_rows: list[dict[str, Any]] = []
    if val_path is not None and rl.val_every > 0:
        val_rows, _ = filter_long_prompts(read_parquet_rows(val_path), fmt, val_agent or agent)
    metrics = MetricsLog(out / "metrics.jsonl", resume_step=state.step)
    try:
        asyncio.run(_train_loop(state, out, rows, fmt, metrics, rl=rl, agent=agent, peers=peers, seed=seed, pad=pad,
                                val_rows=val_rows, val_agent=val_agent or agent, sandbox_workers=sandbox_workers,
                                sandbox_config=sandbox_config, progress=progress, stop_after=stop_after))
    finally:
        metrics.close()
    complete = state.step >= rl.steps
    if complete:
        save_hf_model(model, tok, out / "final")
    summary = {"steps": state.step, "elapsed_s": state.elapsed_s, "complete": complete,
               "model_dir": str(out / "final") if complete else None}
    write_json_atomic(summary, out / "summary.json")
    return summary


def _training_rows(train_path: str | Path, fmt: ChatFormat, agent: AgentConfig) -> list[dict[str, Any]]:
    from cleaner.data.schema import read_parquet_rows

    rows = read_parquet_rows(train_path)
    if not rows:
        raise ValueError(f"{train_path}: no training prompts")
    rows, dropped = filter_long_prompts(rows, fmt, agent)
    if dropped:
        print(f"rl: skipped {len(dropped)} prompts longer than max_prompt_tokens={agent.max_prompt_tokens}",
              file=sys.stderr)
    if not rows:
        raise ValueError(f"{train_path}: every prompt is longer than max_prompt_tokens={agent.max_prompt_tokens}")
    return rows


def rollout_generator(model: Any, *, pad_id: int, seed: int) -> Any:
    """The HF sampler of the embedded trainer: one batch per turn of the whole step (up to 256 requests), held
    open while trajectories return from their tool calls (``batch_settle_s``: batching does not change the
    samples, which are seeded per request)."""
    from cleaner.engines.hf import HFGenerator

    return HFGenerator(model, pad_token_id=pad_id, max_batch_size=256, seed=seed, batch_settle_s=0.03)


async def _train_loop(state: TrainState, out: Path, rows: list[dict[str, Any]], fmt: ChatFormat,
                      metrics: MetricsLog, *, rl: RLConfig, agent: AgentConfig, peers: PeersConfig, seed: int,
                      pad: int, val_rows: list[dict[str, Any]], val_agent: AgentConfig, sandbox_workers: int,
                      sandbox_config: Any, progress: bool, stop_after: int | None) -> None:
    """Steps until ``rl.steps`` (or ``stop_after`` in this call): rollout -> score -> update -> log -> checkpoint."""
    from tqdm import tqdm

    from cleaner.sandbox import Sandbox

    gen = rollout_generator(state.model, pad_id=pad, seed=seed)
    actor_cfg = _actor_config(rl, rl.batch_prompts * rl.n)
    done_this_call = 0
    async with Sandbox(workers=sandbox_workers, config=sandbox_config) as box:
        ctx = RolloutContext(gen, box, fmt, rows, rl, agent, peers, seed)
        bar = tqdm(total=rl.steps, initial=state.step, desc="rl", disable=not progress, dynamic_ncols=True)
        try:
            if state.step == 0 and val_rows:
                metrics.write({"step": 0, **await validate(gen, box, fmt, val_rows, val_agent, k=rl.val_k)})
            while state.step < rl.steps and (stop_after is None or done_this_call < stop_after):
                t0 = time.perf_counter()
                # 1) rollout and score (the policy in eval mode; SAAR purifies inside the agent loop)
                state.model.eval()
                rollouts = await rollout_and_score(ctx, state.step)
                # 2) update on the kept trajectories
                row = _step_metrics(rollouts.all_samples, rollouts.kept)
                if rollouts.kept:
                    batch = build_update_batch(rollouts.kept, pad_id=pad, norm_adv_by_std=rl.norm_adv_by_std)
                    update = rl_update(state, batch, rl, actor_cfg, pad_id=pad, seed=seed)
                    update.pop("updates")
                    row.update(update)
                    row["zero_adv_group_frac"] = zero_advantage_group_fraction(batch)
                else:
                    row["updated"] = False
                row.update({"rollout_s": rollouts.rollout_s, "sampling_rounds": rollouts.rounds})
                # 3) log (and validate, checkpoint)
                dt = time.perf_counter() - t0
                state.elapsed_s += dt
                state.step += 1
                done_this_call += 1
                row.update({"step": state.step, "step_time_s": dt, "elapsed_s": state.elapsed_s})
                if val_rows and (state.step % rl.val_every == 0 or state.step == rl.steps):
                    row.update(await validate(gen, box, fmt, val_rows, val_agent, k=rl.val_k))
                metrics.write(row)
                bar.update(1)
                bar.set_postfix(reward=f"{row['reward']:.2f}", acc=f"{row['acc']:.2f}",
                                fail=f"{row['tool_failures_after']:.2f}")
                if state.step % rl.checkpoint_every == 0 or state.step == rl.steps:
                    save_checkpoint(out / "checkpoints", state.step, state.checkpoint(rl))
        finally:
            bar.close()
            await gen.aclose()


def _step_metrics(all_samples: list[Sample], kept: list[Sample]) -> dict[str, Any]:
    st = [s.traj.stats for s in all_samples]
    n = max(len(st), 1)
    m: dict[str, Any] = {
        "reward": _mean([s.reward for s in all_samples]),
        "score": _mean([s.score for s in all_samples]),
        "acc": _mean([float(s.acc) for s in all_samples]),
        "trajectories": len(all_samples),
        "kept_trajectories": len(kept),
        "response_length": _mean([s["response_length"] for s in st]),
        "generated_tokens": _mean([s["generated_tokens"] for s in st]),
        "turns": _mean([s["turns"] for s in st]),
        "tool_calls_before": sum(s["tool_calls_before"] for s in st) / n,
        "tool_calls_after": sum(s["tool_calls_after"] for s in st) / n,
        "tool_failures_before": sum(s["tool_failures_before"] for s in st) / n,
        "tool_failures_after": sum(s["tool_failures_after"] for s in st) / n,
        "first_attempt_failure_rate": (
            sum(s["first_attempt_failures"] for s in st) / max(1, sum(s["first_attempt_calls"] for s in st))
        ),
        "malformed_calls": sum(s["malformed_calls"] for s in st) / n,
        "finish_length": sum(s["finish_reason"] == "length" for s in st) / n,
    }
    for k in ("triggered", "recovered", "failed", "shallow", "deep", "retries"):
        m[f"saar_{k}"] = sum(s[k] for s in st) / n
    return m
