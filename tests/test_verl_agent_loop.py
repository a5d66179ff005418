"""``cleaner_tool_agent`` inside verl 0.9.1's real agent-loop worker, on CPU.

verl's ``AgentLoopWorker`` is built from a composed ``ppo_trainer`` config (our overrides): it loads our tool from
the written ``tool_config.yaml``, registers our loop from ``agent_loops.yaml``, instantiates one loop per
trajectory and post-processes / pads the outputs into a ``DataProto``; rewards go through verl's
``RewardLoopWorker`` with our reward manager and ``compute_score``. The only stand-ins are the LLM server
(:class:`LocalHFServerManager` over the testbed's tiny model, briefly fine-tuned on tool-use conversations so it
calls the tool, fails and retries) and Ray's actor handle for the reward worker (a local object whose methods are
called with ``.remote``). The purified ids and masks must equal what :func:`cleaner.agent.run_agent` produces for
the same seeds.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cleaner.agent import AgentConfig, run_agent_batch
from cleaner.chat import ChatFormat, tool_call_code
from cleaner.config import resolve_experiment, validate_config
from cleaner.engines.verl import AGENT_NAME
from cleaner.engines.verl.overrides import AGENT_FIELDS, compose_ppo_config, prepare_run, read_overrides
from cleaner.prompts import tool_schemas
from cleaner.protocol import format_exec_result, parse_assistant
from cleaner.rewards import compute_score, overlong_penalty
from cleaner.saar import SaarConfig

MAX_RESPONSE = 384
OVERLONG_BUFFER = 32
N = 2
QUESTIONS = [f"What is {a} + {b}?" for a, b in ((12, 34), (56, 78), (91, 23), (45, 67))] + [
    f"What is {a} * {b}?\nPut the final answer in \\boxed{{}}." for a, b in ((12, 34), (56, 78))]
ANSWERS = [str(a + b) for a, b in ((12, 34), (56, 78), (91, 23), (45, 67))] + [str(12 * 34), str(56 * 78)]

CONFIG = {
    "name": "cpu-verl",
    "seeds": [3],
    "sandbox_workers": 2,
    "rollout": {"max_turns": 4, "max_response_tokens": MAX_RESPONSE, "max_turn_tokens": 64, "max_prompt_tokens": 256,
                "tool_timeout_s": 5.0, "tool_memory_mb": 512},
    "saar": {"enabled": False},
    "rl": {"precision": "bf16", "overlong_buffer": OVERLONG_BUFFER, "batch_prompts": 6, "mini_batch_prompts": 3,
           "n": N},
    "eval": {"top_p": 0.6, "k": 2},
    "verl": {"request_seed_key": "seed", "n_gpus_per_node": 1, "agent_num_workers": 1},
    "experiments": {
        "cleaner": {"saar": {"enabled": True}},
        # The paper configs' tools baseline: cleaner_tool_agent with SAAR off (verl.baseline_agent_loop's default).
        "baseline": {"rl": {"rollout_is_correction": True}},
        # The optional stock-loop baseline (verl's own tool_agent).
        "tools_baseline": {"rl": {"rollout_is_correction": True}, "verl": {"baseline_agent_loop": "tool_agent"}},
    },
}


class LocalActorHandle:
    """Ray actor-handle stand-in: ``handle.method.remote(...)`` calls the local object's (async) method."""

    def __init__(self, obj):
        self._obj = obj

    def __getattr__(self, name):
        return SimpleNamespace(remote=getattr(self._obj, name))


