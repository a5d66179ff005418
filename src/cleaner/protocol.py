"""Tool-call protocol of Qwen/hermes-style chat templates (CLEANER.md, "The method", steps 2-3).

An assistant turn is free reasoning text followed by at most one executed tool call::

    reasoning ... <tool_call>{"name": "code_interpreter", "arguments": {"code": "..."}}</tool_call>

or a final answer containing ``\\boxed{...}``. Tool results go back to the model wrapped as
``<tool_response>\\n...\\n</tool_response>`` (the layout the Qwen chat templates use for ``role: tool``).

Conventions this module fixes (and the agent relies on):

* Only the FIRST ``<tool_call>`` of a turn is executed. The generator stops at ``</tool_call>``, so text
  after the closing tag is never seen by the agent; :func:`parse_assistant` ignores it.
* ``arguments`` may be a JSON object or a JSON string holding an object (some models double-encode).
* A call the agent cannot run is *malformed*: not valid JSON, JSON that is not an object, a tool name other
  than ``code_interpreter``, no non-empty ``code`` string, or an unclosed ``<tool_call>`` tag. A malformed
  call counts as a failed tool call (CLEANER.md step 2); :func:`format_malformed_call` is the text the model
  receives for it.
* Tool output is middle-truncated to ``max_chars`` characters (reference: 256) so both the start of the
  output and the end of a traceback survive; the marker ``...<N chars truncated>...`` counts towards the
  limit, so a truncated text is never longer than ``max_chars``.
* :func:`looks_like_error` is THE rule for deciding from text alone that a tool run failed (used for logged
  trajectories without a ``status`` field); see its docstring.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

TOOL_NAME = "code_interpreter"
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"
DEFAULT_MAX_TOOL_RESPONSE_CHARS = 256
"""Reference (Open-CLEANER) ``max_tool_response_length``: 256 characters, middle truncation."""

MIN_TRUNCATION_CHARS = 32
"""Smallest ``max_chars`` accepted: room for the truncation marker plus a little text on each side."""

EXEC_STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "sandbox_error")


@dataclass(frozen=True)
class ToolCall:
    """A well-formed ``code_interpreter`` call.

    ``code`` has a surrounding ```python fence removed; ``raw`` is the exact text between the tags;
    ``arguments`` is the decoded arguments object (after undoing a double encoding).
    """

    name: str
    code: str
    raw: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ParsedTurn:
    """One parsed assistant turn.

    Fields:
        text: the full turn text as given.
        reasoning: text before ``<tool_call>``; the whole text when the turn has no call tag.
        call: the executable call, or None (no call, or a malformed one).
        malformed: why the call segment cannot be executed, or None.
        call_span: ``(start, end)`` character offsets of ``<tool_call>...</tool_call>`` including both
            tags, so ``text[start:end]`` is the call segment. Also set for a located-but-malformed call;
            None when there is no call tag and for an UNCLOSED tag (there is no segment to replace: the
            turn is then handled as a whole, i.e. deep replacement, CLEANER.md step 4).
        answer: content of the last complete ``\\boxed{...}`` in the text the agent considers (the text
            before the call segment when there is one, else the whole turn), or None.
    """

    text: str
    reasoning: str
    call: ToolCall | None
    malformed: str | None
    call_span: tuple[int, int] | None
    answer: str | None

    @property
    def has_call(self) -> bool:
        """True when the turn holds an executable tool call."""
        return self.call is not None

    @property
    def attempted_call(self) -> bool:
        """True when the turn tried to call the tool (well-formed or malformed): the agent must respond."""
        return self.call is not None or self.malformed is not None


class MalformedCallError(ValueError):
    """Raised by :func:`parse_tool_call_json` for a call the agent cannot execute."""


_FENCE_RE = re.compile(r"\A\s*```[ \t]*(?:python3?|py)?[ \t]*\n(?P<body>.*?)\n?[ \t]*```\s*\Z", re.DOTALL)


def strip_code_fence(code: str) -> str:
    """Remove one ```python (or ```py / bare ```) fence that wraps the WHOLE code string.

    Models sometimes put a markdown fence inside the ``code`` argument; the interpreter would reject it.
    Code that merely contains a fence somewhere inside is returned unchanged.
    """
    match = _FENCE_RE.match(code)
    return match.group("body") if match else code


def parse_tool_call_json(raw: str, *, tool_name: str = TOOL_NAME) -> ToolCall:
    """Decode the JSON between ``<tool_call>`` tags into a :class:`ToolCall`.

    Raises MalformedCallError with a reason the model can read (see :func:`format_malformed_call`).
    """
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MalformedCallError(
            f"tool call is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(obj, dict):
        raise MalformedCallError(f"tool call must be a JSON object, got {type(obj).__name__}")
    name = obj.get("name")
    if not isinstance(name, str):
        raise MalformedCallError("tool call has no 'name' string")
    if name != tool_name:
        raise MalformedCallError(f"unknown tool {name!r}; the only tool is {tool_name!r}")
    arguments = decode_arguments(obj.get("arguments"))
    code = arguments.get("code")
    if not isinstance(code, str):
        raise MalformedCallError("tool call arguments have no 'code' string")
    code = strip_code_fence(code)
    if not code.strip():
        raise MalformedCallError("tool call 'code' is empty")
    return ToolCall(name=name, code=code, raw=raw, arguments=arguments)


def decode_arguments(arguments: Any) -> dict[str, Any]:
    """Return tool-call arguments as a dict; accepts a dict or a JSON string of a dict (double encoding)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise MalformedCallError(f"tool call arguments are not valid JSON: {exc.msg}") from None
    if arguments is None:
        raise MalformedCallError("tool call has no 'arguments'")
    if not isinstance(arguments, dict):
        raise MalformedCallError(f"tool call arguments must be an object, got {type(arguments).__name__}")
    return arguments


