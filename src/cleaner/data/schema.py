"""The normalised RL row (verl parquet) and SFT row, their validation, and atomic parquet output.

An RL row, as verl's ``RLHFDataset`` and our own trainer read it (``docs/data.md``):

- ``data_source: str`` — names the judge family: maths sources, ``train-code-*`` / ``livecodebench`` (code),
  ``gpqa_diamond`` (multiple choice), ...
- ``prompt: list[{role, content}]`` — user message(s) only; the tool schema is rendered by the chat template,
  so no system message carries tool instructions.
- ``ability: str`` — one of ``ABILITIES``.
- ``reward_model: {"style": "rule", "ground_truth": str}``.
- ``extra_info: {"index": str, "source": str, "split": str, ...}`` plus what a judge needs (``fn_name``,
  ``starter_code`` for LiveCodeBench). ``index`` is always a string: one parquet column has one type, and the
  sources mix UUIDs (DAPO) with integers (Skywork).
- ``agent_name: str`` — the agent loop verl dispatches to (default ``tool_agent``).

Evaluation rows use the same schema. Loaders return ``(rows, problems)``; ``check_bad_fraction`` turns too
many problems into a ``DataError`` that names the counts and the first few problems.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from cleaner.fsutil import atomic_write, write_text_atomic

ABILITIES = ("math", "code", "science")
RL_ROW_KEYS = ("data_source", "prompt", "ability", "reward_model", "extra_info", "agent_name")
PROMPT_ROLES = ("system", "user", "assistant")
SFT_ROLES = ("system", "user", "assistant", "tool")
DEFAULT_AGENT_NAME = "tool_agent"


class DataError(ValueError):
    """A data source or file breaks the schema (or the mix recipe cannot be met); the message says how."""


@dataclass(frozen=True)
class RowProblem:
    """One rejected source row: its position in the source, the offending field, and why."""

    source: str
    row: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source} row {self.row}: {self.field}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "row": self.row, "field": self.field, "reason": self.reason}


def _is_str(value: Any, *, nonempty: bool = True) -> bool:
    return isinstance(value, str) and (bool(value.strip()) or not nonempty)


def validate_rl_row(row: Mapping[str, Any]) -> list[str]:
    """Problems of one normalised RL / eval row, as ``"field: reason"`` strings (empty list: valid)."""
    problems: list[str] = []
    if not isinstance(row, Mapping):
        return [f"row: expected a mapping, got {type(row).__name__}"]
    for key in RL_ROW_KEYS:
        if key not in row:
            problems.append(f"{key}: missing")
    extra = sorted(set(row) - set(RL_ROW_KEYS))
    if extra:
        problems.append(f"row: unexpected keys {extra}")
    if "data_source" in row and not _is_str(row["data_source"]):
        problems.append(f"data_source: expected a non-empty string, got {row['data_source']!r}")
    if "prompt" in row:
        prompt = row["prompt"]
        if not isinstance(prompt, (list, tuple)) or not prompt:
            problems.append("prompt: expected a non-empty list of {role, content} messages")
        else:
            for i, message in enumerate(prompt):
                if not isinstance(message, Mapping) or set(message) != {"role", "content"}:
                    problems.append(f"prompt[{i}]: expected exactly the keys role, content")
                    continue
                if message["role"] not in PROMPT_ROLES:
                    problems.append(f"prompt[{i}].role: {message['role']!r} not in {PROMPT_ROLES}")
                if not _is_str(message["content"]):
                    problems.append(f"prompt[{i}].content: expected a non-empty string")
            if isinstance(prompt[-1], Mapping) and prompt[-1].get("role") != "user":
                problems.append("prompt: the last message must be the user's")
    if "ability" in row and row["ability"] not in ABILITIES:
        problems.append(f"ability: {row['ability']!r} not in {ABILITIES}")
    if "reward_model" in row:
        rm = row["reward_model"]
        if not isinstance(rm, Mapping) or set(rm) != {"style", "ground_truth"}:
            problems.append("reward_model: expected exactly the keys style, ground_truth")
        else:
            if rm["style"] != "rule":
                problems.append(f"reward_model.style: expected 'rule', got {rm['style']!r}")
            if not _is_str(rm["ground_truth"]):
                problems.append(f"reward_model.ground_truth: expected a non-empty string, got {rm['ground_truth']!r}")
    if "extra_info" in row:
        info = row["extra_info"]
        if not isinstance(info, Mapping):
            problems.append("extra_info: expected a mapping")
        else:
            for key in ("index", "source", "split"):
                if not _is_str(info.get(key)):
                    problems.append(f"extra_info.{key}: expected a non-empty string, got {info.get(key)!r}")
    if "agent_name" in row and not _is_str(row["agent_name"]):
        problems.append(f"agent_name: expected a non-empty string, got {row['agent_name']!r}")
    return problems


def validate_sft_row(row: Mapping[str, Any]) -> list[str]:
    """Problems of one SFT row ``{"messages": [...], "tools": [...]}`` in OpenAI chat format.

    Assistant tool calls must be ``{"type": "function", "function": {"name": "code_interpreter",
    "arguments": {"code": str}}}`` and every call must be answered by a ``tool`` message.
    """
    problems: list[str] = []
    if set(row) != {"messages", "tools"}:
        problems.append(f"row: expected exactly the keys messages, tools, got {sorted(row)}")
    messages = row.get("messages")
    if not isinstance(messages, (list, tuple)) or not messages:
        return problems + ["messages: expected a non-empty list"]
    pending_calls = 0
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            problems.append(f"messages[{i}]: expected a mapping")
            continue
        role = message.get("role")
        if role not in SFT_ROLES:
            problems.append(f"messages[{i}].role: {role!r} not in {SFT_ROLES}")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            problems.append(f"messages[{i}].content: expected a string or null")
        calls = message.get("tool_calls") or []
        if role != "assistant" and calls:
            problems.append(f"messages[{i}].tool_calls: only assistant messages may call tools")
        for j, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, Mapping) else None
            if not isinstance(fn, Mapping) or fn.get("name") != "code_interpreter":
                problems.append(f"messages[{i}].tool_calls[{j}].function.name: expected 'code_interpreter'")
                continue
            args = fn.get("arguments")
            if not isinstance(args, Mapping) or not isinstance(args.get("code"), str):
                problems.append(f"messages[{i}].tool_calls[{j}].function.arguments.code: expected a string")
        if role == "assistant":
            if pending_calls:
                problems.append(f"messages[{i}]: {pending_calls} tool call(s) before it have no tool response")
            pending_calls = len(calls)
            if not calls and not _is_str(content):
                problems.append(f"messages[{i}]: assistant message with neither content nor tool calls")
        elif role == "tool":
            if pending_calls == 0:
                problems.append(f"messages[{i}]: tool message without a preceding tool call")
            else:
                pending_calls -= 1
    if isinstance(messages[-1], Mapping) and messages[-1].get("role") != "assistant":
        problems.append("messages: the last message must be the assistant's")
    tools = row.get("tools")
    if not isinstance(tools, (list, tuple)) or not any(
        isinstance(t, Mapping) and t.get("function", {}).get("name") == "code_interpreter" for t in tools
    ):
        problems.append("tools: expected a list containing the code_interpreter schema")
    return problems


def row_uid(row: Mapping[str, Any]) -> str:
    """Stable identity of an RL row across files: ``data_source/index`` (keys the difficulty filter's pass
    counts)."""
    return f"{row['data_source']}/{row['extra_info']['index']}"


def check_bad_fraction(name: str, n_total: int, problems: Sequence[RowProblem], max_bad_fraction: float) -> None:
    """Raise ``DataError`` when more than ``max_bad_fraction`` of ``n_total`` source rows were rejected."""
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction must lie in [0, 1], got {max_bad_fraction}")
    if n_total == 0:
        raise DataError(f"{name}: the source has no rows")
    bad_rows = len({p.row for p in problems})
    if bad_rows / n_total > max_bad_fraction:
        head = "; ".join(str(p) for p in problems[:5])
        raise DataError(
            f"{name}: {bad_rows} of {n_total} rows ({bad_rows / n_total:.2%}) break the schema, more than "
            f"max_bad_fraction={max_bad_fraction:.2%}. First problems: {head}"
        )


def write_parquet_atomic(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows (nested dicts/lists) to a parquet file via a temp file + ``os.replace``."""
    if not rows:
        raise DataError(f"refusing to write an empty parquet file: {path}")
    table = pa.Table.from_pylist([dict(r) for r in rows])
    path = Path(path)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp), suffix=".parquet")
    return path


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    """Write a JSON document via a temp file + ``os.replace``."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl_atomic(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write one JSON object per line via a temp file + ``os.replace``."""
    return write_text_atomic(path, "".join(json.dumps(dict(r), ensure_ascii=False, default=str) + "\n" for r in rows))


