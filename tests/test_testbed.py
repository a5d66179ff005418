"""The embedded toolcalc testbed: problems, splits, real-execution SFT traces, RL rows, tokenizer and tiny model.

Checks the properties the CLEANER testbed relies on: ground truth from trusted code, splits that never share a
problem, traces whose failures are real sandbox failures, and shallow (similar) vs deep (dissimilar) fixes under
the SAAR similarity the method uses (CLEANER.md step 4, gamma 0.5).
"""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from cleaner.data.schema import validate_rl_row
from cleaner.protocol import extract_boxed, format_exec_result, looks_like_error
from cleaner.rewards import compute_score
from cleaner.saar import purify_messages, similarity
from cleaner.testbed.data import (
    INSTRUCTION,
    TestbedDataConfig as DataConfig,
    build_rl_row,
    generate_problems,
    make_sft_traces,
    trace_summary,
)
from cleaner.testbed.problems import FAMILIES, make_problem, problem_key

GAMMA = 0.5
# Families whose first attempt fails on every input (the others fail only on some: a short power converts to
# str fine, a memoised recursion works for small n).
ALWAYS_FAILING_SLIPS = {"product", "powmod", "divisor_sum", "lcm", "power_sum"}
ALWAYS_FAILING_WRONG = {"prime_count", "prime_power"}


def small_cfg(**kw) -> DataConfig:
    base = dict(seed=0, n_sft=240, n_rl_train=60, n_val=20, n_test=40, workers=2)
    base.update(kw)
    return DataConfig.from_dict(base)


@pytest.fixture(scope="module")
def splits():
    return generate_problems(small_cfg())


@pytest.fixture(scope="module")
def traces(splits):
    return make_sft_traces(splits["sft"], small_cfg())


@pytest.fixture(scope="module")
def box():
    from cleaner.sandbox import Sandbox

    sandbox = Sandbox(workers=2)
    yield sandbox
    sandbox.close()


# ------------------------------------------------------------------------------------------------ problems
def test_problems_deterministic_from_seed(splits):
    again = generate_problems(small_cfg())
    assert again == splits
    other = generate_problems(small_cfg(seed=1))
    assert [p.question for p in other["test"]] != [p.question for p in splits["test"]]
    # The test/val sets do not depend on how much training data is drawn.
    bigger = generate_problems(small_cfg(n_sft=300, n_rl_train=10))
    assert bigger["test"] == splits["test"] and bigger["val"] == splits["val"]


def test_splits_disjoint_and_sized(splits):
    cfg = small_cfg()
    assert {k: len(v) for k, v in splits.items()} == {"test": cfg.n_test, "val": cfg.n_val, "sft": cfg.n_sft,
                                                      "rl_train": cfg.n_rl_train}
    keys = {name: {problem_key(p) for p in ps} for name, ps in splits.items()}
    for name, ps in splits.items():
        assert len(keys[name]) == len(ps), f"duplicate problems inside {name}"
    names = list(keys)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not keys[a] & keys[b], f"{a} and {b} share problems"
    # Every family appears in the training problems (equal weights by default).
    assert set(p.family for p in splits["sft"]) == set(FAMILIES)


