"""Shared fixtures: a tiny tokenizer and model in the testbed's format (built once per test session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cleaner.prompts import tool_schemas


def _sample_conversations() -> list[list[dict]]:
    def call(code: str) -> list[dict]:
        return [{"type": "function", "function": {"name": "code_interpreter", "arguments": {"code": code}}}]

    convs = []
    for a, b in [(12, 34), (56, 78), (91, 23), (45, 67)]:
        convs.append([
            {"role": "user", "content": f"What is {a} * {b}?\nPut the final answer in \\boxed{{}}."},
            {"role": "assistant", "content": "I will multiply.", "tool_calls": call(f"print({a} * {b})")},
            {"role": "tool", "content": str(a * b)},
            {"role": "assistant", "content": f"\\boxed{{{a * b}}}"},
        ])
        convs.append([
            {"role": "user", "content": f"What is {a} + {b}?"},
            {"role": "assistant", "content": "Let me add.", "tool_calls": call(f"print(x + {b})")},
            {"role": "tool", "content": "Traceback (most recent call last):\nNameError: name 'x' is not defined"},
            {"role": "assistant", "content": "Fix the name.", "tool_calls": call(f"print({a} + {b})")},
            {"role": "tool", "content": str(a + b)},
            {"role": "assistant", "content": f"The answer is \\boxed{{{a + b}}}"},
        ])
    return convs


@pytest.fixture(scope="session")
def sample_conversations() -> list[list[dict]]:
    return _sample_conversations()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A seeded, untrained tiny Qwen3 model + BPE tokenizer with the testbed chat template."""
    from cleaner.testbed.model import TinyModelConfig, init_model
    from cleaner.testbed.tokenizer import render_chat, train_tokenizer

    texts = [render_chat(m, tool_schemas()) for m in _sample_conversations()] * 5
    texts += ["print(undefined_name)\nimport math\nfor i in range(10):\n    total += i"] * 5
    root = tmp_path_factory.mktemp("tiny")
    tok = train_tokenizer(texts, root / "tok", vocab_size=400)
    out = root / "model"
    init_model(tok, TinyModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=2, head_dim=32), seed=0, out_dir=out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture()
def chat_format(tiny_tokenizer):
    from cleaner.chat import ChatFormat

    return ChatFormat(tiny_tokenizer, tool_schemas())