def write_rl_parquet(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Validate every RL row (and uid uniqueness), then write the parquet file atomically.

    Raises ``DataError`` naming the first invalid rows: rows reaching this writer were already normalised,
    so any problem here is a bug, not bad source data.
    """
    bad: list[str] = []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        row_problems = validate_rl_row(row)
        bad.extend(f"row {i}: {problem}" for problem in row_problems)
        if not row_problems:
            uid = row_uid(row)
            if uid in seen:
                bad.append(f"row {i}: duplicate uid {uid!r} (first at row {seen[uid]})")
            seen.setdefault(uid, i)
    if bad:
        raise DataError(f"{path}: {len(bad)} schema problem(s); first: " + "; ".join(bad[:5]))
    return write_parquet_atomic(rows, path)


def write_sft_parquet(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Validate every SFT row, then write the parquet file atomically."""
    bad = [f"row {i}: {p}" for i, row in enumerate(rows) for p in validate_sft_row(row)]
    if bad:
        raise DataError(f"{path}: {len(bad)} SFT schema problem(s); first: " + "; ".join(bad[:5]))
    return write_parquet_atomic(rows, path)


def read_parquet_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a parquet file as plain Python objects, with ``None`` struct fields (the union of keys
    pyarrow builds for heterogeneous ``extra_info``) dropped again."""
    table = pq.read_table(path)
    return [_drop_none_fields(row) for row in table.to_pylist()]


def _drop_none_fields(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in ("extra_info",):
        if isinstance(out.get(key), dict):
            out[key] = {k: v for k, v in out[key].items() if v is not None}
    return out
