"""Cold-start SFT (the paper's RA-SFT stage, embedded trainer): masks, learning, resume after a kill, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cleaner.chat import ChatFormat
from cleaner.prompts import tool_schemas
from cleaner.train.sft import IGNORE, SFTConfig, encode_sft_examples, train_sft


def write_jsonl(path: Path, conversations: list[list[dict]]) -> Path:
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations))
    return path


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_labels_mask_prompt_and_tool_tokens(tiny_tokenizer, sample_conversations):
    fmt = ChatFormat(tiny_tokenizer, tool_schemas())
    examples, too_long = encode_sft_examples(
        [{"messages": m} for m in sample_conversations], fmt, max_length=4096
    )
    assert too_long == 0 and len(examples) == len(sample_conversations)
    for (ids, labels), messages in zip(examples, sample_conversations):
        enc = fmt.encode_messages(messages)
        assert ids == enc.prompt_ids + enc.response_ids and len(labels) == len(ids)
        n_prompt = len(enc.prompt_ids)
        assert labels[:n_prompt] == [IGNORE] * n_prompt
        for tok, lab, m in zip(enc.response_ids, labels[n_prompt:], enc.response_mask):
            assert lab == (tok if m else IGNORE)
        trained = fmt.decode([t for t in labels if t != IGNORE])
        ignored = fmt.decode([t for t, lab in zip(ids, labels) if lab == IGNORE])
        for msg in messages:
            if msg["role"] == "assistant":
                assert msg["content"] in trained
            elif msg["role"] == "tool":  # tool output is never trained on
                wrapped = f"<tool_response>\n{msg['content']}\n</tool_response>"
                assert wrapped in ignored and wrapped not in trained
            else:  # nor is the prompt
                assert msg["content"] in ignored and msg["content"] not in trained
        assert "<tool_response>" not in trained and trained.endswith("<|im_end|>")
    # A plain list of messages works too; too-long conversations are dropped and counted.
    short, cut = encode_sft_examples(sample_conversations, fmt, max_length=len(examples[0][0]))
    assert cut == sum(len(ids) > len(examples[0][0]) for ids, _ in examples) and cut > 0
    assert len(short) + cut == len(examples)


@pytest.mark.slow
def test_loss_decreases_and_final_model_loads(tiny_model_dir, sample_conversations, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_jsonl(tmp_path / "sft.jsonl", sample_conversations)
    cfg = SFTConfig(lr=3e-3, warmup_steps=3, batch_size=8, max_steps=30, checkpoint_every=100, max_length=512)
    summary = train_sft(tiny_model_dir, data, tmp_path / "out", cfg, progress=False)
    rows = read_metrics(tmp_path / "out")
    losses = [r["loss"] for r in rows]
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert summary["steps"] == 30 and summary["examples"] == len(sample_conversations)
    assert summary["final_loss"] == losses[-1]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.5 * first, (first, last)
    assert all(r["loss_tokens"] > 0 and r["lr"] > 0 for r in rows)

    # final/ is a complete HF checkpoint whose loss on the data is below the initial model's.
    final = Path(summary["model_dir"])
    assert final == tmp_path / "out" / "final"
    tok = AutoTokenizer.from_pretrained(str(final))
    fmt = ChatFormat(tok, tool_schemas())
    examples, _ = encode_sft_examples(sample_conversations, fmt, max_length=512)

    def data_loss(model_dir: Path) -> float:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for ids, labels in examples:
                logits = model(torch.tensor([ids])).logits[0, :-1]
                target = torch.tensor(labels[1:])
                total += float(torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE,
                                                                 reduction="sum"))
                n += int((target != IGNORE).sum())
        return total / n

    before, after = data_loss(tiny_model_dir), data_loss(final)
    assert after < 0.5 * before, (before, after)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["steps"] == 30


@pytest.mark.slow
def test_resume_after_kill_reproduces_the_run(tiny_model_dir, sample_conversations, tmp_path):
    """Kill after step 6 (newest checkpoint: step 4), rerun: training resumes at step 4, rewrites steps 5-6 once,
    and ends exactly where the uninterrupted run ended."""
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "sft.jsonl", sample_conversations)
    cfg = SFTConfig(lr=3e-3, warmup_steps=2, batch_size=4, max_steps=8, checkpoint_every=4, max_length=512)
    full = tmp_path / "full"
    train_sft(tiny_model_dir, data, full, cfg, progress=False)
    ref = read_metrics(full)
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == ["step_4", "step_8"]

    # The state a kill -9 after step 6 leaves behind: checkpoint step_4, metrics up to 6 (last line cut).
    killed = tmp_path / "killed"
    shutil.copytree(full, killed)
    shutil.rmtree(killed / "checkpoints" / "step_8")
    shutil.rmtree(killed / "final")
    (killed / "summary.json").unlink()
    # Mark the surviving rows: rows up to the checkpoint must be kept, later ones rewritten by the rerun.
    lines = [json.dumps({**json.loads(x), "before_kill": True}) for x in
             (killed / "metrics.jsonl").read_text().splitlines()[:6]]
    (killed / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 7, "lo')
    summary = train_sft(tiny_model_dir, data, killed, cfg, progress=False)

    rows = read_metrics(killed)
    assert [r["step"] for r in rows] == list(range(1, 9))  # no duplicate, no missing step
    assert [r.get("before_kill", False) for r in rows] == [True] * 4 + [False] * 4  # resumed at step 4
    assert summary["steps"] == 8
    for a, b in zip(rows, ref):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), (a["step"], a["loss"], b["loss"])
        assert a["lr"] == b["lr"]
    m_full = AutoModelForCausalLM.from_pretrained(str(full / "final"))
    m_res = AutoModelForCausalLM.from_pretrained(str(killed / "final"))
    for (name, p), q in zip(m_full.named_parameters(), m_res.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name

    # Asking for more steps continues from the last checkpoint (step 8), not from scratch.
    longer = SFTConfig(**{**cfg.__dict__, "max_steps": 10})
    summary = train_sft(tiny_model_dir, data, killed, longer, progress=False)
    rows = read_metrics(killed)
    assert summary["steps"] == 10 and [r["step"] for r in rows] == list(range(1, 11))
    assert [r.get("before_kill", False) for r in rows[:4]] == [True] * 4  # not retrained from scratch
    assert rows[7]["loss"] == pytest.approx(ref[7]["loss"], rel=1e-5, abs=1e-6)


def test_bad_input_is_reported(tiny_model_dir, sample_conversations, tmp_path):
    data = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": sample_conversations[0]})
    data.write_text(f"{good}\n\n{good}\n{{not json\n")
    cfg = SFTConfig(max_steps=1, batch_size=2)
    with pytest.raises(ValueError, match=r"bad\.jsonl:4: not valid JSON"):
        train_sft(tiny_model_dir, data, tmp_path / "out", cfg, progress=False)
    data.write_text(good + "\n")
    with pytest.raises(ValueError, match="no usable conversations"):
        train_sft(tiny_model_dir, data, tmp_path / "out", SFTConfig(max_steps=1, max_length=10), progress=False)
    with pytest.raises(ValueError, match="unknown field"):
        SFTConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="sft.max_steps"):
        SFTConfig.from_dict({"max_steps": 0})


def test_bad_conversations_are_named(tiny_tokenizer, sample_conversations):
    fmt = ChatFormat(tiny_tokenizer, tool_schemas())
    with pytest.raises(ValueError, match="no prompt"):
        encode_sft_examples([[{"role": "assistant", "content": "hi"}]], fmt, max_length=512)
    orphan = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "tool", "content": "1"}]
    with pytest.raises(ValueError, match="message 2: tool message without a preceding tool call"):
        encode_sft_examples([orphan], fmt, max_length=512)
    no_result = sample_conversations[0][:2]
    with pytest.raises(ValueError, match="no tool message follows"):
        encode_sft_examples([no_result], fmt, max_length=512)


def test_lr_schedule():
    from cleaner.train.common import lr_at

    lrs = [lr_at(s, base_lr=1.0, warmup_steps=4, total_steps=14, min_lr_ratio=0.1) for s in range(16)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == pytest.approx(1.0) and lrs[9] == pytest.approx(0.55) and lrs[14] == pytest.approx(0.1)
    assert lrs[15] == pytest.approx(0.1) and all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lr_at(7, base_lr=2.0, warmup_steps=0, total_steps=10, schedule="constant") == 2.0
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_at(7, base_lr=1.0, warmup_steps=0, total_steps=10, schedule="linear")