@pytest.fixture(scope="module")
def tool_model_dir(tiny_model_dir, tmp_path_factory, sample_conversations) -> Path:
    """The tiny model after 80 AdamW steps on the sample tool-use conversations (real sandbox outputs)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cleaner.sandbox import run_python

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    fmt = ChatFormat(tok, tool_schemas())
    seqs = []
    for conv in copy.deepcopy(sample_conversations):
        for i, msg in enumerate(conv):
            if msg["role"] == "tool":
                res = run_python(tool_call_code(conv[i - 1]["tool_calls"][0]), timeout_s=5.0, memory_mb=512)
                msg["content"] = format_exec_result(res, max_chars=256)
        enc = fmt.encode_messages(conv)
        labels = [-100] * len(enc.prompt_ids) + [t if m else -100 for t, m in zip(enc.response_ids, enc.response_mask)]
        seqs.append((enc.prompt_ids + enc.response_ids, labels))
    width = max(len(s) for s, _ in seqs)
    ids = torch.tensor([s + [0] * (width - len(s)) for s, _ in seqs])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in seqs])
    attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in seqs])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is ~10x faster than two contended ones
    try:
        torch.manual_seed(0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(80):
            loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.5
    out = tmp_path_factory.mktemp("tool_model")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def trainer_config(model_dir: Path, out_dir: Path, experiment: str):
    cfg = validate_config(copy.deepcopy(CONFIG))
    run = prepare_run(cfg, experiment, "rl", output_dir=out_dir, train_files=["/unused/train.parquet"],
                      val_files=["/unused/val.parquet"], model_path=model_dir)
    return cfg, compose_ppo_config(read_overrides(run.overrides_path))


def batch_of(questions: list[str], n: int, *, validate: bool):
    from verl.protocol import DataProto

    rows = [(i, q) for i, q in enumerate(questions) for _ in range(n)]
    nt = {
        "raw_prompt": np.empty(len(rows), dtype=object),
        "index": np.array([i for i, _ in rows], dtype=object),
        "priority": np.arange(len(rows)),  # what verl's AgentLoopManager sets
        "data_source": np.array(["toolcalc/arith"] * len(rows), dtype=object),
        "reward_model": np.array([{"ground_truth": ANSWERS[i]} for i, _ in rows], dtype=object),
        "extra_info": np.array([{"index": i} for i, _ in rows], dtype=object),
    }
    for k, (_, q) in enumerate(rows):
        nt["raw_prompt"][k] = [{"role": "user", "content": q}]
    return DataProto(batch=None, non_tensor_batch=nt, meta_info={"validate": validate}), rows


def unpad(out, k: int) -> tuple[list[int], list[int], list[int]]:
    plen = out.batch["prompts"].shape[1]
    attn = out.batch["attention_mask"][k]
    prompt = out.batch["prompts"][k][attn[:plen].bool()].tolist()
    keep = attn[plen:].bool()
    return prompt, out.batch["responses"][k][keep].tolist(), out.batch["response_mask"][k][keep].tolist()


async def run_worker(cfg_verl, model_dir: Path, batch, *, with_reward: bool):
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    from cleaner.engines.hf import HFGenerator
    from cleaner.engines.verl.agent_loop import LocalHFServerManager

    gen, tok = HFGenerator.from_pretrained(model_dir, device="cpu")
    server = LocalHFServerManager(gen, default_max_tokens=MAX_RESPONSE, seed_key="seed")
    reward = [LocalActorHandle(RewardLoopWorker(cfg_verl))] if with_reward else None
    worker = AgentLoopWorker(cfg_verl, server, None, reward)
    try:
        out = await worker.generate_sequences(batch)
    finally:
        for tool in worker.tools:
            tool.close()
    return out, gen, tok, server


def reference_config(resolved: dict, *, top_p: float, saar: bool) -> AgentConfig:
    saar_cfg = SaarConfig.from_dict({**resolved["saar"], "enabled": saar})
    return AgentConfig.from_dict({**{k: resolved["rollout"][k] for k in AGENT_FIELDS}, "top_p": top_p}, saar=saar_cfg)


@pytest.mark.parametrize("validate", [False, True], ids=["train", "validation"])
async def test_verl_worker_matches_run_agent(tool_model_dir, tmp_path, validate):
    """Same seeds -> identical prompt ids, response ids and masks; stats and rewards where verl expects them."""
    from cleaner.engines.verl.agent_loop import count_turns, trajectory_seed
    from cleaner.sandbox import Sandbox

    cfg, cfg_verl = trainer_config(tool_model_dir, tmp_path, "cleaner")
    resolved = resolve_experiment(cfg, "cleaner")
    batch, rows = batch_of(QUESTIONS, N, validate=validate)
    out, gen, tok, server = await run_worker(cfg_verl, tool_model_dir, batch, with_reward=not validate)
    # Training requests use the rollout's sampling; validation requests val_kwargs (top-p 0.6) and SAAR is off.
    assert {r["top_p"] for r in server.requests} == {0.6 if validate else 1.0}
    seeds = [trajectory_seed(cfg["seeds"][0], i, k) for k, (i, _) in enumerate(rows)]
    fmt = ChatFormat(tok, tool_schemas())
    box = Sandbox(workers=2)
    try:
        ref = await run_agent_batch(gen, box, fmt, [[{"role": "user", "content": q}] for _, q in rows],
                                    reference_config(resolved, top_p=0.6 if validate else 1.0, saar=not validate),
                                    seeds=seeds)
    finally:
        box.close()
        await gen.aclose()
    nt = out.non_tensor_batch
    for k, traj in enumerate(ref):
        prompt, response, mask = unpad(out, k)
        assert prompt == traj.prompt_ids
        assert response == traj.response_ids, f"row {k}: {fmt.decode(response)!r} != {traj.response_text!r}"
        assert mask == traj.response_mask
        assert nt["__num_turns__"][k] == count_turns(traj.response_mask)
        assert nt["cleaner/seed"][k] == seeds[k] and nt["cleaner/validate"][k] is validate
        for key, value in traj.stats.items():
            assert nt[f"cleaner/{key}"][k] == value, key
        assert nt["tool_call_counts"][k] == traj.stats["tool_calls_after"]
    assert "rollout_log_probs" not in out.batch.keys()  # calculate_log_probs=False: the trainer recomputes them
    assert sum(t.stats["tool_calls_before"] for t in ref) > 0
    if validate:
        assert all(t.stats["triggered"] == 0 and not t.stats["gate_open"] for t in ref)
        return
    assert sum(t.stats["triggered"] for t in ref) > 0  # the fine-tuned model fails calls -> SAAR retries
    assert any(t.stats["spliced"] for t in ref)  # ... and some retries replaced the failed turn (spliced ids)
    # Reward: verl's RewardLoopWorker -> CleanerRewardManager (DAPO overlong) -> compute_score (+1/-1) + stats.
    for k, traj in enumerate(ref):
        length = len(traj.response_ids)
        text = tok.decode(traj.response_ids, skip_special_tokens=True)
        expected = compute_score("toolcalc/arith", text, ANSWERS[rows[k][0]])["score"] + overlong_penalty(
            length, max_response_length=MAX_RESPONSE, overlong_buffer_len=OVERLONG_BUFFER)
        assert out.batch["rm_scores"][k, length - 1].item() == pytest.approx(expected)
        assert nt["cleaner/triggered"][k] == traj.stats["triggered"]
    assert {"score", "acc", "overlong_reward", "cleaner/triggered", "cleaner/tool_failures_after"} <= set(
        out.meta_info["reward_extra_keys"])


async def test_stock_tool_agent_uses_the_same_interpreter(tool_model_dir, tmp_path):
    """verl's own ``tool_agent`` (the stock loop, kept as an optional arm) runs each call in cleaner.sandbox and
    renders the result exactly as our loop does: a success, a traceback and a middle-truncated long output."""
    from omegaconf import open_dict
    from transformers import AutoTokenizer
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    from cleaner.engines.verl.tool import ToolSettings
    from cleaner.sandbox import run_python

    _, cfg_verl = trainer_config(tool_model_dir, tmp_path, "tools_baseline")
    with open_dict(cfg_verl):
        cfg_verl.actor_rollout_ref.rollout.agent.default_agent_loop = "tool_agent"
    first_calls = {12: "x = 12 + 34\nprint(x)", 56: "print(undefined_name)", 91: "print('ab' * 700)"}
    batch, rows = batch_of(QUESTIONS[:3], 1, validate=False)
    tok = AutoTokenizer.from_pretrained(tool_model_dir)
    worker = AgentLoopWorker(cfg_verl, ScriptedServerManager(tok, first_calls=first_calls), None, None)
    try:
        out = await worker.generate_sequences(batch)
    finally:
        for tool in worker.tools:
            tool.close()
    settings = ToolSettings(timeout_s=5.0, memory_mb=512, max_tool_response_chars=256)
    statuses = []
    for k, (i, _) in enumerate(rows):
        _, response, mask = unpad(out, k)
        assert 0 in mask, f"trajectory {k}: verl's tool_agent never answered the call"
        call = parse_assistant(tok.decode(response[: mask.index(0)])).call
        assert call is not None and call.code == list(first_calls.values())[i]
        res = run_python(call.code, timeout_s=settings.timeout_s, memory_mb=settings.memory_mb)
        statuses.append(res.status)
        expected = f"<tool_response>\n{format_exec_result(res, max_chars=settings.max_tool_response_chars)}\n"
        assert expected in tok.decode(response[mask.index(0):])
        assert f"\\boxed{{{ANSWERS[i]}}}" in tok.decode(response)  # the loop went on after the tool answered
    assert statuses == ["ok", "error", "ok"]
    long_output = format_exec_result(run_python(first_calls[91], timeout_s=5.0, memory_mb=512), max_chars=256)
    assert len(long_output) < 400 and "ab" * 50 in long_output  # truncated in the middle, both ends kept
    assert "rollout_log_probs" in out.batch.keys()  # baseline: rollout IS correction needs rollout log-probs


async def test_loop_refuses_inconsistent_settings(tool_model_dir, tmp_path):
    """SAAR with rollout log-probs, or no code_interpreter tool, is a configuration error at construction."""
    import hydra
    from omegaconf import open_dict
    from transformers import AutoTokenizer
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from cleaner.engines.verl.agent_loop import CleanerAgentLoop, trajectory_seed
    from cleaner.engines.verl.tool import CodeInterpreterTool

    _, cfg_verl = trainer_config(tool_model_dir, tmp_path, "cleaner")
    tok = AutoTokenizer.from_pretrained(tool_model_dir)
    tool = CodeInterpreterTool({"type": "native"})

    def make(config, tools):
        return CleanerAgentLoop(
            trainer_config=DictConfigWrap(config), server_manager=None, tokenizer=tok, processor=None,
            dataset_cls=RLHFDataset, data_config=DictConfigWrap(config.data), tools=ToolListWrap(tools))

    # As verl builds it: hydra.utils.instantiate on the agent_loops.yaml entry.
    loop = hydra.utils.instantiate(
        {"_target_": "cleaner.engines.verl.agent_loop.CleanerAgentLoop", "name": "cleaner_tool_agent"},
        trainer_config=DictConfigWrap(cfg_verl), server_manager=None, tokenizer=tok, processor=None,
        dataset_cls=RLHFDataset, data_config=DictConfigWrap(cfg_verl.data), tools=ToolListWrap([tool]))
    assert isinstance(loop, CleanerAgentLoop) and loop.saar_config.enabled and loop.agent_config.max_turns == 4
    assert loop.is_validation({"temperature": 1.0, "top_p": 0.6, "top_k": -1})
    assert not loop.is_validation({"temperature": 1.0, "top_p": 1.0, "top_k": -1})
    with pytest.raises(ValueError, match="code_interpreter"):
        make(cfg_verl, [])
    bad = copy.deepcopy(cfg_verl)
    with open_dict(bad):
        bad.actor_rollout_ref.rollout.calculate_log_probs = True
    with pytest.raises(ValueError, match="calculate_log_probs=False"):
        make(bad, [tool])
    # Validation SAAR splices validation trajectories, which verl also asks rollout log-probs for.
    with open_dict(bad):
        bad.cleaner.saar.enabled = False
        bad.cleaner.val_saar.enabled = True
    with pytest.raises(ValueError, match="cleaner.val_saar.enabled with actor_rollout_ref.rollout.calculate_log_probs"):
        make(bad, [tool])
    with pytest.raises(ValueError, match="priority"):
        await loop.run({"temperature": 1.0, "top_p": 1.0}, raw_prompt=[{"role": "user", "content": "hi"}], index=0)
    assert trajectory_seed(0, 1, 2) == trajectory_seed(0, 1, 2) != trajectory_seed(0, 1, 3)
    assert 0 <= trajectory_seed(5, "x", 0) < 2**63
    tool.close()


# -- the two arms of the comparison differ only by SAAR ----------------------------------------------------------
class ScriptedServerManager:
    """verl's ``LLMServerClient.generate`` returning known tokens: the reply is a function of the conversation so far.

    Turn 1 calls the tool with ``print(a + b)`` for the question's a, b (``print(undefined_name)`` first for
    questions listed in ``failing``, ``first_calls[a]`` where given); after a ``NameError`` it calls again with the right code; after a successful
    call it answers ``\\boxed{a + b}``. Like SGLang it stops after the first requested stop token (kept in the
    output) and returns log-probs when asked. No sampling, so the proof does not depend on a model's luck.
    """

    def __init__(self, tokenizer, *, failing: frozenset[int] = frozenset(), first_calls: dict[int, str] | None = None):
        self.tok = tokenizer
        self.fmt = ChatFormat(tokenizer, tool_schemas())
        self.failing = failing
        self.first_calls = first_calls or {}  # a -> the program of question a's first call
        self.requests: list[dict] = []

    def reply(self, prompt_ids: list[int]) -> str:
        text = self.fmt.decode(prompt_ids)
        a, b = (int(x) for x in re.search(r"What is (\d+) \+ (\d+)\?", text).groups())
        responses = text.split("<tool_response>")[1:]
        if responses and "NameError" not in responses[-1]:
            return self.fmt.assistant_text(f"So the answer is \\boxed{{{a + b}}}.", None)
        code = f"print({a} + {b})"
        if not responses:
            code = self.first_calls.get(a, "print(undefined_name)" if a in self.failing else code)
        return self.fmt.assistant_text("Let me compute it.", code)

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        from verl.workers.rollout.replica import TokenOutput

        self.requests.append(dict(sampling_params))
        ids = self.fmt.encode(self.reply(list(prompt_ids)))
        stops = set(sampling_params.get("stop_token_ids") or ()) | {self.fmt.end_of_turn_id}
        end = next((i + 1 for i, t in enumerate(ids) if t in stops), len(ids))
        ids = ids[: min(end, int(sampling_params.get("max_tokens") or len(ids)))]
        logprobs = [-0.25] * len(ids) if sampling_params.get("logprobs") else None
        return TokenOutput(token_ids=ids, log_probs=logprobs, stop_reason="completed", num_preempted=0,
                           extra_fields={"global_steps": None})


async def run_scripted(model_dir: Path, out_dir: Path, experiment: str, questions: list[str], *, failing=frozenset()):
    from transformers import AutoTokenizer
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    _, cfg_verl = trainer_config(model_dir, out_dir, experiment)
    server = ScriptedServerManager(AutoTokenizer.from_pretrained(model_dir), failing=failing)
    worker = AgentLoopWorker(cfg_verl, server, None, None)
    try:
        out = await worker.generate_sequences(batch_of(questions, N, validate=False)[0])
    finally:
        for tool in worker.tools:
            tool.close()
    return cfg_verl, out


async def test_arms_give_token_identical_trajectories_when_no_call_fails(tiny_model_dir, tmp_path):
    """Tools baseline (SAAR off, rollout log-probs for IS) and CLEANER (SAAR on) through verl's AgentLoopWorker:
    identical prompt ids, response ids and masks when every call succeeds; a failed call makes them differ."""
    questions = QUESTIONS[:4]
    base_cfg, base = await run_scripted(tiny_model_dir, tmp_path / "b", "baseline", questions)
    clean_cfg, clean = await run_scripted(tiny_model_dir, tmp_path / "c", "cleaner", questions)
    assert base_cfg.actor_rollout_ref.rollout.agent.default_agent_loop == AGENT_NAME
    assert clean_cfg.actor_rollout_ref.rollout.agent.default_agent_loop == AGENT_NAME
    assert (base_cfg.cleaner.saar.enabled, clean_cfg.cleaner.saar.enabled) == (False, True)
    assert base_cfg.algorithm.rollout_correction.rollout_is == "sequence"  # the reference baseline's IS level
    for k in range(len(questions) * N):
        assert unpad(base, k) == unpad(clean, k), k
        _, response, mask = unpad(clean, k)
        assert 0 in mask and mask[-1] == 1  # one tool call, then the answer
        assert clean.non_tensor_batch["cleaner/tool_calls_before"][k] == 1
    assert clean.non_tensor_batch["cleaner/triggered"].sum() == 0
    assert "rollout_log_probs" in base.batch.keys() and "rollout_log_probs" not in clean.batch.keys()
    # Negative control: a failing first call is answered with its error in the baseline and purified by SAAR.
    failing = frozenset({12})
    _, base_f = await run_scripted(tiny_model_dir, tmp_path / "bf", "baseline", questions, failing=failing)
    _, clean_f = await run_scripted(tiny_model_dir, tmp_path / "cf", "cleaner", questions, failing=failing)
    assert unpad(base_f, 0) != unpad(clean_f, 0) and unpad(clean_f, 0) == unpad(clean, 0)
    assert base_f.non_tensor_batch["cleaner/tool_failures_after"][0] == 1
    assert clean_f.non_tensor_batch["cleaner/triggered"][0] == 1
    assert clean_f.non_tensor_batch["cleaner/tool_failures_after"][0] == 0
    for k in range(2, len(questions) * N):  # the other questions never fail: identical again
        assert unpad(base_f, k) == unpad(clean_f, k)


# -- validation / evaluation run the test-time SAAR (cleaner.val_saar), training the arm's own ------------------------
def saar_config(saar_at_validation: bool) -> dict:
    cfg = copy.deepcopy(CONFIG)
    cfg["eval"]["saar_at_validation"] = saar_at_validation
    cfg["experiments"].update({
        "tools_plain": {},  # SAAR off in training, no rollout IS correction (so validation SAAR is allowed)
        "cleaner_gate_closed": {"saar": {"enabled": True, "rollback_probability": 0.0}},  # never rolls back in RL
    })
    return validate_config(cfg)


async def run_scripted_stage(model_dir: Path, out_dir: Path, cfg: dict, experiment: str, *, stage: str,
                             validate: bool, saar: bool | None = None):
    """One batch (questions 12+34 failing first, 56+78 not; N samples each) through verl's AgentLoopWorker."""
    from transformers import AutoTokenizer
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    kw = dict(train_files=["/unused/train.parquet"]) if stage == "rl" else dict(saar=saar)
    run = prepare_run(cfg, experiment, stage, output_dir=out_dir, val_files=["/unused/val.parquet"],
                      model_path=model_dir, **kw)
    cfg_verl = compose_ppo_config(read_overrides(run.overrides_path))
    server = ScriptedServerManager(AutoTokenizer.from_pretrained(model_dir), failing=frozenset({12}))
    worker = AgentLoopWorker(cfg_verl, server, None, None)
    try:
        out = await worker.generate_sequences(batch_of(QUESTIONS[:2], N, validate=validate)[0])
    finally:
        for tool in worker.tools:
            tool.close()
    assert {r["top_p"] for r in server.requests} == {0.6 if validate else 1.0}
    return cfg_verl, out


