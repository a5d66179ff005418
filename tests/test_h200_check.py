"""scripts/device/h200_check.py on the CPU: the tiny dry run end to end, its verl copies against verl itself, and the
full-vs-fused agreement check against a broken chunked path.

What stays unchecked here (no GPU): the Qwen3-4B-sized run itself, CUDA memory figures, the SDPA flash kernel,
torch.compile of the entropy and the offload copies; docs/gpu.md says how they are run on the device machine.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device" / "h200_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("h200_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["h200_check"] = module
    spec.loader.exec_module(module)
    return module


h200 = _load_script()


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory) -> dict:
    """The CPU dry run exactly as a user runs it: a subprocess of the script, its JSON read back."""
    out = tmp_path_factory.mktemp("h200")
    env = {**os.environ, "OUT": str(out)}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "train step 0" in proc.stdout and "full vs fused: max" in proc.stdout  # the summary table
    return json.loads((out / "h200_check.json").read_text())


# -- the dry run ---------------------------------------------------------------------------------------------------
def test_tiny_run_reports_every_phase_ok(tiny_report):
    assert tiny_report["schema"] == "h200_check/1"
    assert tiny_report["findings"] == []
    assert tiny_report["env"]["torch"] == torch.__version__
    assert tiny_report["env"]["logprob_impl"] in ("logprobs_from_logits_v2", "flash_attn_cross_entropy")
    phases = tiny_report["phases"]
    assert phases["build"]["status"] == "ok"
    assert phases["train"]["status"] == "ok" and phases["logprob"]["status"] == "ok"
    summary = phases["build"]["model"]
    assert {k: summary[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers", "head_dim")} == {
        "vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2, "head_dim": 16}
    assert summary["tie_word_embeddings"] is True and summary["rope_theta"] == 5_000_000.0


def test_tiny_run_trains_two_steady_steps(tiny_report):
    settings = tiny_report["settings"]
    assert settings["param_offload"] and settings["optimizer_offload"] and settings["gradient_checkpointing"]
    steps = tiny_report["phases"]["train"]["steps"]
    assert [s["step"] for s in steps] == [0, 1]
    for step in steps:
        assert step["status"] == "ok"
        assert step["tokens"] == settings["train_tokens"] == 180
        assert step["seconds"] > 0 and step["tokens_per_s"] > 0
        assert set(step["substeps"]) == {"load", "forward", "backward", "optimizer", "offload"}
        assert math.isfinite(step["loss"]) and math.isfinite(step["grad_norm"]) and step["grad_norm"] > 0
        assert step["loss_scale"] == 65536.0  # fp16: verl's ShardedGradScaler, no overflow at this size
        assert step["optimizer_step_skipped"] is False and step["weights_changed"] is True
        # CPU: no CUDA memory figures, and the keys are there for the device run to fill
        assert step["peak_allocated_gib"] is None and "peak_reserved_gib" in step


def test_tiny_run_measures_both_logprob_ways_and_they_agree(tiny_report):
    phase = tiny_report["phases"]["logprob"]
    assert set(phase["variants"]) == {"full_logits", "fused_chunked"}  # eager variant only beside a compiled one
    full, fused = phase["variants"]["full_logits"], phase["variants"]["fused_chunked"]
    assert full["status"] == fused["status"] == "ok"
    assert full["tokens"] == fused["tokens"] == 600  # 4 x 150, so the 512-token chunks end in a partial one
    assert set(full["substeps"]) == {"load", "forward", "entropy", "log_probs", "offload"}
    assert full["logits_gib"] == pytest.approx(600 * 1000 * 2 / 2**30, abs=1e-3)
    agree = phase["agreement"]
    assert agree["agree"] is True
    assert agree["log_probs_max_abs_diff"] <= agree["tolerance"] == 5e-2
    assert agree["entropy_max_abs_diff"] <= agree["tolerance"]
    # peaked distributions: a misaligned label or a lost chunk would move values far beyond the tolerance
    assert agree["log_probs_std"] > 10 * agree["tolerance"] and agree["entropy_std"] > 4 * agree["tolerance"]


# -- a broken chunked path fails the run's own check --------------------------------------------------------------
def _fwd_with_shifted_labels(hidden_states, vocab_weights, input_ids, temperature=1.0):
    return ORIGINAL_FWD(hidden_states, vocab_weights, torch.roll(input_ids, 1), temperature)


def _chunks_without_tail(hidden_states, vocab_weights, input_ids, temperature=1.0, chunk_size=512):
    """The chunk loop with a classic bug: the last, partial chunk is never computed."""
    hidden = hidden_states.flatten(0, 1)
    labels = input_ids.flatten(0, 1)
    log_probs = torch.zeros(hidden.shape[0])
    entropy = hidden.new_zeros(hidden.shape[0])
    for start in range(0, hidden.shape[0] - chunk_size + 1, chunk_size):
        end = start + chunk_size
        log_probs[start:end], entropy[start:end] = h200._fused_linear_for_ppo_fwd(
            hidden[start:end], vocab_weights, labels[start:end], temperature)
    return log_probs.view(hidden_states.shape[0], -1), entropy.view(hidden_states.shape[0], -1)


ORIGINAL_FWD = h200._fused_linear_for_ppo_fwd


@pytest.mark.parametrize("attribute, broken", [("_fused_linear_for_ppo_fwd", _fwd_with_shifted_labels),
                                               ("fused_logprobs_entropy", _chunks_without_tail)])
def test_a_broken_chunked_path_is_reported(monkeypatch, tmp_path, attribute, broken):
    monkeypatch.setattr(h200, attribute, broken)
    assert h200.main(["--device", "cpu", "--tiny", "--train-steps", "0", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "h200_check.json").read_text())
    assert report["phases"]["logprob"]["agreement"]["agree"] is False
    assert any("disagree" in line for line in report["findings"])


# -- the copies of verl's functions against verl 0.9.1 itself -----------------------------------------------------
def _peaked(tokens: int, vocab: int, dtype=torch.float32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(tokens, vocab, generator=generator)).to(dtype)
    return logits, torch.randint(0, vocab, (tokens,), generator=generator)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_logprob_and_entropy_copies_match_verl(dtype):
    verl_F = pytest.importorskip("verl.utils.torch_functional")
    logits, labels = _peaked(37, 211, dtype)
    assert torch.equal(h200.logprobs_from_logits_v2(logits, labels), verl_F.logprobs_from_logits_v2(logits, labels))
    assert torch.equal(h200.logprobs_from_logits(logits, labels), verl_F.logprobs_from_logits(logits, labels))
    assert torch.equal(h200.entropy_from_logits(logits), verl_F.entropy_from_logits(logits))


def test_fused_chunk_copy_matches_verls_fused_function():
    experimental = pytest.importorskip("verl.utils.experimental.torch_functional")
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 700, 32, generator=generator)  # 1,400 tokens: two full 512-chunks and a partial one
    weight = torch.randn(300, 32, generator=generator) / 2
    labels = torch.randint(0, 300, (2, 700), generator=generator)
    with torch.no_grad():
        ours = h200.fused_logprobs_entropy(hidden, weight, labels, temperature=0.7, chunk_size=512)
        theirs = experimental.FusedLinearForPPOFunction.apply(hidden, weight, labels, 0.7, 512)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    # and the chunked values are the full-logits values (fp32: to rounding)
    full = (hidden.flatten(0, 1) @ weight.t()) / 0.7
    torch.testing.assert_close(ours[0].flatten(), h200.logprobs_from_logits(full, labels.flatten()))
    torch.testing.assert_close(ours[1].flatten(), h200.entropy_from_logits(full))


def test_policy_loss_copy_matches_verl_vanilla_dual_clip():
    core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
    from verl.workers.config.actor import ActorConfig
    config = ActorConfig(strategy="fsdp2", rollout_n=16, use_dynamic_bsz=True, clip_ratio_low=0.2,
                         clip_ratio_high=0.28, clip_ratio_c=10.0)
    generator = torch.Generator().manual_seed(2)
    old = torch.randn(3, 50, generator=generator)
    new = old + torch.randn(3, 50, generator=generator)  # ratios far outside the clip range, both signs
    advantages = torch.randn(3, 50, generator=generator)
    mask = (torch.rand(3, 50, generator=generator) > 0.3).float()
    theirs, _ = core_algos.compute_policy_loss_vanilla(old, new, advantages, mask, "token-mean", config)
    ours = h200.policy_loss_vanilla(old, new, advantages, mask)
    torch.testing.assert_close(ours, theirs)


# -- the shapes ----------------------------------------------------------------------------------------------------
def test_qwen3_4b_shapes_give_the_published_parameter_count():
    """Qwen3-4B(-Instruct-2507): 4.0B parameters, 3.6B without the (tied) embedding (its model card)."""
    from transformers import Qwen3ForCausalLM
    config = h200.qwen3_config(h200.QWEN3_4B)
    assert config.rope_parameters["rope_theta"] == 5_000_000.0 and config.max_position_embeddings == 262144
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.model.embed_tokens.weight.numel()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert round(total / 1e9, 2) == 4.02 and round((total - embedding) / 1e9, 1) == 3.6
    assert h200.TRAIN_TOKENS == 23040 and h200.LOGPROB_SEQS * h200.TRAIN_TOKENS == 92160


def test_recipe_budgets_are_what_the_paper_config_gives_verl():
    """The token budgets are the overrides our paper config writes (ppo / log-prob max tokens per GPU)."""
    import yaml
    from cleaner.engines.verl.overrides import build_ppo_overrides
    config = yaml.safe_load((ROOT / "config" / "paper-qwen3-4b.yaml").read_text())
    overrides = build_ppo_overrides(config, "cleaner", train_files="train.parquet", val_files="val.parquet",
                                    output_dir="out", model_path="model")
    values = dict(o.lstrip("+").split("=", 1) for o in overrides)
    assert int(values["actor_rollout_ref.actor.ppo_max_token_len_per_gpu"]) == h200.TRAIN_TOKENS
    assert int(values["actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu"]) == 4 * h200.TRAIN_TOKENS
    assert values["actor_rollout_ref.actor.fsdp_config.param_offload"] == "true"
    assert values["actor_rollout_ref.actor.fsdp_config.optimizer_offload"] == "true"
    assert values["actor_rollout_ref.model.enable_gradient_checkpointing"] == "true"
    assert values["actor_rollout_ref.actor.fsdp_config.dtype"] == "float16"


def test_cli_refuses_token_counts_that_do_not_split_into_sequences():
    with pytest.raises(SystemExit, match="multiple of --logprob-seqs"):
        h200.settings_from_args(h200.parse_args(["--device", "cpu", "--tiny", "--logprob-tokens", "601"]))


# -- the bookkeeping that only a GPU exercises for real --------------------------------------------------------------
class FakeCudaMemory:
    """Counters that act like the CUDA caching allocator's: one global peak, reset by reset_peak."""

    def __init__(self):
        self.allocated = self.peak_allocated = 0

    def alloc(self, size: int) -> None:
        self.allocated += size
        self.peak_allocated = max(self.peak_allocated, self.allocated)

    def free(self, size: int) -> None:
        self.allocated -= size

    def sync(self, device) -> None:
        pass

    def current(self, device):
        return self.allocated, self.allocated

    def peak(self, device):
        return self.peak_allocated, self.peak_allocated

    def reset_peak(self, device) -> None:
        self.peak_allocated = self.allocated


