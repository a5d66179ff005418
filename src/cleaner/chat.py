"""Token-level chat format shared by the agent loop, the SFT trainer and the verl adapter.

A trajectory is built from segments, never by re-tokenising generated text (verl's agent-loop rule):

- prompt: the chat template applied to the system/user messages with the tools, plus the generation prompt
  (``<|im_start|>assistant\\n``);
- assistant turn (loss mask 1): reasoning text, then either ``\\n<tool_call>\\n{json}\\n</tool_call>`` (the generator
  stops at ``</tool_call>``) or a final answer ending in ``<|im_end|>``;
- tool response (loss mask 0): ``<|im_end|>\\n<|im_start|>user\\n<tool_response>\\n...\\n</tool_response><|im_end|>\\n
  <|im_start|>assistant\\n`` -- it closes the assistant turn, carries the result and opens the next turn.

Concatenated, the segments decode to exactly what the chat template renders for the whole conversation (tested),
so SFT data, rollouts and evaluation all see one format. SFT builds its masks with :meth:`ChatFormat.encode_messages`,
the same segment builders the agent uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from cleaner.protocol import decode_arguments, render_tool_call

__all__ = ["ChatFormat", "EncodedConversation", "tool_call_code"]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
END_OF_TURN = "<|im_end|>"


def tool_call_code(tool_call: dict) -> str:
    """The ``code`` argument of an OpenAI-style tool call (arguments as a dict or a JSON string)."""
    fn = tool_call.get("function", tool_call)
    args = decode_arguments(fn.get("arguments", {}))
    if not isinstance(args.get("code"), str):
        raise ValueError(f"tool call has no string 'code' argument: {tool_call!r}")
    return args["code"]


@dataclass
class EncodedConversation:
    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]  # 1 = model token (trained), 0 = tool/template token


class ChatFormat:
    """Segment builders over a HF tokenizer with a Qwen-style chat template."""

    def __init__(self, tokenizer: Any, tools: Sequence[dict] | None = None):
        self.tokenizer = tokenizer
        self.tools = list(tools) if tools else None
        vocab = tokenizer.get_vocab()
        missing = [t for t in (TOOL_CALL_OPEN, TOOL_CALL_CLOSE, END_OF_TURN) if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks the tool-format tokens {missing}; is it a Qwen-style tokenizer?")
        self.tool_call_open_id = vocab[TOOL_CALL_OPEN]
        self.tool_call_close_id = vocab[TOOL_CALL_CLOSE]
        self.end_of_turn_id = vocab[END_OF_TURN]
        stops = [self.tool_call_close_id, self.end_of_turn_id]
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stops:
            stops.append(tokenizer.eos_token_id)
        if "<|endoftext|>" in vocab and vocab["<|endoftext|>"] not in stops:
            stops.append(vocab["<|endoftext|>"])
        self.stop_token_ids: tuple[int, ...] = tuple(stops)

    # -- encoding ---------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def prompt_ids(self, messages: Sequence[dict], *, tools: bool = True) -> list[int]:
        """Chat template over the leading system/user messages plus the generation prompt."""
        text = self.tokenizer.apply_chat_template(
            list(messages), tools=self.tools if tools else None, add_generation_prompt=True, tokenize=False
        )
        return self.encode(text)

    def assistant_text(self, content: str, code: str | None) -> str:
        """An assistant turn as the model emits it (without the closing ``<|im_end|>`` of a call turn)."""
        if code is None:
            return content + END_OF_TURN
        return (content + "\n" if content else "") + render_tool_call(code)

    def tool_response_text(self, text: str) -> str:
        return (
            f"{END_OF_TURN}\n<|im_start|>user\n<tool_response>\n{text}\n</tool_response>{END_OF_TURN}\n"
            "<|im_start|>assistant\n"
        )

    def tool_response_ids(self, text: str) -> list[int]:
        return self.encode(self.tool_response_text(text))

    def encode_messages(self, messages: Sequence[dict], *, tools: bool = True) -> EncodedConversation:
        """Encode a logged conversation (OpenAI chat format) into prompt ids + response ids + loss mask.

        Everything up to the first assistant message is the prompt. Assistant turns are mask 1, tool messages
        (wrapped as in :meth:`tool_response_text`) mask 0. Only the first tool call of a turn is kept: the agent
        executes one call per turn. An assistant message with ``"train": false`` is context only (mask 0): the
        testbed's recovery demonstrations show a failed call without training the model to make it.
        """
        first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), None)
        if first is None:
            raise ValueError("conversation has no assistant message")
        if first == 0:
            raise ValueError("conversation has no prompt: no system/user message before the first assistant message")
        prompt = self.prompt_ids(messages[:first], tools=tools)
        ids: list[int] = []
        mask: list[int] = []
        rest = list(messages[first:])
        for k, msg in enumerate(rest):
            role = msg.get("role")
            if role == "assistant":
                calls = msg.get("tool_calls") or []
                code = tool_call_code(calls[0]) if calls else None
                seg = self.encode(self.assistant_text(msg.get("content") or "", code))
                ids += seg
                mask += [0 if msg.get("train") is False else 1] * len(seg)
                if code is not None and (k + 1 >= len(rest) or rest[k + 1].get("role") != "tool"):
                    raise ValueError(f"assistant message {first + k} calls a tool but no tool message follows")
            elif role == "tool":
                prev = rest[k - 1] if k > 0 else {}
                if not (prev.get("role") == "tool" or (prev.get("role") == "assistant" and prev.get("tool_calls"))):
                    raise ValueError(f"message {first + k}: tool message without a preceding tool call")
                seg = self.tool_response_ids(str(msg.get("content") or ""))
                ids += seg
                mask += [0] * len(seg)
            else:
                raise ValueError(f"message {first + k}: unexpected role {role!r} after the first assistant turn")
        return EncodedConversation(prompt, ids, mask)
