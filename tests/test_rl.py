"""The embedded GRPO/DAPO trainer: same objective as verl, packing, peers, checkpoint/resume."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from cleaner.train.rl import (
    RLConfig,
    _actor_config,
    _micro_batches,
    grpo_advantages,
    policy_loss,
    resample_on_correct,
    sequence_logprobs,
)


def test_grpo_advantages_equal_verl_compute_advantage():
    from verl import DataProto
    from verl.trainer.ppo.core_algos import AdvantageEstimator
    from verl.trainer.ppo.ray_trainer import compute_advantage

    g = torch.Generator().manual_seed(0)
    B, L = 12, 9
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    mask[3, 2] = 0  # a tool token inside the response
    scores = [float(x) for x in torch.randint(-1, 2, (B,), generator=g)]
    uids = [f"p{i // 4}" for i in range(B)]
    ours = grpo_advantages(scores, mask, uids)

    rewards = torch.zeros(B, L)
    for i in range(B):
        rewards[i, int(lengths[i]) - 1] = scores[i]
    data = DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": mask.float()},
                               non_tensors={"uid": np.array(uids, dtype=object)})
    theirs = compute_advantage(data, adv_estimator=AdvantageEstimator.GRPO, norm_adv_by_std_in_grpo=True)
    assert torch.allclose(ours, theirs.batch["advantages"], atol=1e-6)
    # Group-normalised: zero mean per group on each sequence's (constant) advantage.
    for p in set(uids):
        idx = [i for i, u in enumerate(uids) if u == p]
        per_seq = torch.stack([ours[i, 0] for i in idx])
        assert abs(float(per_seq.mean())) < 1e-5


def _manual_dapo_loss(old, new, adv, mask, lo, hi, c):
    ratio = torch.exp(new - old)
    l1 = -adv * ratio
    l2 = -adv * torch.clamp(ratio, 1 - lo, 1 + hi)
    clipped = torch.maximum(l1, l2)
    dual = torch.minimum(-adv * c, clipped)
    loss = torch.where(adv < 0, dual, clipped)
    return (loss * mask).sum() / mask.sum()


def test_policy_loss_is_dapo_clip_higher_dual_clip_token_mean():
    g = torch.Generator().manual_seed(1)
    B, L = 6, 11
    old = -torch.rand(B, L, generator=g) * 3
    new = old + torch.randn(B, L, generator=g) * 2.0  # large ratios (> c = 10 too): every clip branch is hit
    adv = torch.randn(B, L, generator=g) * 2
    mask = (torch.rand(B, L, generator=g) > 0.2).float()
    cfg = RLConfig(batch_prompts=2, n=3, mini_batch_prompts=1)
    actor = _actor_config(cfg, B)
    loss, metrics = policy_loss(old, new, adv, mask, actor, batch_num_tokens=int(mask.sum()), global_batch_size=B)
    ref = _manual_dapo_loss(old, new, adv, mask, 0.2, 0.28, 10.0)
    assert torch.allclose(loss, ref, atol=1e-6)
    assert 0 < metrics["actor/pg_clipfrac"] < 1 and metrics["actor/pg_clipfrac_lower"] > 0


def test_micro_batch_losses_sum_to_the_mini_batch_token_mean():
    g = torch.Generator().manual_seed(2)
    B, L = 8, 7
    old = -torch.rand(B, L, generator=g)
    new = old + 0.1 * torch.randn(B, L, generator=g)
    adv = torch.randn(B, L, generator=g)
    mask = (torch.rand(B, L, generator=g) > 0.3).float()
    actor = _actor_config(RLConfig(batch_prompts=2, n=4, mini_batch_prompts=1), B)
    n_tok = int(mask.sum())
    whole, _ = policy_loss(old, new, adv, mask, actor, batch_num_tokens=n_tok, global_batch_size=B)
    parts = sum(policy_loss(old[s], new[s], adv[s], mask[s], actor, batch_num_tokens=n_tok, global_batch_size=B)[0]
                for s in (slice(0, 3), slice(3, 8)))
    assert torch.allclose(whole, parts, atol=1e-6)


def test_bucketed_logprobs_match_separate_forward_and_carry_gradients(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    responses = [[20, 21, 22], [23], [24, 25, 26, 27, 28]]
    lp, ent = sequence_logprobs(model, prompts, responses, 0, with_entropy=True, bucket_tokens=24)  # one padded batch
    for i, (p, r) in enumerate(zip(prompts, responses)):
        with torch.no_grad():
            full = model(torch.tensor([p + r])).logits[0].log_softmax(-1)
        ref = torch.tensor([full[len(p) - 1 + j, t] for j, t in enumerate(r)])
        assert torch.allclose(lp[i, : len(r)], ref, atol=1e-5)
        assert float(lp[i, len(r):].abs().sum()) == 0.0
        assert (ent[i, : len(r)] > 0).all()
    lp.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_length_buckets_bound_the_padded_size():
    from cleaner.train.rl import length_buckets

    lengths = [100, 40, 300, 20, 250, 90, 95]
    buckets = length_buckets(lengths, 400)
    assert sorted(i for b in buckets for i in b) == list(range(7))
    for b in buckets:
        assert len(b) * max(lengths[i] for i in b) <= 400 or len(b) == 1
    assert buckets[0] == [3, 1, 5, 6]  # shortest first: 4 x 95 <= 400


def test_micro_batches_respect_the_token_budget():
    lengths = [100, 40, 300, 20, 250, 90]
    batches = _micro_batches(lengths, 400)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert sum(lengths[i] for i in b) <= 400 or len(b) == 1


class _T:
    def __init__(self, failures):
        self.stats = {"tool_failures_after": failures, "malformed_calls": 0}


def test_resample_on_correct_keeps_cleanest_correct_and_proportion():
    group = [(_T(f), 1.0, True) for f in (2, 0, 1, 0)] + [(_T(0), -1.0, False) for _ in range(4)]
    keep = resample_on_correct(group, 4, random.Random(0))
    assert len(keep) == 4
    pos = [i for i in keep if group[i][2]]
    assert len(pos) == 2 and sorted(group[i][0].stats["tool_failures_after"] for i in pos) == [0, 0]


def test_rl_config_validation():
    with pytest.raises(ValueError, match="mini_batch_prompts"):
        RLConfig.from_dict({"batch_prompts": 4, "mini_batch_prompts": 3})
    with pytest.raises(ValueError, match="unknown"):
        RLConfig.from_dict({"learning_rate": 1})
    with pytest.raises(ValueError, match="kl_coef"):
        RLConfig.from_dict({"kl_coef": 0.1})


@pytest.mark.slow
def test_train_rl_runs_and_resumes_from_checkpoint(tiny_model_dir, tmp_path, capfd):
    from cleaner.agent import AgentConfig
    from cleaner.data.schema import write_rl_parquet
    from cleaner.saar import SaarConfig
    from cleaner.testbed.data import TestbedDataConfig, build_rl_row, generate_problems
    from cleaner.train.rl import train_rl

    probs = generate_problems(TestbedDataConfig(n_sft=1, n_rl_train=6, n_val=1, n_test=1))["rl_train"]
    train = tmp_path / "train.parquet"
    write_rl_parquet([build_rl_row(p, split="train", index=i) for i, p in enumerate(probs)], train)
    rl = RLConfig(steps=3, lr=1e-3, warmup_steps=0, batch_prompts=2, n=2, mini_batch_prompts=1,
                  overlong_buffer=32, checkpoint_every=1)
    agent = AgentConfig(max_turns=2, max_response_tokens=64, max_turn_tokens=32, tool_timeout_s=2.0,
                        tool_memory_mb=256, saar=SaarConfig(enabled=True))
    out = tmp_path / "rl"
    first = train_rl(tiny_model_dir, train, out, rl=rl, agent=agent, seed=0, progress=False, stop_after=2)
    assert first["steps"] == 2 and not first["complete"] and not (out / "final").exists()
    assert (out / "checkpoints" / "step_2" / "state.pt").exists()
    second = train_rl(tiny_model_dir, train, out, rl=rl, agent=agent, seed=0, progress=False)
    assert second["steps"] == 3 and second["complete"] and (out / "final" / "config.json").exists()
    assert "resuming from checkpoint" in capfd.readouterr().err
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("reward", "acc", "tool_failures_before", "tool_failures_after", "saar_triggered", "saar_shallow",
                "saar_deep", "entropy", "clipfrac", "step_time_s", "response_length"):
        assert key in row


def test_void_turn_filter_flags_turns_without_call_or_answer(chat_format):
    from cleaner.agent import Trajectory
    from cleaner.train.rl import has_void_turn

    def traj(*segments):
        ids, mask = [], []
        for text, m in segments:
            seg = chat_format.encode(text)
            ids += seg
            mask += [m] * len(seg)
        return Trajectory([], ids, mask, None, "", None, "answer", {})

    call = chat_format.assistant_text("Let me add.", "print(1 + 2)")
    tool = chat_format.tool_response_text("3")
    clean = traj((call, 1), (tool, 0), ("\\boxed{3}<|im_end|>", 1))
    void = traj(("I am not sure what to do.\n", 1), (tool, 0), ("\\boxed{3}<|im_end|>", 1))
    assert not has_void_turn(clean, chat_format)
    assert has_void_turn(void, chat_format)


# ------------------------------------------------------------------------------------------ the update function
def _traj(fmt, segments, *, spliced=False, rollout_logprobs=None):
    """A Trajectory from ("model", text) (mask 1) and ("tool", result text) (mask 0) segments."""
    from cleaner.agent import Trajectory

    ids, mask = [], []
    for kind, text in segments:
        seg = fmt.encode(text) if kind == "model" else fmt.tool_response_ids(text)
        ids += seg
        mask += [1 if kind == "model" else 0] * len(seg)
    prompt = fmt.prompt_ids([{"role": "user", "content": "What is 6*7?"}])
    return Trajectory(prompt, ids, mask, rollout_logprobs, fmt.decode(ids), None, "answer", {"spliced": spliced})


def _samples(fmt, rewards_by_group):
    """Two groups interleaved in batch order (a, b, a, b, ...), every trajectory with a tool response inside."""
    from cleaner.train.rl import Sample

    out = []
    for j in range(max(len(r) for r in rewards_by_group.values())):
        for g, rewards in rewards_by_group.items():
            if j < len(rewards):
                segs = [("model", fmt.assistant_text(f"Try {j}{g}.", f"print({j}*7)")),
                        ("tool", f"{j * 7}\n" * (j + 1)), ("model", f"\\boxed{{{j * 7}}}<|im_end|>")]
                out.append(Sample(_traj(fmt, segs), g, rewards[j], rewards[j] > 0, rewards[j]))
    return out


def _grpo_by_hand(rewards):
    t = torch.tensor(rewards)
    return ((t - t.mean()) / (t.std() + 1e-6)).tolist()


def test_update_batch_puts_each_groups_advantage_on_its_model_tokens_only(chat_format):
    from cleaner.train.rl import build_update_batch

    rewards = {"a": [1.0, -1.0, -1.0], "b": [0.5, 1.0, -1.0]}
    samples = _samples(chat_format, rewards)
    batch = build_update_batch(samples, pad_id=0)
    expected = {g: _grpo_by_hand(r) for g, r in rewards.items()}
    seen = {"a": 0, "b": 0}
    for i, s in enumerate(samples):
        n = len(s.traj.response_ids)
        m = torch.tensor(s.traj.response_mask)
        assert 0 in s.traj.response_mask  # a tool response inside the row
        assert torch.equal(batch.mask[i, :n], m) and int(batch.mask[i, n:].sum()) == 0
        want = expected[s.group][seen[s.group]]
        seen[s.group] += 1
        assert torch.allclose(batch.advantages[i, :n], want * m.float(), atol=1e-6)
        assert float(batch.advantages[i, n:].abs().sum()) == 0.0


def _sgd_update(model_dir, batch, rl, pad=0):
    from transformers import AutoModelForCausalLM

    from cleaner.train.rl import TrainState, rl_update

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = TrainState(model, torch.optim.SGD(model.parameters(), lr=rl.lr))
    out = rl_update(state, batch, rl, _actor_config(rl, len(batch.groups)), pad_id=pad, seed=0)
    delta = {k: v - before[k] for k, v in model.state_dict().items()}
    return out, delta, before


def _reference_gradient(model_dir, batch, state_dict):
    """Gradient of -sum_{model tokens} A_i log pi(token) / (model tokens): the PPO loss at ratio 1, by hand."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.load_state_dict(state_dict)
    total = batch.mask.sum()
    loss = 0.0
    for i, (p, r) in enumerate(zip(batch.prompts, batch.responses)):
        logp = model(torch.tensor([p + r])).logits[0].float().log_softmax(-1)
        tok_lp = logp[len(p) - 1 : len(p) - 1 + len(r)].gather(1, torch.tensor(r)[:, None])[:, 0]
        loss = loss - (batch.advantages[i, : len(r)] * batch.mask[i, : len(r)] * tok_lp).sum() / total
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}


