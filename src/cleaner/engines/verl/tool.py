"""The ``code_interpreter`` tool as a verl 0.9.1 ``BaseTool`` over :mod:`cleaner.sandbox`.

Both arms of the paper's comparison use this one interpreter: verl's stock ``tool_agent`` (the "tools baseline")
calls :meth:`CodeInterpreterTool.execute` per tool call, and :class:`cleaner.engines.verl.agent_loop.CleanerAgentLoop`
(the CLEANER arm) takes the tool's sandbox pool and runs :func:`cleaner.agent.run_agent` over it. The response
text is :func:`cleaner.protocol.format_exec_result` (stdout on success, the middle-truncated traceback on failure,
256 characters in the reference), so both arms show the model the same tool output.

verl builds tools from a YAML file (``actor_rollout_ref.rollout.multi_turn.tool_config_path``), once per agent-loop
worker process, and hands the same instances to every trajectory. The tool therefore owns one
:func:`cleaner.sandbox.shared_sandbox`, the process's one pool (also used by code rewards in that process), started
on first use and shared by all trajectories of that worker.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

from cleaner.chat import ChatFormat
from cleaner.prompts import CODE_INTERPRETER_TOOL
from cleaner.protocol import format_exec_result, format_malformed_call

__all__ = ["CodeInterpreterTool", "ToolSettings"]


@dataclass(frozen=True)
class ToolSettings:
    """The ``config:`` block of the tool's YAML entry (besides verl's own ``type: native``).

    Defaults are the paper's: 10 s per run, 1 GiB memory, tool output middle-truncated to 256 characters.
    """

    timeout_s: float = 10.0
    memory_mb: int = 1024
    max_tool_response_chars: int = 256
    workers: int = 8

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> "ToolSettings":
        data = {k: v for k, v in dict(config or {}).items() if k != "type"}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"code_interpreter tool config: unknown field(s) {unknown}; known: {sorted(known)}")
        settings = cls(**data)
        if settings.timeout_s <= 0 or settings.memory_mb <= 0:
            raise ValueError("code_interpreter tool config: timeout_s and memory_mb must be > 0")
        if settings.max_tool_response_chars < 32 or settings.workers < 1:
            raise ValueError("code_interpreter tool config: max_tool_response_chars >= 32 and workers >= 1 required")
        return settings


class CodeInterpreterTool(BaseTool):
    """verl ``BaseTool`` running the model's Python in :class:`cleaner.sandbox.Sandbox` (the paper's interpreter).

    ``execute`` returns ``(ToolResponse(text), 0.0, {"status": ..., "ok": ...})``: no step reward (the paper's
    reward is outcome-only), and the sandbox status as the tool metric. A call without a string ``code`` argument
    is answered like the agent loop answers a malformed call (``Error: ...``), never raised.
    """

    def __init__(self, config: dict, tool_schema: OpenAIFunctionToolSchema | None = None):
        if tool_schema is None:
            tool_schema = OpenAIFunctionToolSchema.model_validate(CODE_INTERPRETER_TOOL)
        self.settings = ToolSettings.from_config(config)
        self._sandbox: Any = None
        self._formats: dict[int, tuple[Any, ChatFormat]] = {}
        super().__init__(config, tool_schema)

    def chat_format(self, tokenizer: Any) -> ChatFormat:
        """The :class:`cleaner.chat.ChatFormat` of ``tokenizer`` with this tool's schema, built once per worker.

        verl builds one agent loop per trajectory; building a ChatFormat reads the whole vocabulary (150k entries
        for Qwen), so the per-worker tool keeps it.
        """
        cached = self._formats.get(id(tokenizer))
        if cached is None or cached[0] is not tokenizer:
            schema = self.tool_schema.model_dump(exclude_unset=True, exclude_none=True)
            cached = (tokenizer, ChatFormat(tokenizer, [schema]))
            self._formats[id(tokenizer)] = cached
        return cached[1]

    @property
    def sandbox(self) -> Any:
        """The process's :func:`cleaner.sandbox.shared_sandbox` pool (started on first use with ``workers``
        servers; usable from any event loop)."""
        if self._sandbox is None or self._sandbox.closed:
            from cleaner.sandbox import shared_sandbox

            self._sandbox = shared_sandbox(self.settings.workers)
        return self._sandbox

    async def run_code(self, code: str) -> tuple[str, bool, str]:
        """Run ``code``; returns (tool response text, ok, sandbox status)."""
        res = await self.sandbox.run(code, timeout_s=self.settings.timeout_s, memory_mb=self.settings.memory_mb)
        return format_exec_result(res, max_chars=self.settings.max_tool_response_chars), bool(res.ok), res.status

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs) -> tuple[ToolResponse, float, dict]:
        code = parameters.get("code") if isinstance(parameters, Mapping) else None
        if not isinstance(code, str):
            text = format_malformed_call("the call has no string 'code' argument")
            return ToolResponse(text=text), 0.0, {"status": "malformed", "ok": False}
        text, ok, status = await self.run_code(code)
        return ToolResponse(text=text), 0.0, {"status": status, "ok": ok}

    def close(self) -> None:
        """Let go of the pool (idempotent); the shared pool itself closes at interpreter exit."""
        self._sandbox = None
