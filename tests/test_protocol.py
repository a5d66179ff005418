"""Tests of cleaner.protocol: parsing assistant turns, malformed calls, boxed answers, tool responses."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from cleaner.protocol import (
    MIN_TRUNCATION_CHARS,
    TOOL_RESPONSE_CLOSE,
    TOOL_RESPONSE_OPEN,
    extract_boxed,
    format_exec_result,
    format_malformed_call,
    looks_like_error,
    parse_assistant,
    render_tool_call,
    render_tool_response,
    strip_code_fence,
    truncate_middle,
)


def call_text(code: str, name: str = "code_interpreter", *, double_encode: bool = False) -> str:
    arguments: object = {"code": code}
    if double_encode:
        arguments = json.dumps(arguments)
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


# --- parse_assistant: well-formed calls ---------------------------------------------------------------------


def test_parse_call_returns_reasoning_code_and_exact_span():
    reasoning = "Let me compute 2**10 first.\n"
    call = call_text("print(2**10)")
    text = reasoning + call + "\nignored trailing text <tool_call>{}</tool_call>"
    turn = parse_assistant(text)
    assert turn.has_call and turn.attempted_call and turn.malformed is None
    assert turn.reasoning == reasoning
    assert turn.call.code == "print(2**10)"
    assert turn.call.name == "code_interpreter"
    assert turn.call.arguments == {"code": "print(2**10)"}
    start, end = turn.call_span
    assert text[start:end] == call  # includes both tags, and only the FIRST call
    assert turn.call.raw == call[len("<tool_call>") : -len("</tool_call>")]


def test_parse_accepts_double_encoded_arguments_and_whitespace():
    text = "x\n<tool_call>\n" + json.dumps({"name": "code_interpreter", "arguments": json.dumps({"code": "a=1"})}) + "\n</tool_call>"
    turn = parse_assistant(text)
    assert turn.has_call and turn.call.code == "a=1"


@pytest.mark.parametrize(
    "wrapped",
    ["```python\nprint(1)\n```", "```py\nprint(1)\n```", "```\nprint(1)\n```", "  ```python\nprint(1)```  "],
)
def test_parse_strips_a_python_fence(wrapped):
    turn = parse_assistant(call_text(wrapped))
    assert turn.call.code == "print(1)"


def test_strip_code_fence_leaves_inner_fences_alone():
    code = 's = """\n```python\nx\n```\n"""\nprint(s)'
    assert strip_code_fence(code) == code
    assert strip_code_fence("print(1)") == "print(1)"


def test_turn_without_call_is_all_reasoning():
    text = "The answer is \\boxed{42}."
    turn = parse_assistant(text)
    assert not turn.has_call and not turn.attempted_call
    assert turn.reasoning == text and turn.call_span is None and turn.malformed is None
    assert turn.answer == "42"


def test_answer_ignores_boxed_inside_the_call_segment():
    text = "Maybe \\boxed{1}? Check:" + call_text('print("\\\\boxed{2}")')
    turn = parse_assistant(text)
    assert turn.has_call and turn.answer == "1"


# --- parse_assistant: malformed calls -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segment", "reason_part"),
    [
        ('<tool_call>{"name": "code_interpreter", "arguments": {"code": "print(1)"}</tool_call>', "not valid JSON"),
        ('<tool_call>["code_interpreter"]</tool_call>', "must be a JSON object"),
        ('<tool_call>{"name": "python", "arguments": {"code": "1"}}</tool_call>', "unknown tool 'python'"),
        ('<tool_call>{"arguments": {"code": "1"}}</tool_call>', "no 'name'"),
        ('<tool_call>{"name": "code_interpreter", "arguments": {"script": "1"}}</tool_call>', "no 'code' string"),
        ('<tool_call>{"name": "code_interpreter", "arguments": {"code": 5}}</tool_call>', "no 'code' string"),
        ('<tool_call>{"name": "code_interpreter", "arguments": {"code": "  "}}</tool_call>', "'code' is empty"),
        ('<tool_call>{"name": "code_interpreter"}</tool_call>', "no 'arguments'"),
        ('<tool_call>{"name": "code_interpreter", "arguments": "{bad"}</tool_call>', "arguments are not valid JSON"),
        ('<tool_call>{"name": "code_interpreter", "arguments": [1]}</tool_call>', "arguments must be an object"),
    ],
)
def test_malformed_located_call(segment, reason_part):
    text = "reasoning " + segment + " tail"
    turn = parse_assistant(text)
    assert not turn.has_call and turn.attempted_call
    assert reason_part in turn.malformed
    start, end = turn.call_span
    assert text[start:end] == segment
    assert turn.reasoning == "reasoning "


def test_unclosed_tag_is_malformed_without_span():
    text = 'thinking <tool_call>{"name": "code_interpreter", "arguments": {"code": "print(1)"}}'
    turn = parse_assistant(text)
    assert not turn.has_call and turn.attempted_call
    assert turn.malformed == "unclosed <tool_call> tag"
    assert turn.call_span is None
    assert turn.reasoning == "thinking "


def test_parse_rejects_non_string():
    with pytest.raises(TypeError, match="must be str"):
        parse_assistant(None)  # type: ignore[arg-type]


def test_malformed_message_for_the_model_is_recognised_as_error():
    turn = parse_assistant("<tool_call>{oops</tool_call>")
    msg = format_malformed_call(turn.malformed)
    assert msg.startswith("Error: tool call is not valid JSON: ")
    assert looks_like_error(msg)


# --- extract_boxed --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed {7}", "7"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed{a{b{c}}d}", "a{b{c}}d"),
        ("\\boxed{\\boxed{3}}", "\\boxed{3}"),
        ("\\boxed{5} and an unclosed \\boxed{6", "5"),
        ("no answer", None),
        ("\\boxed{x", None),
        ("\\boxed{}", ""),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


# --- truncation and tool responses ----------------------------------------------------------------------------


def test_truncate_middle_keeps_head_and_tail_within_limit():
    text = "HEAD" + "x" * 1000 + "TAIL"
    out = truncate_middle(text, 256)
    assert len(out) == 256
    assert out.startswith("HEAD") and out.endswith("TAIL")
    head, rest = out.split("...<", 1)
    removed = int(rest.split(" chars truncated>...")[0])
    tail = rest.split(" chars truncated>...")[1]
    assert len(head) + removed + len(tail) == len(text)  # the marker reports the exact count


@pytest.mark.parametrize("length", [MIN_TRUNCATION_CHARS, 33, 99, 100, 101, 1000])
def test_truncate_middle_never_exceeds_limit(length):
    for n in (length + 1, length + 9, length * 10 + 7, 100_000):
        assert len(truncate_middle("y" * n, length)) <= length


def test_truncate_middle_short_text_and_none_unchanged():
    assert truncate_middle("short", 256) == "short"
    assert truncate_middle("z" * 5000, None) == "z" * 5000
    with pytest.raises(ValueError, match="max_chars"):
        truncate_middle("z" * 100, 10)


def test_render_tool_response_wraps_truncated_text():
    out = render_tool_response("a" * 500, max_chars=100)
    assert out.startswith(TOOL_RESPONSE_OPEN + "\n") and out.endswith("\n" + TOOL_RESPONSE_CLOSE)
    assert len(out) == 100 + len(TOOL_RESPONSE_OPEN) + len(TOOL_RESPONSE_CLOSE) + 2
    assert render_tool_response("4\n") == "<tool_response>\n4\n\n</tool_response>"


def test_render_tool_call_roundtrips_through_parser():
    code = 'print("a\\"b")\nfor i in range(3):\n    print(i)'
    turn = parse_assistant("r" + render_tool_call(code))
    assert turn.call.code == code


# --- looks_like_error -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        'Traceback (most recent call last):\n  File "<string>", line 1\nZeroDivisionError: division by zero',
        "NameError: name 'x' is not defined",
        "out\nValueError: bad",
        "numpy.linalg.LinAlgError: Singular matrix",
        "MemoryError",
        "Exception: boom",
        "Error: timeout after 5.0s",
        "Timeout: the code ran longer than 10 s",
        "Tool call failure: tool call format is wrong",
    ],
)
def test_looks_like_error_positive(text):
    assert looks_like_error(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "42",
        "The ErrorRate is 0.1",
        "  ValueError: mentioned inside indented output",
        "x.py:3: DeprecationWarning: old api",
        "no Error: here because not at line start",
        "Errors: 0",
    ],
)
def test_looks_like_error_negative(text):
    assert not looks_like_error(text)


# --- format_exec_result ---------------------------------------------------------------------------------------


@dataclass
class FakeExecResult:
    """Same attribute names as cleaner.sandbox.ExecResult (format_exec_result is duck-typed)."""

    ok: bool
    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    error_type: str | None
    duration_s: float


TRACEBACK = 'Traceback (most recent call last):\n  File "<string>", line 1, in <module>\nNameError: name \'y\' is not defined\n'


def test_format_success_is_stdout():
    r = FakeExecResult(True, "ok", 0, "1024\n", "some warning\n", None, 0.1)
    assert format_exec_result(r) == "1024\n"
    assert not looks_like_error(format_exec_result(r))
    assert format_exec_result(FakeExecResult(True, "ok", 0, "", "", None, 0.1)) == "(no output)"


def test_format_success_long_stdout_truncated():
    r = FakeExecResult(True, "ok", 0, "\n".join(str(i) for i in range(1000)), "", None, 0.1)
    out = format_exec_result(r, max_chars=256)
    assert len(out) <= 256 and out.startswith("0\n1\n") and out.endswith("999")


def test_format_error_shows_traceback_tail():
    r = FakeExecResult(False, "error", 1, "partial\n", TRACEBACK, "NameError", 0.1)
    out = format_exec_result(r)
    assert out == "partial\n" + TRACEBACK.rstrip("\n")
    assert looks_like_error(out)


def test_format_error_long_output_keeps_error_line_or_adds_status():
    r = FakeExecResult(False, "error", 1, "x" * 5000, TRACEBACK, "NameError", 0.1)
    out = format_exec_result(r, max_chars=256)
    assert len(out) <= 256 and out.endswith("NameError: name 'y' is not defined")
    # The error line itself is longer than the budget and sits in the cut middle: a status line is added.
    long_msg = FakeExecResult(False, "error", 1, "", "log line\n" * 50 + "ValueError: " + "v" * 5000, "ValueError", 0.1)
    out = format_exec_result(long_msg, max_chars=256)
    assert len(out) <= 256 and out.endswith("\nError: ValueError (exit code 1)") and looks_like_error(out)
    assert out.startswith("log line\n")


@pytest.mark.parametrize(
    ("status", "expected_tail"),
    [
        ("timeout", "Error: timeout after 5.0s"),
        ("memory", "Error: MemoryError (memory limit exceeded)"),
        ("output_limit", "Error: output limit exceeded"),
        ("sandbox_error", "Error: sandbox failure (the code could not be run)"),
    ],
)
def test_format_non_error_failures_have_status_line(status, expected_tail):
    r = FakeExecResult(False, status, None, "step 1\n" * 200, "", None, 5.04)
    out = format_exec_result(r, max_chars=256)
    assert out.endswith(expected_tail) and len(out) <= 256
    assert out.startswith("step 1")
    assert looks_like_error(out)
    bare = FakeExecResult(False, status, None, "", "", None, 5.04)
    assert format_exec_result(bare) == expected_tail


def test_format_exit_code_without_stderr():
    r = FakeExecResult(False, "error", 3, "", "", None, 0.1)
    assert format_exec_result(r) == "Error: process exited with code 3"


def test_format_rejects_unknown_status():
    with pytest.raises(ValueError, match="status"):
        format_exec_result(FakeExecResult(False, "exploded", 1, "", "", None, 0.0))


def test_format_real_sandbox_result():
    """With the real sandbox (another module of this package), failures and successes format as above."""
    sandbox = pytest.importorskip("cleaner.sandbox")
    if not hasattr(sandbox, "run_python"):
        pytest.skip("cleaner.sandbox has no run_python yet")
    bad = sandbox.run_python("1/0", timeout_s=10)
    assert not bad.ok
    out = format_exec_result(bad)
    assert "ZeroDivisionError" in out and looks_like_error(out) and len(out) <= 256
    good = sandbox.run_python("print(6*7)", timeout_s=10)
    assert good.ok and format_exec_result(good).strip() == "42"