def test_rl_update_gradient_is_the_advantage_weighted_logprob_gradient_of_model_tokens(tiny_model_dir, chat_format):
    """One SGD step with lr 1 moves the weights by minus the gradient of the on-policy objective computed by hand
    over model tokens only: fails if tool-response tokens enter the loss, or an advantage has the wrong sign or
    lands on another row or position (rows are sorted by length into several micro-batches and scattered back)."""
    from cleaner.train.rl import build_update_batch

    batch = build_update_batch(_samples(chat_format, {"a": [1.0, -1.0, -1.0], "b": [0.5, 1.0, -1.0]}), pad_id=0)
    rl = RLConfig(lr=1.0, warmup_steps=0, weight_decay=0.0, grad_clip=1e9, batch_prompts=2, n=3,
                  mini_batch_prompts=2, micro_batch_tokens=256)  # 3 micro-batches of 2 rows (~100 tokens each)
    out, delta, before = _sgd_update(tiny_model_dir, batch, rl)
    assert out["optimizer_updates"] == 1 and out["ppo_kl"] == 0.0 and out["clipfrac"] == 0.0
    ref = _reference_gradient(tiny_model_dir, batch, before)
    tied = {"lm_head.weight"} & set(delta) - set(ref)
    for name, grad in ref.items():
        assert torch.allclose(delta[name], -grad, atol=1e-6, rtol=1e-4), name
    assert not tied or torch.equal(delta["lm_head.weight"], delta["model.embed_tokens.weight"])


