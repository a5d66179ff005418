"""No input crashes or hangs a grader (issue 15): every ``compute_score`` route returns a finite score in its
range for any string a model can write -- random strings (Hypothesis), megabyte responses, lone surrogates
(invalid UTF-8 decoded with ``surrogateescape``), NaN / inf, deeply nested braces, integers past Python's
digit limit -- and code that floods output, forks or sleeps ends within its time limit."""

from __future__ import annotations

import json
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cleaner.rewards import compute_score, int_text, parse_math_ground_truth
from cleaner.sandbox import Sandbox, SandboxConfig

STDIN_GT = json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}])
CALL_GT = json.dumps([{"input": "[1, 2]", "output": "[1, 2]", "testtype": "functional"}])
ANSWER_ROUTES = [  # (data_source, ground truth, grading, math_mode)
    ("math_dapo", "42", "reference", None),
    ("math_dapo", "42", "lenient", "strict"),
    ("aime25", "\\frac{1}{2}", "lenient", "verify"),
    ("gpqa_diamond", "A", "reference", None),
    ("gpqa_diamond", "A", "lenient", None),
]
FRAGMENTS = ["\\boxed{", "\\boxed {", "{", "}", "\\{", "\\}", "42", "A", "$", "\\text{", "\\frac{1}{2}", ",",
             "```python\n", "```", "\n", "<tool_call>", "</tool_call>", "<tool_response>", "nan", "inf", "\x00",
             "\udcff", "\ud800", "9" * 5000]
# A response: random unicode (lone surrogates included) interleaved with the grammar's delimiters.
RESPONSES = st.lists(st.sampled_from(FRAGMENTS) | st.text(st.characters(codec=None), max_size=40),
                     max_size=30).map("".join)


# Derandomized, no example database: the same examples on every run and nothing written into the checkout.
PROPERTY_SETTINGS = {"deadline": None, "database": None, "derandomize": True,
                     "suppress_health_check": [HealthCheck.function_scoped_fixture]}


def assert_in_range(result: dict, low: float, high: float) -> None:
    assert isinstance(result["score"], float) and math.isfinite(result["score"]), result["score"]
    assert low <= result["score"] <= high, result["score"]
    assert isinstance(result["acc"], bool) and isinstance(result["pred"], str)


@pytest.mark.parametrize(("source", "truth", "grading", "math_mode"), ANSWER_ROUTES)
@settings(max_examples=150, **PROPERTY_SETTINGS)
@given(response=RESPONSES)
def test_answer_routes_score_any_string(source, truth, grading, math_mode, response) -> None:
    result = compute_score(source, response, truth, grading=grading, math_mode=math_mode)
    assert result["score"] in (-1.0, 1.0)
    assert_in_range(result, -1.0, 1.0)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=2, config=SandboxConfig(preload=())) as box:
        yield box


CODE_SNIPPETS = ["a, b = map(int, input().split())\nprint(a + b)", "print(3)", "import os\nos.fork()\nprint(3)",
                 "while True: pass", "print('x' * 10**6)", "print(10**60000)", "raise SystemExit(3)",
                 "class Solution:\n    def f(self, a, b):\n        return [a, b]", "def f(a, b):\n    return (a, b)",
                 "import sys\nsys.stdout.buffer.write(b'\\xff\\xfe')", "print(float('nan'))", "(" * 200_000]
CODE_RESPONSES = st.tuples(RESPONSES, st.sampled_from(CODE_SNIPPETS) | RESPONSES).map(
    lambda parts: f"{parts[0]}\n```python\n{parts[1]}\n```")


@pytest.mark.parametrize("grading", ["reference", "lenient"])
@pytest.mark.parametrize(("ground_truth", "extra_info"), [(STDIN_GT, None), (CALL_GT, {"fn_name": "f"})],
                         ids=["stdin", "call"])
@settings(max_examples=12, **PROPERTY_SETTINGS)
@given(response=CODE_RESPONSES)
def test_code_routes_score_any_string(grading, ground_truth, extra_info, response, sandbox) -> None:
    result = compute_score("livecodebench", response, ground_truth, extra_info, grading=grading,
                           code_timeout_s=1.0, sandbox=sandbox)
    assert_in_range(result, 0.0, 1.0)
    assert result["grading"] == grading


MEGABYTE = "x" * (1 << 20)
HOSTILE_ANSWERS = {
    "megabyte_then_box": MEGABYTE + "\\boxed{42}",
    "box_then_megabyte": "\\boxed{42}" + MEGABYTE,
    "nested_braces": "\\boxed{" + "{" * 500_000 + "}" * 500_000 + "}",
    "open_braces": "\\boxed{" * 200_000,
    "surrogates": b"\\boxed{\xff\xfe}".decode("utf-8", "surrogateescape") * 1000,
    "nan_inf": "\\boxed{nan} \\boxed{inf} \\boxed{-inf}",
    "huge_integer": "\\boxed{" + "9" * 100_000 + "}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_ANSWERS))
@pytest.mark.parametrize(("source", "truth", "grading", "math_mode"), ANSWER_ROUTES)
def test_hostile_answers_score_fast(name, source, truth, grading, math_mode) -> None:
    start = time.monotonic()
    result = compute_score(source, HOSTILE_ANSWERS[name], truth, grading=grading, math_mode=math_mode)
    assert_in_range(result, -1.0, 1.0)
    assert time.monotonic() - start < 10.0


def test_integer_ground_truth_past_the_digit_limit() -> None:
    """Python refuses ``str()`` of an int over 4,300 digits (50,000 here, LCB's limit); a ground truth of
    100,001 digits still grades."""
    big = 10**100_000
    assert parse_math_ground_truth(big) == ["1" + "0" * 100_000]
    assert int_text(-big).startswith("-1000")
    for grading in ("reference", "lenient"):
        result = compute_score("math_dapo", "\\boxed{" + int_text(big) + "}", big, grading=grading)
        assert result["score"] in (-1.0, 1.0)
    assert compute_score("math_dapo", "\\boxed{" + int_text(big) + "}", big, grading="lenient")["score"] == 1.0


HOSTILE_PROGRAMS = {  # name: (solution, score): a forked child left sleeping must not hold the verdict back
    "sleep": ("import time\ntime.sleep(60)", 0.0),
    "fork_and_sleep": ("import os, time\nif os.fork() == 0:\n    time.sleep(60)\nprint(3)", 1.0),
    "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", 0.0),
    "flood": ("while True:\n    print('y' * 4096)", 0.0),
    "huge_int_print": ("print(10**60000)", 0.0),
    "deep_result": ("class Solution:\n    def f(self, a, b):\n        x = []\n        for _ in range(100000):\n"
                    "            x = [x]\n        return x", 0.0),
    "nan_result": ("class Solution:\n    def f(self, a, b):\n        return float('nan')", 0.0),
    "huge_result": ("class Solution:\n    def f(self, a, b):\n        return 10**60000", 0.0),
}


@pytest.mark.parametrize("grading", ["reference", "lenient"])
@pytest.mark.parametrize("name", sorted(HOSTILE_PROGRAMS))
def test_hostile_programs_end_within_the_time_limit(name, grading, sandbox) -> None:
    code, score = HOSTILE_PROGRAMS[name]
    call = code.startswith("class Solution")
    start = time.monotonic()
    result = compute_score("livecodebench", f"```python\n{code}\n```", CALL_GT if call else STDIN_GT,
                           {"fn_name": "f"} if call else None, grading=grading, code_timeout_s=2.0, sandbox=sandbox)
    assert time.monotonic() - start < 30.0
    assert result["score"] == score, result
    assert result["grading"] == grading