def parse_assistant(text: str, *, tool_name: str = TOOL_NAME) -> ParsedTurn:
    """Parse an assistant turn: reasoning, the first tool call (or why it is malformed), and the answer.

    See :class:`ParsedTurn` for the fields; the character offsets let callers locate the call segment
    for a shallow replacement (CLEANER.md step 4).
    """
    if not isinstance(text, str):
        raise TypeError(f"assistant text must be str, got {type(text).__name__}")
    start = text.find(TOOL_CALL_OPEN)
    if start < 0:
        return ParsedTurn(text, text, None, None, None, extract_boxed(text))
    reasoning = text[:start]
    answer = extract_boxed(reasoning)
    body_start = start + len(TOOL_CALL_OPEN)
    close = text.find(TOOL_CALL_CLOSE, body_start)
    if close < 0:
        return ParsedTurn(text, reasoning, None, f"unclosed {TOOL_CALL_OPEN} tag", None, answer)
    span = (start, close + len(TOOL_CALL_CLOSE))
    raw = text[body_start:close]
    try:
        call = parse_tool_call_json(raw, tool_name=tool_name)
    except MalformedCallError as exc:
        return ParsedTurn(text, reasoning, None, str(exc), span, answer)
    return ParsedTurn(text, reasoning, call, None, span, answer)


_BOXED_RE = re.compile(r"\\boxed\s*\{")