def test_heldout_templates():
    ps = generate_problems(small_cfg(heldout_templates=True, n_sft=120))
    for split, problems in ps.items():
        for p in problems:
            last = len(FAMILIES[p.family].templates) - 1
            if split in ("val", "test"):
                assert p.template == last, (split, p)
            else:
                assert p.template < last, (split, p)
            assert p.question == FAMILIES[p.family].templates[p.template].format(
                **{k: (", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in p.params.items()})


def test_family_weights_and_config_errors():
    ps = generate_problems(small_cfg(families={"product": 1.0, "lcm": 0.0, "powmod": 3.0}))
    fams = Counter(p.family for p in ps["sft"])
    assert set(fams) == {"product", "powmod"} and fams["powmod"] > 2 * fams["product"]
    with pytest.raises(ValueError, match="unknown family"):
        DataConfig.from_dict({"families": {"nope": 1.0}})
    with pytest.raises(ValueError, match="unknown field"):
        DataConfig.from_dict({"n_train": 3})
    with pytest.raises(ValueError, match="slip_rate \\+ wrong_rate"):
        DataConfig.from_dict({"slip_rate": 0.7, "wrong_rate": 0.7})
    with pytest.raises(ValueError, match="positive sum"):
        DataConfig.from_dict({"families": {"product": 0.0}})
    with pytest.raises(ValueError, match="unknown toolcalc family"):
        make_problem("nope", random.Random(0))
    with pytest.raises(ValueError, match="templates"):
        make_problem("product", random.Random(0), templates=(7,))


async def _run(box, code: str):
    return await box.run(code, timeout_s=5.0, memory_mb=512)


async def test_programs_really_compute_the_answer(box):
    """Per family, on a few draws: the clean program(s) print the reference answer; every slip/wrong first
    attempt either fails for real or (input-dependent families only) prints the right answer; every fix works."""
    for name, fam in FAMILIES.items():
        rng = random.Random(f"programs:{name}")
        for _ in range(3):
            p = make_problem(name, rng)
            sol = fam.solution(p.params, rng)
            outputs: list[str] = []
            for attempt in sol.clean:
                code = attempt.code.format(**{f"x{i}": o for i, o in enumerate(outputs)}) if outputs else attempt.code
                res = await _run(box, code)
                assert res.ok, (name, code, res.stderr)
                outputs.append(res.stdout.strip())
            assert outputs[-1] == str(p.answer), (name, p.params)
            for broken, fix in sol.slips + sol.wrong:
                bad = await _run(box, broken.code)
                always = name in ALWAYS_FAILING_SLIPS | ALWAYS_FAILING_WRONG
                if always:
                    assert not bad.ok and bad.status != "ok", (name, broken.code)
                elif bad.ok:
                    assert bad.stdout.strip() == (outputs[0] if len(sol.clean) > 1 else str(p.answer))
                good = await _run(box, fix.code)
                assert good.ok and good.stdout.strip() == outputs[0], (name, fix.code)


def test_fix_similarity_matches_kind():
    """Slips are shallow repairs (similarity >= gamma), wrong approaches deep ones (< gamma), over many draws."""
    worst_slip, worst_wrong = {}, {}
    for name, fam in FAMILIES.items():
        rng = random.Random(f"similarity:{name}")
        for _ in range(40):
            sol = fam.solution(make_problem(name, rng).params, rng)
            for broken, fix in sol.slips:
                worst_slip[name] = min(worst_slip.get(name, 1.0), similarity(broken.code, fix.code))
            for broken, fix in sol.wrong:
                worst_wrong[name] = max(worst_wrong.get(name, 0.0), similarity(broken.code, fix.code))
    assert set(worst_slip) | set(worst_wrong) == set(FAMILIES)
    assert all(v >= GAMMA for v in worst_slip.values()), worst_slip
    assert all(v < GAMMA for v in worst_wrong.values()), worst_wrong


# ------------------------------------------------------------------------------------------------ traces
def test_traces_are_real_and_correct(traces, splits):
    assert len(traces) == len(splits["sft"])
    for t, p in zip(traces, splits["sft"]):
        msgs = t["messages"]
        assert msgs[0] == {"role": "user", "content": f"{p.question}\n{INSTRUCTION}"}
        assert t["ground_truth"] == str(p.answer) and t["family"] == p.family
        assert msgs[-1]["role"] == "assistant" and "tool_calls" not in msgs[-1]
        assert extract_boxed(msgs[-1]["content"]) == str(p.answer)
        tools = [m for m in msgs if m["role"] == "tool"]
        calls = [m for m in msgs if m["role"] == "assistant" and m.get("tool_calls")]
        assert len(tools) == len(calls) and all(m["status"] in ("ok", "error", "timeout", "memory") for m in tools)
        failed = [m for m in tools if m["status"] != "ok"]
        assert t["tool_failures"] == len(failed)
        assert tools[-1]["status"] == "ok"
        assert (t["kind"] == "clean") == (not failed)
        assert len(failed) <= 1  # one failing first attempt per trace at most
        for m in failed:
            assert looks_like_error(m["content"]), m["content"]
        # The answer really is what the last program printed.
        assert tools[-1]["content"].strip() == str(p.answer)
        assert compute_score(t["data_source"], msgs[-1]["content"], t["ground_truth"])["score"] == 1.0


def test_trace_fixes_similar_or_not(traces):
    """In the traces, the failing call and its fix are similar (shallow) or not (deep), and SAAR's offline
    purifier agrees: a shallow trace purifies with one shallow replacement, a deep one with one deep."""
    kinds = Counter(t["kind"] for t in traces)
    assert kinds["shallow"] > 0 and kinds["deep"] > 0
    for t in traces:
        if t["kind"] == "clean":
            continue
        codes = [m["tool_calls"][0]["function"]["arguments"]["code"] for m in t["messages"] if m.get("tool_calls")]
        sim = similarity(codes[0], codes[1])
        assert (sim >= GAMMA) == (t["kind"] == "shallow"), (t["family"], t["kind"], sim)
        purified, stats = purify_messages(t["messages"])
        assert getattr(stats, t["kind"]) == 1 and stats.recovered == 1 and stats.tool_failures_after == 0
        assert not any(m.get("status") not in (None, "ok") for m in purified)


def test_trace_rates_match_config(traces):
    """slip_rate / wrong_rate are the chance of a slip / wrong-approach plan for a family that HAS one; where the
    first attempt always fails, the realised shallow / deep fraction is that rate."""
    cfg = small_cfg()
    fam = Counter(t["family"] for t in traces)
    shallow = sum(1 for t in traces if t["kind"] == "shallow" and t["family"] in ALWAYS_FAILING_SLIPS)
    deep = sum(1 for t in traces if t["kind"] == "deep" and t["family"] in ALWAYS_FAILING_WRONG)
    n_slip_fams = sum(fam[f] for f in ALWAYS_FAILING_SLIPS)
    n_wrong_fams = sum(fam[f] for f in ALWAYS_FAILING_WRONG)
    assert abs(shallow / n_slip_fams - cfg.slip_rate) < 0.12, (shallow, n_slip_fams)
    assert abs(deep / n_wrong_fams - cfg.wrong_rate) < 0.15, (deep, n_wrong_fams)
    # Families without slips never produce a shallow trace and vice versa.
    assert all(t["family"] not in ALWAYS_FAILING_WRONG | {"fib_mod"} for t in traces if t["kind"] == "shallow")
    assert all(t["family"] in ALWAYS_FAILING_WRONG | {"fib_mod"} for t in traces if t["kind"] == "deep")
    s = trace_summary(traces)
    assert s["n"] == len(traces) and sum(s["kinds"].values()) == len(traces)
    assert s["tool_failures_per_trajectory"] == pytest.approx(sum(t["tool_failures"] for t in traces) / len(traces))


def test_trace_rates_extremes(splits):
    problems = splits["sft"][:20]
    clean = make_sft_traces(problems, small_cfg(slip_rate=0.0, wrong_rate=0.0))
    assert all(t["kind"] == "clean" and t["tool_failures"] == 0 for t in clean)
    slips = make_sft_traces(problems, small_cfg(slip_rate=1.0, wrong_rate=0.0))
    for t in slips:
        assert t["kind"] == ("shallow" if t["family"] in ALWAYS_FAILING_SLIPS else t["kind"])
        assert t["kind"] != "deep"
    # Deterministic given the seed.
    assert make_sft_traces(problems[:6], small_cfg()) == make_sft_traces(problems[:6], small_cfg())


async def test_trace_tool_text_is_the_formatted_sandbox_output(traces, box):
    for t in [t for t in traces if t["kind"] != "clean"][:4]:
        first_call = next(m for m in t["messages"] if m.get("tool_calls"))
        code = first_call["tool_calls"][0]["function"]["arguments"]["code"]
        res = await box.run(code, timeout_s=2.0, memory_mb=512)
        tool = t["messages"][t["messages"].index(first_call) + 1]
        assert tool["content"] == format_exec_result(res, max_chars=256) and tool["status"] == res.status


# ------------------------------------------------------------------------------------------------ RL rows
def test_build_rl_row_valid_and_scored(splits):
    for split in ("rl_train", "val", "test"):
        for i, p in enumerate(splits[split][:20]):
            row = build_rl_row(p, split=split, index=i)
            assert validate_rl_row(row) == [], validate_rl_row(row)
            assert row["extra_info"]["index"] == f"{split}-{i}" and row["data_source"] == f"toolcalc/{p.family}"
            assert json.loads(row["extra_info"]["params"]) == p.params
            gt = row["reward_model"]["ground_truth"]
            good = compute_score(row["data_source"], f"so \\boxed{{{p.answer}}}", gt, row["extra_info"])
            bad = compute_score(row["data_source"], f"so \\boxed{{{p.answer + 1}}}", gt, row["extra_info"])
            assert good["score"] == 1.0 and good["acc"] is True
            assert bad["score"] == -1.0 and bad["acc"] is False


# ------------------------------------------------------------------------------------------------ tokenizer
def test_tokenizer_digits_and_tags(tiny_tokenizer):
    tok = tiny_tokenizer
    for text in ("1234567890", "x = 98765 * 43210", "pow(7, 123456, 1009)"):
        ids = tok.encode(text, add_special_tokens=False)
        pieces = [tok.decode([i]) for i in ids]
        digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
        assert all(len(p.strip()) == 1 for p in digit_pieces), pieces
        assert tok.decode(ids) == text
    assert not [t for t in tok.get_vocab() if any(c.isdigit() for c in t) and len(t) > 1]
    vocab = tok.get_vocab()
    for tag in ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<|im_start|>", "<|im_end|>"):
        assert tok.encode(tag, add_special_tokens=False) == [vocab[tag]]
        ids = tok.encode(f"abc{tag}def", add_special_tokens=False)
        assert vocab[tag] in ids
    # Tool tags are added (not special) tokens: they survive skip_special_tokens, like Qwen's.
    assert "<tool_call>" in tok.decode([vocab["<tool_call>"]], skip_special_tokens=True)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_chat_template_round_trip(tiny_tokenizer, sample_conversations):
    from cleaner.prompts import tool_schemas

    for messages in sample_conversations:
        text = tiny_tokenizer.apply_chat_template(messages, tools=tool_schemas(), tokenize=False)
        ids = tiny_tokenizer.encode(text, add_special_tokens=False)
        assert tiny_tokenizer.decode(ids) == text
        assert text.startswith("<|im_start|>system\n") and "code_interpreter" in text.split("<|im_end|>")[0]
        assert '<tool_call>\n{"name": "code_interpreter", "arguments": {"code": ' in text
        assert "<|im_start|>user\n<tool_response>\n" in text
    plain = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                               add_generation_prompt=True)
    assert plain == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_train_tokenizer_rejects_tiny_vocab(tmp_path):
    from cleaner.testbed.tokenizer import train_tokenizer

    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(["abc"], tmp_path / "tok", vocab_size=100)


# ------------------------------------------------------------------------------------------------ model
def test_model_loads_and_is_seeded(tiny_model_dir, tiny_tokenizer, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from cleaner.testbed.model import TinyModelConfig, init_model

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    assert model.config.model_type == "qwen3" and model.config.vocab_size == len(tiny_tokenizer)
    assert model.config.eos_token_id == tiny_tokenizer.eos_token_id
    ids = torch.tensor([tiny_tokenizer.encode("What is 12 * 34?", add_special_tokens=False)])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tiny_tokenizer)) and torch.isfinite(logits).all()

    cfg = TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=16)
    a, b, c = (init_model(tiny_tokenizer, cfg, seed=s) for s in (3, 3, 4))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    with pytest.raises(ValueError, match="multiple"):
        TinyModelConfig.from_dict({"num_attention_heads": 3, "num_key_value_heads": 2})
    with pytest.raises(ValueError, match="unknown model config"):
        TinyModelConfig.from_dict({"layers": 3})