def test_nested_spans_keep_the_peak_their_children_reset(monkeypatch):
    memory = FakeCudaMemory()
    monkeypatch.setattr(h200, "CUDA_MEMORY", memory)
    cuda, gib = torch.device("cuda"), 2**30
    outer, first, second = {}, {}, {}
    with h200.measured(cuda, outer):
        memory.alloc(10 * gib)
        memory.free(6 * gib)  # 10 GiB reached before any child span
        with h200.measured(cuda, first):
            memory.alloc(3 * gib)
            memory.free(3 * gib)
        with h200.measured(cuda, second):
            memory.alloc(1 * gib)
    assert first["peak_allocated_gib"] == 7.0 and second["peak_allocated_gib"] == 5.0
    assert outer["peak_allocated_gib"] == 10.0
    assert h200._open_spans == []


def test_an_out_of_memory_step_is_a_finding_and_the_run_goes_on(monkeypatch):
    memory = FakeCudaMemory()
    monkeypatch.setattr(h200, "CUDA_MEMORY", memory)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)

    def entropy_of_full_logits():
        memory.alloc(120 * 2**30)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 52.16 GiB.\nmore detail")

    record = h200.guarded("eager entropy", h200.Budget(60), 1, torch.device("cuda"), entropy_of_full_logits)
    assert record["status"] == "oom" and record["error"] == "CUDA out of memory. Tried to allocate 52.16 GiB."
    assert record["peak_allocated_gib"] == 120.0
    report = {"phases": {"logprob": {"variants": {"full_logits_eager_entropy": record}}}}
    assert h200.findings(report) == ["logprob full_logits_eager_entropy: oom: " + record["error"]]


def test_the_time_budget_skips_or_stops_a_step():
    import time
    budget = h200.Budget(1.0)
    skipped = h200.guarded("train step", budget, 30, torch.device("cpu"), lambda: {})
    assert skipped["status"] == "skipped" and "needs ~30 s" in skipped["reason"]
    stopped = h200.guarded("train step", budget, 0, torch.device("cpu"), lambda: time.sleep(5) or {})
    assert stopped["status"] == "timeout" and stopped["seconds"] < 4