def extract_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (also ``\\boxed {...}``), braces nested.

    Escaped braces ``\\{`` / ``\\}`` are literal and do not open or close a group. A ``\\boxed`` nested
    inside another is part of the outer content, not a separate candidate. An unclosed ``\\boxed{`` is
    ignored (the previous complete one wins); None when there is none.
    """
    last: str | None = None
    pos = 0
    while True:
        match = _BOXED_RE.search(text, pos)
        if match is None:
            return last
        depth = 1
        i = match.end()
        while i < len(text):
            ch = text[i]
            if ch == "\\":
                i += 2
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        if depth != 0:
            return last
        last = text[match.end() : i]
        pos = i + 1


def truncate_middle(text: str, max_chars: int | None = DEFAULT_MAX_TOOL_RESPONSE_CHARS) -> str:
    """Keep the head and tail of ``text`` so the result has at most ``max_chars`` characters.

    The removed middle is replaced by ``...<N chars truncated>...`` where N is the exact number of removed
    characters; the marker counts towards ``max_chars``. The tail gets the larger half (a traceback's last
    line names the error). ``max_chars=None`` disables truncation.
    """
    if max_chars is None or len(text) <= max_chars:
        return text
    if max_chars < MIN_TRUNCATION_CHARS:
        raise ValueError(f"max_chars must be >= {MIN_TRUNCATION_CHARS} or None, got {max_chars}")
    removed = len(text) - max_chars
    while True:  # the marker's length depends on the digits of N; converges in <= 2 steps
        marker = f"...<{removed} chars truncated>..."
        keep = max_chars - len(marker)
        new_removed = len(text) - keep
        if new_removed == removed:
            break
        removed = new_removed
    head = keep // 2
    tail = keep - head
    return text[:head] + marker + text[len(text) - tail :]


def render_tool_response(result_text: str, *, max_chars: int | None = DEFAULT_MAX_TOOL_RESPONSE_CHARS) -> str:
    """``<tool_response>\\n{text}\\n</tool_response>`` with the text middle-truncated to ``max_chars``.

    ``max_chars`` bounds the text between the tags (as the reference bounds the tool output); the tags and
    the two newlines add ``len(TOOL_RESPONSE_OPEN) + len(TOOL_RESPONSE_CLOSE) + 2`` characters. Use this when
    building the prompt by hand; with a chat template pass the truncated text as a ``role: tool`` message.
    """
    return f"{TOOL_RESPONSE_OPEN}\n{truncate_middle(result_text, max_chars)}\n{TOOL_RESPONSE_CLOSE}"


_TRACEBACK = "Traceback (most recent call last)"
_ERROR_LINE_RE = re.compile(
    r"^(?:"
    r"[A-Za-z_][\w.]*(?:Error|Exception)(?::|$)"  # NameError: ..., foo.BarException: ..., bare MemoryError
    r"|(?:Error|Exception):"  # our own prefix ("Error: timeout after 5.0s") and bare "Exception:"
    r"|Timeout\b|Timed out\b"  # sandbox timeout messages
    r"|Tool call failure\b"  # the reference agent's message for unparseable calls (logged data)
    r")",
    re.MULTILINE,
)


def looks_like_error(text: str) -> bool:
    """Decide from a tool response's TEXT alone whether the run failed.

    The rule (used only when a logged tool message has no ``status`` field):
      * the text contains ``Traceback (most recent call last)``; or
      * a line STARTS (no indentation) with an exception name ending in ``Error`` or ``Exception`` followed
        by ``:`` or the end of the line (``NameError: ...``, ``pkg.CustomError: ...``, ``MemoryError``), or
        with ``Error:`` / ``Exception:`` (this project's sandbox prefix, see :func:`format_exec_result`); or
      * a line starts with ``Timeout`` / ``Timed out`` (sandbox timeouts) or ``Tool call failure``
        (the reference agent's malformed-call message).
    Warnings (``DeprecationWarning: ...``) and indented mentions are not failures, matching the reference
    (stderr on an exit-0 run is not a failure). A program that prints ``Error: ...`` itself is classified
    as failed; logged data with a ``status`` field avoids that ambiguity.
    """
    if not text:
        return False
    return _TRACEBACK in text or _ERROR_LINE_RE.search(text) is not None


class ExecResultLike(Protocol):
    """The attributes of ``cleaner.sandbox.ExecResult`` that :func:`format_exec_result` reads."""

    ok: bool
    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    error_type: str | None
    duration_s: float


def _status_line(result: ExecResultLike) -> str:
    status = result.status
    if status == "timeout":
        return f"Error: timeout after {float(result.duration_s):.1f}s"
    if status == "memory":
        return "Error: MemoryError (memory limit exceeded)"
    if status == "output_limit":
        return "Error: output limit exceeded"
    if status == "sandbox_error":
        return "Error: sandbox failure (the code could not be run)"
    if result.error_type:
        return f"Error: {result.error_type} (exit code {result.exit_code})"
    return f"Error: process exited with code {result.exit_code}"


def format_exec_result(result: ExecResultLike, *, max_chars: int | None = DEFAULT_MAX_TOOL_RESPONSE_CHARS) -> str:
    """Text the model receives for one sandbox run (the content of the tool message, without tags).

    Duck-typed on ``ExecResult(ok, status, exit_code, stdout, stderr, error_type, duration_s)``.
      * success: stdout, or ``(no output)`` when empty; stderr of an exit-0 run is not shown.
      * failure: stdout then stderr (the traceback), middle-truncated so the traceback's tail survives. When
        that text does not itself show the error (no traceback, a non-"error" status, or truncation cut the
        error line), a status line such as ``Error: timeout after 5.0s`` is appended inside the budget.
    The result is at most ``max_chars`` characters, and ``looks_like_error`` is True for every failure text.
    (A SUCCESSFUL run whose stdout itself prints a traceback also looks like an error; the model sees its
    output unchanged, so logs written by this project carry the ``status`` field to stay exact.)
    """
    if result.status not in EXEC_STATUSES:
        raise ValueError(f"result.status must be one of {EXEC_STATUSES}, got {result.status!r}")
    if result.ok:
        return truncate_middle(result.stdout or "(no output)", max_chars)
    body = "\n".join(part.rstrip("\n") for part in (result.stdout, result.stderr) if part)
    if result.status == "error" and body:
        text = truncate_middle(body, max_chars)
        if looks_like_error(text):
            return text
    status = _status_line(result)
    if not body:
        return truncate_middle(status, max_chars)
    if max_chars is None:
        return f"{body}\n{status}"
    budget = max_chars - len(status) - 1
    if budget < MIN_TRUNCATION_CHARS:
        return truncate_middle(status, max_chars)
    return f"{truncate_middle(body, budget)}\n{status}"


def format_malformed_call(reason: str) -> str:
    """Tool response for a call that could not be executed, e.g. ``Error: tool call is not valid JSON: ...``."""
    return f"Error: {reason}"


def render_tool_call(code: str, *, tool_name: str = TOOL_NAME) -> str:
    """Canonical call segment for ``code``: ``<tool_call>\\n{json}\\n</tool_call>`` (Qwen template layout).

    Used to build whole-call text for similarity on ``on="call"`` and to write SFT/test trajectories.
    """
    payload = json.dumps({"name": tool_name, "arguments": {"code": code}}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{payload}\n{TOOL_CALL_CLOSE}"
