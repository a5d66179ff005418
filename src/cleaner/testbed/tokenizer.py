"""The testbed tokenizer: a small byte-level BPE trained locally, with a Qwen-style chat template.

Digits are always single tokens (a tiny model copies numbers digit by digit far more reliably than it learns
multi-digit merges). The special tokens and the chat template follow Qwen2.5/Qwen3's hermes tool format, so the
agent loop, the SFT trainer and verl treat the testbed model exactly like a real Qwen checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "TOOL_TOKENS", "render_chat", "train_tokenizer"]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Added (not "special") tokens, as in Qwen: they survive skip_special_tokens and are single ids.
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]

# (HF renders templates with trim_blocks: a newline right after a {% %} tag is dropped, hence {{ '\\n' }}.)
# Qwen3-style hermes template. The system block lists each tool as a one-line signature
# (``code_interpreter(code): A tool for executing code.``) instead of Qwen's JSON schema: the schema cost ~70 of
# the ~300 tokens of every testbed sequence, a third of all training compute, and carries nothing a model with
# one tool needs. Tool calls render as
#   <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>
# and tool results as a user turn holding <tool_response>\n...\n</tool_response>.
CHAT_TEMPLATE = (
    "{% if tools %}"
    "<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\n"
    "{% for tool in tools %}{% set fn = tool.function if tool.function is defined else tool %}"
    "{{ fn.name }}({{ fn.parameters.properties | list | join(', ') }}): {{ fn.description }}\n{% endfor %}"
    "Call a tool inside <tool_call></tool_call> tags.<|im_end|>\n"
    "{% elif messages[0].role == 'system' %}"
    "<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'user' %}"
    "<|im_start|>user\n{{ message.content }}<|im_end|>\n"
    "{% elif message.role == 'assistant' %}"
    "<|im_start|>assistant\n{{ message.content or '' }}"
    "{% for tc in message.tool_calls or [] %}"
    "{% if not loop.first or message.content %}{{ '\\n' }}{% endif %}"
    "{% set fn = tc.function if tc.function is defined else tc %}"
    "<tool_call>\n{\"name\": \"{{ fn.name }}\", \"arguments\": "
    "{% if fn.arguments is string %}{{ fn.arguments }}{% else %}{{ fn.arguments | tojson }}{% endif %}"
    "}\n</tool_call>"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% elif message.role == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response><|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def render_chat(messages: list[dict], tools: list[dict] | None, *, add_generation_prompt: bool = False) -> str:
    """Render a conversation with :data:`CHAT_TEMPLATE` as ``apply_chat_template`` would (jinja with HF's
    ``trim_blocks``/``lstrip_blocks`` and ``tojson``), for training the tokenizer before one exists."""
    import json

    from jinja2 import Environment

    env = Environment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False)
    return env.from_string(CHAT_TEMPLATE).render(messages=messages, tools=tools,
                                                 add_generation_prompt=add_generation_prompt)


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, *, vocab_size: int = 1024):
    """Train the BPE on ``texts`` (rendered conversations) and save a HF tokenizer to ``out_dir``.

    Returns the ``PreTrainedTokenizerFast``; ``AutoTokenizer.from_pretrained(out_dir)`` loads the same thing.
    """
    from transformers import PreTrainedTokenizerFast

    n_reserved = len(SPECIAL_TOKENS) + len(TOOL_TOKENS) + 256
    if vocab_size < n_reserved + 16:
        raise ValueError(f"vocab_size={vocab_size} is too small: byte alphabet and special tokens need {n_reserved}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS + TOOL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Tool tags are matched before BPE everywhere (also inside generated text), like Qwen's added tokens.
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.add_tokens(TOOL_TOKENS)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=None,
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    hf.chat_template = CHAT_TEMPLATE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out_dir))
    return hf
