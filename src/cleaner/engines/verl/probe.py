"""First-GPU checks of what the CPU tests cannot see: the real chat template, and SGLang's stop token and seed.

``cleaner verl probe --model <HF dir or id>`` runs three checks and prints one line each (exit code 1 if any fails):

1. ``template``: our token-level chat format (:class:`cleaner.chat.ChatFormat`: prompt, assistant turns, tool
   responses built segment by segment) decodes to exactly what the model's own chat template renders for a
   conversation with a tool call (CPU; the tests check it for the testbed tokenizer only).
2. ``stop``: SGLang keeps the stop token ``</tool_call>`` at the end of ``output_ids`` (the agent loop splits turns
   there; verl's stock tool agent relies on the same). Greedy generation of a prompt that asks for a tool call.
3. ``seed``: the per-request seed field SGLang honours: for each candidate key, two requests with the same seed at
   temperature 1.0 must give the same tokens and a different seed different ones. The first key that passes is the
   value for ``verl.request_seed_key``.

Checks 2-3 start an offline ``sglang.Engine`` (one GPU, ``skip_tokenizer_init``), the engine verl's SGLang server
wraps; their requests carry the sampling keys verl sends (``stop_token_ids``, ``max_new_tokens``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from cleaner.chat import ChatFormat
from cleaner.prompts import aime_user_prompt, tool_schemas

__all__ = ["SEED_KEYS", "sample_conversation", "seed_problem", "stop_problem", "template_problem"]

SEED_KEYS = ("sampling_seed", "seed")
Generate = Callable[[list[int], dict[str, Any]], list[int]]


def sample_conversation() -> list[dict[str, Any]]:
    """A user question, an assistant turn with a tool call, its tool response and a final answer."""
    call = {"type": "function", "function": {"name": "code_interpreter", "arguments": {"code": "print(2 ** 10)"}}}
    return [
        {"role": "user", "content": aime_user_prompt("What is 2 to the power 10?")},
        {"role": "assistant", "content": "Let me compute it.", "tool_calls": [call]},
        {"role": "tool", "content": "1024"},
        {"role": "assistant", "content": "The answer is \\boxed{1024}."},
    ]


def template_problem(tokenizer: Any) -> str | None:
    """None when ChatFormat's segments decode to the chat template's rendering of :func:`sample_conversation`."""
    fmt = ChatFormat(tokenizer, tool_schemas())
    messages = sample_conversation()
    enc = fmt.encode_messages(messages)
    ours = fmt.decode(enc.prompt_ids + enc.response_ids)
    theirs = tokenizer.apply_chat_template(messages, tools=tool_schemas(), tokenize=False)
    if ours.rstrip() == theirs.rstrip():
        return None
    at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return f"segments differ from the chat template at character {at}: ours {ours[at:at + 60]!r}, " \
           f"template {theirs[at:at + 60]!r}"


def stop_problem(generate: Generate, fmt: ChatFormat) -> str | None:
    """None when a greedy generation that calls the tool ends its ``output_ids`` with ``</tool_call>``."""
    prompt = fmt.prompt_ids(sample_conversation()[:1])
    ids = generate(prompt, {"temperature": 0.0, "max_new_tokens": 2048,
                            "stop_token_ids": list(fmt.stop_token_ids)})
    if not ids:
        return "the engine returned no tokens"
    if ids[-1] == fmt.tool_call_close_id:
        return None
    if fmt.tool_call_open_id in ids:
        return (f"the model opened a tool call but output_ids end with {fmt.decode(ids[-3:])!r}, not "
                "</tool_call>: the stop token is trimmed")
    return f"the model answered without a tool call ({fmt.decode(ids[-40:])!r}); try another prompt or model"


def seed_problem(generate: Generate, fmt: ChatFormat, keys: Sequence[str] = SEED_KEYS) -> tuple[str | None, str | None]:
    """(the first seed key SGLang honours, None) or (None, why none did)."""
    prompt = fmt.prompt_ids(sample_conversation()[:1])
    notes = []
    for key in keys:
        def sample(seed: int) -> list[int]:
            return generate(prompt, {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 64, key: seed})
        try:
            first, again, other = sample(1), sample(1), sample(2)
        except (TypeError, ValueError) as exc:  # the engine refuses the key
            notes.append(f"{key}: refused ({exc})")
            continue
        if first == again and first != other:
            return key, None
        notes.append(f"{key}: same seed equal={first == again}, other seed differs={first != other}")
    return None, "; ".join(notes)


def sglang_generator(model: str) -> tuple[Generate, Callable[[], None]]:
    """``generate(prompt_ids, sampling_params) -> output_ids`` over an offline SGLang engine, and its shutdown."""
    import sglang

    engine = sglang.Engine(model_path=model, skip_tokenizer_init=True, tp_size=1, random_seed=0)

    def generate(prompt_ids: list[int], sampling_params: dict[str, Any]) -> list[int]:
        out = engine.generate(input_ids=list(prompt_ids), sampling_params=dict(sampling_params))
        return [int(t) for t in out["output_ids"]]

    return generate, engine.shutdown


def run_probe(model: str, *, engine: bool = True) -> int:
    """Print one line per check; 0 when every check passed, 1 otherwise."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    failed = 0
    problem = template_problem(tokenizer)
    print(f"template: {'ok' if problem is None else 'FAIL ' + problem}")
    failed += problem is not None
    if not engine:
        return int(failed > 0)
    generate, shutdown = sglang_generator(model)
    try:
        fmt = ChatFormat(tokenizer, tool_schemas())
        stop = stop_problem(generate, fmt)
        print(f"stop: {'ok: output_ids end with </tool_call>' if stop is None else 'FAIL ' + stop}")
        key, seed = seed_problem(generate, fmt)
        print(f"seed: {'ok: set verl.request_seed_key: ' + key if key else 'FAIL ' + str(seed)}")
        failed += (stop is not None) + (key is None)
    finally:
        shutdown()
    return int(failed > 0)