def rolled_back(out) -> list[bool]:
    """Per row: the failed first call was rolled back (the failing question) / nothing to roll back (the other)."""
    nt = out.non_tensor_batch
    return [bool(nt["cleaner/triggered"][k] == 1 and nt["cleaner/tool_failures_after"][k] == 0) for k in range(2 * N)]


@pytest.mark.parametrize("experiment, saar_at_validation, validate, expected", [
    ("tools_plain", True, False, False),       # training: the arm's SAAR (off)
    ("tools_plain", True, True, True),         # validation: test-time SAAR (on)
    ("cleaner", False, False, True),           # training: the arm's SAAR (on)
    ("cleaner", False, True, False),           # validation: test-time SAAR (off)
    ("cleaner_gate_closed", True, False, False),  # the arm's p = 0 gate ...
    ("cleaner_gate_closed", True, True, True),    # ... is not validation's (eval.saar: p = 1)
], ids=["tools-train", "tools-val-on", "cleaner-train", "cleaner-val-off", "gate0-train", "gate0-val-on"])
async def test_validation_uses_val_saar_training_the_arms_saar(tiny_model_dir, tmp_path, experiment,
                                                               saar_at_validation, validate, expected):
    """RL stage through verl's AgentLoopWorker: a failing first call is rolled back in validation exactly when
    eval.saar_at_validation is on, in training exactly when the arm's saar section rolls back."""
    cfg = saar_config(saar_at_validation)
    cfg_verl, out = await run_scripted_stage(tiny_model_dir, tmp_path, cfg, experiment, stage="rl", validate=validate)
    assert cfg_verl.cleaner.val_saar.enabled is saar_at_validation
    assert cfg_verl.cleaner.saar.enabled is (experiment != "tools_plain")
    nt = out.non_tensor_batch
    assert list(nt["cleaner/validate"]) == [validate] * (2 * N)
    assert rolled_back(out) == [expected] * N + [False] * N
    # Without rollback the failure stays in the trajectory; the other question never fails.
    assert list(nt["cleaner/tool_failures_after"]) == [0 if expected else 1] * N + [0] * N


@pytest.mark.parametrize("experiment", ["baseline", "cleaner"])
@pytest.mark.parametrize("saar", [True, False], ids=["saar-on", "saar-off"])
async def test_eval_stage_applies_saar_flag_to_every_tool_arm(tiny_model_dir, tmp_path, experiment, saar):
    """`--stage eval --saar on|off`: every evaluation trajectory rolls back (on) or keeps its failure (off), whatever
    the arm's training SAAR; the tools baseline's rollout IS correction does not reach the eval run."""
    cfg = saar_config(False)
    cfg_verl, out = await run_scripted_stage(tiny_model_dir, tmp_path, cfg, experiment, stage="eval", validate=True,
                                             saar=saar)
    assert cfg_verl.cleaner.mode == "eval" and cfg_verl.cleaner.val_saar.enabled is saar
    assert not cfg_verl.actor_rollout_ref.rollout.calculate_log_probs
    assert rolled_back(out) == [saar] * N + [False] * N