# ------------------------------------------------------------------------------------------------ regime knob
def test_recovery_demos_add_fixes_on_new_problems_without_training_the_error(splits, traces, chat_format):
    """recovery_demos: extra error-then-fix traces on problems of their own whose failed attempt is not trained;
    the other splits and the ordinary traces are exactly those of the default regime."""
    cfg = small_cfg(recovery_demos=0.5)
    regime = generate_problems(cfg)
    for name in ("test", "val", "sft", "rl_train"):
        assert [problem_key(p) for p in regime[name]] == [problem_key(p) for p in splits[name]], name
    assert "sft_recovery" not in splits and len(regime["sft_recovery"]) == 120
    seen = {problem_key(p) for name in ("test", "val", "sft", "rl_train") for p in splits[name]}
    assert not seen & {problem_key(p) for p in regime["sft_recovery"]}

    demos_in = regime["sft_recovery"][:30]
    out = make_sft_traces(splits["sft"][:10], cfg, recovery_problems=demos_in)
    assert out[:10] == make_sft_traces(splits["sft"][:10], small_cfg())  # ordinary traces unchanged
    demos = out[10:]
    assert demos and all(t["recovery_demo"] and t["tool_failures"] >= 1 for t in demos)
    assert len(demos) >= 20  # only input-dependent first attempts that happened to work are left out
    for t in demos:
        assert t["messages"][-1]["content"] == f"\\boxed{{{t['ground_truth']}}}"
        untrained = [m for m in t["messages"] if m.get("train") is False]
        assert len(untrained) == t["tool_failures"]
        enc = chat_format.encode_messages(t["messages"])
        first = chat_format.encode(chat_format.assistant_text(untrained[0]["content"],
                                                              untrained[0]["tool_calls"][0]["function"]["arguments"]["code"]))
        assert enc.response_ids[: len(first)] == first and set(enc.response_mask[: len(first)]) == {0}
        assert sum(enc.response_mask) > 0  # the fix and the answer are trained
    summary = trace_summary(out)
    assert summary["recovery_demos"] == len(demos) and sum(summary["kinds"].values()) == 10
    assert "recovery_demos" not in trace_summary(traces)
    with pytest.raises(ValueError, match="recovery_demos"):
        small_cfg(recovery_demos=-1)


def test_regime_overrides_the_testbed_section_of_its_experiments():
    from cleaner.config import ConfigError, resolve_experiment, resolve_regime, validate_config

    cfg = validate_config({"name": "t", "regimes": {"paper": {"testbed": {"data": {"recovery_demos": 1.0}}}},
                           "experiments": {"base": {}, "paper_base": {"regime": "paper"}}})
    assert resolve_experiment(cfg, "base")["testbed"]["data"]["recovery_demos"] == 0.0
    paper = resolve_experiment(cfg, "paper_base")
    assert paper["testbed"]["data"]["recovery_demos"] == 1.0 and paper["regime"] == "paper"
    assert paper["testbed"]["data"]["slip_rate"] == cfg["testbed"]["data"]["slip_rate"]
    assert resolve_regime(cfg, "paper")["testbed"]["data"]["recovery_demos"] == 1.0
    with pytest.raises(ConfigError, match="unknown regime"):
        resolve_regime(cfg, "nope")
    with pytest.raises(ConfigError, match="recovery_demos"):
        validate_config({"name": "t", "regimes": {"bad": {"testbed": {"data": {"recovery_demos": -1}}}},
                         "experiments": {"x": {"regime": "bad"}}})