def test_tool_response_tokens_do_not_move_the_policy(tiny_model_dir, chat_format):
    """Changing only what a tool response says AFTER the last model token changes nothing in the update."""
    from cleaner.train.rl import Sample, build_update_batch

    def batch_with(tool_text):
        samples = []
        for j, r in enumerate([1.0, -1.0]):
            segs = [("model", chat_format.assistant_text(f"Try {j}.", f"print({j})")), ("tool", tool_text)]
            samples.append(Sample(_traj(chat_format, segs), "g", r, r > 0, r))
        return build_update_batch(samples, pad_id=0)

    rl = RLConfig(lr=1.0, warmup_steps=0, weight_decay=0.0, grad_clip=1e9, batch_prompts=1, n=2,
                  mini_batch_prompts=1)
    _, d1, _ = _sgd_update(tiny_model_dir, batch_with("0\n"), rl)
    _, d2, _ = _sgd_update(tiny_model_dir, batch_with("Traceback: NameError " * 3), rl)
    assert any(float(v.abs().sum()) > 0 for v in d1.values())
    for name in d1:
        assert torch.allclose(d1[name], d2[name], atol=1e-7), name


def test_old_logprobs_are_those_of_the_purified_sequence(tiny_model_dir, chat_format):
    """With several updates per step the old log-probs come from a no-grad pass over the final (purified)
    sequences, not from the rollout: the first update's ratio is exactly 1 (KL 0, nothing clipped) even though
    the rollout log-probs carried by the trajectories are far off."""
    from transformers import AutoModelForCausalLM

    from cleaner.train.rl import Sample, build_update_batch, recompute_old_logprobs

    samples = []
    for j, (g, r) in enumerate([("a", 1.0), ("a", -1.0), ("b", 1.0), ("b", -1.0)]):
        segs = [("model", chat_format.assistant_text(f"Fixed {j}.", f"print({j}*7)")), ("tool", f"{j * 7}\n"),
                ("model", f"\\boxed{{{j * 7}}}<|im_end|>")]
        traj = _traj(chat_format, segs, spliced=j % 2 == 0, rollout_logprobs=None)
        traj.rollout_logprobs = [-9.0] * len(traj.response_ids)  # stale: sampled in a context SAAR deleted
        samples.append(Sample(traj, g, r, r > 0, r))
    batch = build_update_batch(samples, pad_id=0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    old = recompute_old_logprobs(model, batch, pad_id=0, micro_batch_tokens=64)
    for i, s in enumerate(samples):
        ids = s.traj.prompt_ids + s.traj.response_ids
        with torch.no_grad():
            logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
        n0 = len(s.traj.prompt_ids)
        want = torch.tensor([logp[n0 - 1 + t, tok] for t, tok in enumerate(s.traj.response_ids)])
        assert torch.allclose(old[i, : len(want)], want, atol=1e-5)

    rl = RLConfig(lr=0.5, warmup_steps=0, batch_prompts=2, n=2, mini_batch_prompts=1, ppo_epochs=2)
    out, _, _ = _sgd_update(tiny_model_dir, batch, rl)
    first, later = out["updates"][0], out["updates"][1:]
    assert out["optimizer_updates"] == 4 and len(later) == 3
    assert first["ppo_kl"] == pytest.approx(0.0, abs=1e-7) and first["clipfrac"] == 0.0
    assert any(abs(u["ppo_kl"]) > 1e-6 for u in later)  # the policy moved between updates
    spliced_mean = float((old[batch.spliced] * batch.mask[batch.spliced]).sum() / batch.mask[batch.spliced].sum())
    assert out["logp_spliced"] == pytest.approx(spliced_mean, abs=1e-5)


def test_mini_batches_keep_every_group_whole():
    from cleaner.train.rl import group_mini_batches

    groups = [g for _ in range(4) for g in "abcdef"]  # interleaved: contiguous chunks would split every group
    for per_mini in (1, 2, 3, 6):
        minis = group_mini_batches(groups, per_mini, random.Random(0))
        assert sorted(i for m in minis for i in m) == list(range(len(groups)))
        for m in minis:
            members = {groups[i] for i in m}
            assert len(members) == per_mini
            assert all(sum(1 for i in m if groups[i] == g) == 4 for g in members)
    assert group_mini_batches(groups, 2, random.Random(0)) == group_mini_batches(groups, 2, random.Random(0))


def test_rl_update_trains_each_mini_batch_on_whole_groups(tiny_model_dir, chat_format):
    from cleaner.train.rl import build_update_batch

    batch = build_update_batch(_samples(chat_format, {"a": [1.0, -1.0, 0.5], "b": [-1.0, 1.0, 1.0]}), pad_id=0)
    rl = RLConfig(lr=0.1, warmup_steps=0, batch_prompts=2, n=3, mini_batch_prompts=1)
    out, _, _ = _sgd_update(tiny_model_dir, batch, rl)
    assert [u["rows"] for u in out["updates"]] == [3, 3]


def test_zero_advantage_group_fraction_counts_one_reward_groups(chat_format):
    from cleaner.train.rl import build_update_batch, zero_advantage_group_fraction

    batch = build_update_batch(_samples(chat_format, {"a": [1.0, 1.0, 1.0], "b": [1.0, -1.0, -1.0],
                                                      "c": [-1.0, -1.0, -1.0]}), pad_id=0)
    assert zero_advantage_group_fraction(batch) == pytest.approx(2 / 3)
