"""The token-level chat format: segments concatenate to exactly what the chat template renders."""

from __future__ import annotations

import pytest

from cleaner.chat import ChatFormat, tool_call_code
from cleaner.prompts import tool_schemas


def test_segments_equal_chat_template(tiny_tokenizer, sample_conversations):
    fmt = ChatFormat(tiny_tokenizer, tool_schemas())
    for messages in sample_conversations:
        enc = fmt.encode_messages(messages)
        full = tiny_tokenizer.apply_chat_template(messages, tools=tool_schemas(), tokenize=False)
        # The template ends the last turn with "<|im_end|>\n"; a trajectory stops at <|im_end|>.
        assert fmt.decode(enc.prompt_ids + enc.response_ids) == full.rstrip("\n")
        assert enc.prompt_ids + enc.response_ids == fmt.encode(full.rstrip("\n"))
        assert len(enc.response_ids) == len(enc.response_mask)


def test_masks_cover_assistant_tokens_only(tiny_tokenizer, sample_conversations):
    fmt = ChatFormat(tiny_tokenizer, tool_schemas())
    enc = fmt.encode_messages(sample_conversations[1])
    trained = fmt.decode([t for t, m in zip(enc.response_ids, enc.response_mask) if m])
    masked = fmt.decode([t for t, m in zip(enc.response_ids, enc.response_mask) if not m])
    assert "Let me add." in trained and "Fix the name." in trained and trained.endswith("<|im_end|>")
    assert trained.count("<tool_call>") == 2 and "<tool_response>" not in trained
    assert "NameError" in masked and "NameError" not in trained
    # A call turn ends at </tool_call>: the closing <|im_end|> belongs to the tool segment (mask 0).
    assert masked.startswith("<|im_end|>\n<|im_start|>user\n<tool_response>\n")


def test_stop_tokens_and_errors(tiny_tokenizer):
    fmt = ChatFormat(tiny_tokenizer, tool_schemas())
    vocab = tiny_tokenizer.get_vocab()
    assert vocab["</tool_call>"] in fmt.stop_token_ids and vocab["<|im_end|>"] in fmt.stop_token_ids
    with pytest.raises(ValueError, match="no assistant message"):
        fmt.encode_messages([{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="no tool message follows"):
        fmt.encode_messages([
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "code_interpreter",
                                                                             "arguments": {"code": "1"}}}]},
        ])
    assert tool_call_code({"function": {"arguments": '{"code": "print(1)"}'}}) == "print(1)"
    with pytest.raises(ValueError):
        tool_call_code({"function": {"arguments": {"cmd": "ls"}}})
