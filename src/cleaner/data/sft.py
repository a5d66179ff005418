"""Cold-start SFT data: Gen-Verse/Open-AgentRL-SFT-3K -> validated ``{messages, tools}`` rows.

The paper initialises RL from the DemyAgent RA-SFT checkpoint, trained on this set (CLEANER.md, recipe
table). Each row is an OpenAI-style conversation: assistant turns with ``tool_calls``
``[{type: function, function: {name: code_interpreter, arguments: {code}}}]``, answered by ``tool`` messages,
and a ``tools`` column with the code_interpreter schema. Normalisation:

- ``arguments`` stored as a JSON string is decoded to ``{"code": ...}`` (chat templates render a mapping);
- a missing / empty ``tools`` column becomes ``cleaner.prompts.tool_schemas()``; a JSON-string ``tools`` is
  decoded;
- a ``null`` assistant content next to tool calls becomes ``""``; message keys are reduced to
  ``role, content`` (+ ``tool_calls`` on assistant turns).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from cleaner import prompts
from cleaner.data.loaders import BadRow, Loaded, get_field, normalise_rows
from cleaner.data.schema import validate_sft_row
from cleaner.data.sources import DEFAULT_CACHE_DIR, SourceSpec, read_table


def _decode_json_field(value: Any, field: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise BadRow(field, f"not JSON: {value!r:.60}") from None
    return value


def normalise_tool_call(call: Any, field: str) -> dict[str, Any]:
    """One assistant tool call as ``{"type": "function", "function": {"name", "arguments": {"code"}}}``."""
    if not isinstance(call, Mapping):
        raise BadRow(field, "expected a mapping")
    fn = call.get("function")
    if not isinstance(fn, Mapping):
        raise BadRow(f"{field}.function", "missing")
    args = _decode_json_field(fn.get("arguments"), f"{field}.function.arguments")
    if not isinstance(args, Mapping) or not isinstance(args.get("code"), str):
        raise BadRow(f"{field}.function.arguments.code", "expected a string")
    return {"type": "function", "function": {"name": fn.get("name"), "arguments": {"code": args["code"]}}}


def normalise_sft_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A source row -> ``{"messages", "tools"}``; raises ``BadRow`` naming the first broken field."""
    messages = get_field(row, "messages")
    if not isinstance(messages, (list, tuple)) or not messages:
        raise BadRow("messages", "expected a non-empty list")
    out_messages = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise BadRow(f"messages[{i}]", "expected a mapping")
        role = message.get("role")
        content = message.get("content")
        calls = message.get("tool_calls") or []
        out: dict[str, Any] = {"role": role, "content": content if content is not None else ""}
        if role == "assistant":
            out["tool_calls"] = [normalise_tool_call(c, f"messages[{i}].tool_calls[{j}]") for j, c in enumerate(calls)]
        elif calls:
            raise BadRow(f"messages[{i}].tool_calls", f"a {role!r} message cannot call tools")
        out_messages.append(out)
    tools = _decode_json_field(row.get("tools"), "tools")
    if tools is None or (isinstance(tools, (list, tuple)) and len(tools) == 0):
        tools = prompts.tool_schemas()
    if not isinstance(tools, (list, tuple)):
        raise BadRow("tools", "expected a list of tool schemas")
    result = {"messages": out_messages, "tools": [dict(t) if isinstance(t, Mapping) else t for t in tools]}
    problems = validate_sft_row(result)
    if problems:
        field, _, reason = problems[0].partition(": ")
        raise BadRow(field, reason)
    return result


def load_sft(
    source: SourceSpec | Mapping[str, Any] | str,
    *,
    cache_dir: str = str(DEFAULT_CACHE_DIR),
    max_bad_fraction: float = 0.01,
) -> Loaded:
    """Open-AgentRL-SFT-3K (hub or local parquet/jsonl) -> validated SFT rows."""
    table = read_table(source, cache_dir=cache_dir)
    return normalise_rows(
        "sft", table.to_pylist(), list(range(table.num_rows)), lambda row, pos: normalise_sft_row(row),
        max_bad_fraction=max_bad_fraction, uid=None,
    )
