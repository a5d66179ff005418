"""Code outcome reward and the LiveCodeBench-semantics judge (one judge for RL rewards and LCB eval).

What it follows:

* **LiveCodeBench** (``lcb_runner/evaluation/testing_util.py``): stdin/stdout problems run the program and
  compare ``stdout`` with the expected output line by line after stripping; a line that differs is
  compared again token by token as ``decimal.Decimal`` values ("1.50" == "1.5", no tolerance beyond
  representation). Call-based problems (non-empty ``starter_code``) decode each line of the test input as
  one JSON positional argument and the expected output as JSON, call ``Solution().<fn_name>`` when the code
  contains ``class Solution`` (otherwise the module-level function) and compare with ``==`` in the
  solution's process after turning a returned tuple into a list (top level only, as LCB: a list of tuples
  does not equal a list of lists, a ``numpy.int64`` equals an int). Integers may have up to 50,000 digits
  (LCB's ``sys.set_int_max_str_digits(50000)``, also raised in this process on import). Programs get
  LCB's import prelude (``from math import *`` ... ``sys.setrecursionlimit(50000)``), ``SystemExit`` in a
  stdin program is not an error, and each test has a timeout (6 s by default). Per-test result codes are
  LCB's: ``True`` pass, ``-2`` wrong answer (``False`` for a call-based wrong answer, which LCB stores as
  the failed comparison), ``-3`` time limit, ``-4`` runtime/compile error, ``-5`` test-runner error (our
  sandbox failing), ``-1`` global timeout.
* **Skywork-OR1 / CLEANER reference** (``code_math.compute_score``): the solution is the LAST fenced python
  block of the response; the reward is the fraction of tests passed; LeetCode-style rows
  (``import_prefix`` / ``test_code`` / ``entry_point``) run each ``assert`` of ``check(candidate)`` as its
  own test; APPS/TACO call-based rows also accept ``expected == [result]`` (a singleton-wrapped output),
  like verl's ``prime_code`` judge.

Grading (``grading=``): ``reference`` gives LCB's verdicts; ``lenient`` also passes a call-based result that
equals the expected output after a JSON round trip (nested tuples, ...). The recorded differences from LCB's
own grader are in docs/rewards.md (``tests/test_grading_reference.py`` checks them).

Deviations (documented, deliberate): every test is a separate sandboxed process whose stdin is the test
input (LCB runs all tests of a solution in one process with patched ``sys.stdin``, wraps stdin programs in a
function and shares one ``Solution()`` between call-based tests), forked from a pre-started sandbox server;
the timeout also covers loading LCB's prelude (a few ms); output is capped at 64 MiB (a flood is a wrong
answer; LCB keeps everything in memory until the timeout); ``early_stop=False`` is the default because the
RL reward is the fraction of tests passed, which needs every test. With ``early_stop=True`` the judge stops at
the first failure like LCB; :meth:`CodeJudgement.lcb_results` always gives the LCB-shaped list (truncated
after the first failure).
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

PASS = True
"""LCB per-test code for a passed test (a call-based wrong answer is ``False``, everything else an int)."""
GLOBAL_TIMEOUT = -1
"""LCB: the whole run timed out / produced no result."""
WRONG_ANSWER = -2
TIME_LIMIT_EXCEEDED = -3
RUNTIME_ERROR = -4
"""LCB: an exception while compiling or running the solution (compile errors included)."""
RUNNER_ERROR = -5
"""LCB ``TestRunnerError``; here: the sandbox itself failed (``status == "sandbox_error"``)."""

LCB_ERROR_MESSAGES = {
    GLOBAL_TIMEOUT: "Global Timeout",
    WRONG_ANSWER: "Wrong Answer",
    TIME_LIMIT_EXCEEDED: "Time Limit Exceeded",
    RUNTIME_ERROR: "Runtime Error",
    RUNNER_ERROR: "TestRunnerError",
}

DEFAULT_TIMEOUT_S = 6.0
"""LiveCodeBench's default per-test timeout."""
DEFAULT_MEMORY_MB = 4096
"""LiveCodeBench's reliability guard mentions a 4 GB cap; we enforce it through the sandbox."""
DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024 * 1024
"""Output cap per test: a flood stops here (wrong answer). LCB has none; 64 MiB passes the 18 MB correct
output of the grading cases, which the former 16 MiB cap failed (the sandbox holds up to this much per
running test in memory)."""
LCB_INT_MAX_STR_DIGITS = 50_000
"""LCB ``compute_code_generation_metrics.py``: ``sys.set_int_max_str_digits(50000)`` (Python's default 4,300
makes ``str`` / ``json`` raise ``ValueError`` on a longer integer)."""

Grading = Literal["reference", "lenient"]
GRADING_MODES: tuple[str, ...] = ("reference", "lenient")
"""``reference``: the verdicts of the graders behind the paper's numbers (math_dapo, LiveCodeBench);
``lenient``: normalised answers. See :mod:`cleaner.rewards.scoring` and docs/rewards.md."""

TestMode = Literal["stdin", "call", "check"]

LCB_PRELUDE = """\
from string import *
from re import *
from datetime import *
from collections import *
from heapq import *
from bisect import *
from copy import *
from math import *
from random import *
from statistics import *
from itertools import *
from functools import *
from operator import *
from io import *
from sys import *
from json import *
from builtins import *
from typing import *
import string
import re
import datetime
import collections
import heapq
import bisect
import copy
import math
import random
import statistics
import itertools
import functools
import operator
import io
import sys
import json
sys.setrecursionlimit(50000)
"""
"""The names LiveCodeBench makes available to every solution (its ``import_string``), so a solution that
forgets ``import sys`` behaves as under LCB."""


def _raise_int_digit_limit() -> None:
    """Raise (never lower) this process's int-to-str digit limit to LCB's: ground truths and results with
    up to 50,000-digit integers are parsed and compared as LCB's evaluator does."""
    current = sys.get_int_max_str_digits()
    if 0 < current < LCB_INT_MAX_STR_DIGITS:
        sys.set_int_max_str_digits(LCB_INT_MAX_STR_DIGITS)


_raise_int_digit_limit()


# ----------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class TestCase:
    """One test. Which fields are set depends on the spec's mode.

    ``stdin`` mode: ``stdin`` (program input) and ``expected`` (expected stdout text).
    ``call`` mode: ``args_json`` (a JSON array of positional arguments) and ``expected`` (decoded value).
    ``check`` mode: ``check_source`` (a ``def check(candidate): ...`` holding one assert and the setup
    statements before it); ``expected`` is unused.
    """

    stdin: str | None = None
    args_json: str | None = None
    check_source: str | None = None
    expected: Any = None


@dataclass(frozen=True)
class TestSpec:
    """A normalised test specification, built by :func:`parse_test_spec` from any supported row shape."""

    mode: TestMode
    cases: tuple[TestCase, ...]
    fn_name: str | None = None
    """Function / method to call (``call`` mode)."""
    import_prefix: str = ""
    """Code put before the solution (``check`` mode)."""
    test_preamble: str = ""
    """Top-level statements of ``test_code`` other than ``check`` (``check`` mode)."""
    entry_point: str | None = None
    """Expression passed to ``check`` (``check`` mode), e.g. ``Solution().twoSum``."""
    unwrap_singleton_output: bool = False
    """APPS/TACO convention: ``[result]`` as expected output also matches ``result`` (``call`` mode)."""

    def __post_init__(self) -> None:
        if not self.cases:
            raise ValueError("code test spec has no test cases")
        if self.mode == "call" and not self.fn_name:
            raise ValueError("call-based code test spec needs fn_name")
        if self.mode == "check" and not self.entry_point:
            raise ValueError("check-style code test spec needs entry_point")
        needed = {"stdin": "stdin", "call": "args_json", "check": "check_source"}.get(self.mode)
        if needed is None:
            raise ValueError(f"unknown code test mode {self.mode!r}")
        for k, case in enumerate(self.cases):
            if getattr(case, needed) is None:
                raise ValueError(f"test case {k} of a {self.mode!r} spec has no {needed!r}")


def _load_json(value: Any, what: str) -> Any:
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, over-long integers, deep nesting
            hint = " (compressed LiveCodeBench private tests must be decoded first)" if value[:1] not in "[{" else ""
            raise ValueError(f"{what} is not valid JSON: {exc}{hint}") from exc
    return value


def _plain(value: Any) -> Any:
    """numpy arrays / scalars from a verl batch or a parquet file -> plain Python values."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _as_text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    raise ValueError(f"{what} must be a string or a list of strings, got {type(value).__name__}")


def _args_from_lines(text: str, what: str) -> list[Any]:
    """LCB functional input: every line is one JSON-encoded positional argument."""
    try:
        return [json.loads(line) for line in text.split("\n")]
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{what}: a line is not valid JSON ({exc})") from exc


def _fn_name_from_starter(starter_code: str) -> str | None:
    """The method name of LeetCode starter code (``class Solution: def name(self, ...)``)."""
    names = re.findall(r"^\s*def\s+([A-Za-z_]\w*)\s*\(", starter_code, re.MULTILINE)
    names = [n for n in names if n != "__init__"]
    return names[0] if names else None


def _lcb_fn_name(extra_info: Mapping[str, Any]) -> str | None:
    if extra_info.get("fn_name"):
        return str(extra_info["fn_name"])
    metadata = extra_info.get("metadata")
    if isinstance(metadata, str) and metadata.strip():
        metadata = _load_json(metadata, "extra_info['metadata']")
    if isinstance(metadata, Mapping) and metadata.get("func_name"):
        return str(metadata["func_name"])
    starter = extra_info.get("starter_code")
    if isinstance(starter, str) and starter.strip():
        return _fn_name_from_starter(starter)
    return None


def _parse_io_spec(spec: Mapping[str, Any], *, lcb_semantics: bool) -> TestSpec:
    """``{"inputs": [...], "outputs": [...], "fn_name"?}`` (Skywork/TACO, and LCB's ``input_output``)."""
    inputs, outputs = spec.get("inputs"), spec.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise ValueError("code test spec needs list fields 'inputs' and 'outputs'")
    if len(inputs) != len(outputs):
        raise ValueError(f"code test spec has {len(inputs)} inputs but {len(outputs)} outputs")
    fn_name = spec.get("fn_name")
    if fn_name is None or fn_name == "":
        cases = tuple(
            TestCase(stdin=_as_text(i, f"inputs[{k}]"), expected=_as_text(o, f"outputs[{k}]"))
            for k, (i, o) in enumerate(zip(inputs, outputs))
        )
        return TestSpec(mode="stdin", cases=cases)
    if not isinstance(fn_name, str):
        raise ValueError(f"code test spec 'fn_name' must be a string, got {fn_name!r}")
    call_cases = []
    for k, (i, o) in enumerate(zip(inputs, outputs)):
        args = _args_from_lines(i, f"inputs[{k}]") if isinstance(i, str) else i
        if not isinstance(args, list):
            raise ValueError(f"inputs[{k}] of a call-based spec must be a list of arguments or JSON lines")
        expected = o
        if isinstance(o, str):
            try:
                expected = json.loads(o)
            except (ValueError, RecursionError):
                if lcb_semantics:
                    raise ValueError(f"outputs[{k}] of a call-based spec is not valid JSON") from None
        call_cases.append(TestCase(args_json=json.dumps(args), expected=expected))
    return TestSpec(
        mode="call", cases=tuple(call_cases), fn_name=fn_name, unwrap_singleton_output=not lcb_semantics
    )


def _split_check_asserts(test_code: str) -> tuple[str, list[str]]:
    """Split ``def check(candidate): ...`` into one ``check`` per top-level assert (setup kept before each).

    The reference (``code_math``) runs each line after ``def check(candidate):`` as its own test; parsing
    with ``ast`` gives the same split for one-line asserts and stays correct for multi-line ones. A
    ``check`` without top-level asserts (asserts in a loop) is one test.
    """
    try:
        tree = ast.parse(test_code)
    except SyntaxError as exc:
        raise ValueError(f"code test spec 'test_code' does not parse: {exc}") from exc
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1:
        raise ValueError("code test spec 'test_code' must define exactly one top-level 'def check(candidate)'")
    check = checks[0]
    preamble = ast.unparse([n for n in tree.body if n is not check]) if len(tree.body) > 1 else ""
    header = f"def check({ast.unparse(check.args)}):"
    asserts = [n for n in check.body if isinstance(n, ast.Assert)]
    if not asserts:
        return preamble, [ast.unparse(check)]
    sources, setup = [], []
    for node in check.body:
        if isinstance(node, ast.Assert):
            body = "\n".join("    " + line for line in ast.unparse([*setup, node]).split("\n"))
            sources.append(f"{header}\n{body}")
        else:
            setup.append(node)
    return preamble, sources


def _parse_check_spec(spec: Mapping[str, Any]) -> TestSpec:
    test_code, entry_point = spec.get("test_code"), spec.get("entry_point")
    prefix = spec.get("import_prefix", "") or ""
    if not isinstance(test_code, str) or not test_code.strip():
        raise ValueError("check-style code test spec needs a non-empty string 'test_code'")
    if not isinstance(entry_point, str) or not entry_point.strip():
        raise ValueError("check-style code test spec needs a non-empty string 'entry_point'")
    if not isinstance(prefix, str):
        raise ValueError("check-style code test spec 'import_prefix' must be a string")
    preamble, sources = _split_check_asserts(test_code)
    return TestSpec(
        mode="check",
        cases=tuple(TestCase(check_source=s) for s in sources),
        import_prefix=prefix,
        test_preamble=preamble,
        entry_point=entry_point.strip(),
    )


def _parse_lcb_tests(tests: list[Any], extra_info: Mapping[str, Any]) -> TestSpec:
    """LiveCodeBench ``public/private_test_cases``: ``[{"input", "output", "testtype"}, ...]``."""
    types = set()
    for k, test in enumerate(tests):
        if not isinstance(test, Mapping) or not isinstance(test.get("input"), str) or not isinstance(
            test.get("output"), str
        ):
            raise ValueError(f"LiveCodeBench test {k} must be an object with string 'input' and 'output'")
        types.add(test.get("testtype", "stdin"))
    if types - {"stdin", "functional"}:
        raise ValueError(f"LiveCodeBench tests have unknown testtype(s) {sorted(types - {'stdin', 'functional'})}")
    if types == {"stdin", "functional"}:
        raise ValueError("LiveCodeBench tests mix 'stdin' and 'functional' testtypes")
    inputs = [t["input"] for t in tests]
    outputs = [t["output"] for t in tests]
    if types == {"stdin"}:
        return _parse_io_spec({"inputs": inputs, "outputs": outputs}, lcb_semantics=True)
    fn_name = _lcb_fn_name(extra_info)
    if not fn_name:
        raise ValueError("functional LiveCodeBench tests need extra_info 'fn_name', 'metadata.func_name' or 'starter_code'")
    return _parse_io_spec({"inputs": inputs, "outputs": outputs, "fn_name": fn_name}, lcb_semantics=True)


def parse_test_spec(ground_truth: Any, extra_info: Mapping[str, Any] | None = None) -> TestSpec:
    """Build a :class:`TestSpec` from any code ground-truth shape our datasets use.

    * Skywork-OR1 / TACO: JSON ``{"inputs": [...], "outputs": [...], "fn_name"?: str}``.
    * Skywork-OR1 LeetCode: JSON ``{"import_prefix", "test_code": "def check(candidate): ...", "entry_point"}``.
    * LiveCodeBench: JSON list of ``{"input", "output", "testtype"}``; functional tests take the function
      name from ``extra_info`` (``fn_name``, ``metadata.func_name`` or the ``starter_code``).
    * LCB's evaluation sample ``{"input_output": "<json>"}``.

    Raises ``ValueError`` naming what is wrong for a malformed spec.
    """
    extra = dict(_plain(extra_info)) if isinstance(extra_info, Mapping) else {}
    spec = _plain(_load_json(ground_truth, "code ground truth"))
    if isinstance(spec, Mapping) and "input_output" in spec:
        spec = _plain(_load_json(spec["input_output"], "code ground truth 'input_output'"))
    if isinstance(spec, list):
        if not spec:
            raise ValueError("code ground truth is an empty test list")
        return _parse_lcb_tests(spec, extra)
    if not isinstance(spec, Mapping):
        raise ValueError(f"code ground truth must be a JSON object or list, got {type(spec).__name__}")
    if "test_code" in spec or "import_prefix" in spec:
        return _parse_check_spec(spec)
    if "inputs" in spec or "outputs" in spec:
        if not spec.get("fn_name") and extra.get("fn_name"):
            spec = {**spec, "fn_name": extra["fn_name"]}
        return _parse_io_spec(spec, lcb_semantics=False)
    raise ValueError(f"code ground truth has none of the known keys (inputs/outputs, test_code); got {sorted(spec)}")


# ----------------------------------------------------------------------------------- code extraction
_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[ \t]*\n(.*?)```", re.DOTALL)
_TOOL_SPANS_RE = re.compile(
    r"<tool_response>.*?(?:</tool_response>|\Z)|<tool_call>.*?(?:</tool_call>|\Z)", re.DOTALL
)
_PYTHON_TAGS = {"python", "py", "python3", "py3"}


def extract_code_block(response: str) -> str | None:
    """The solution code of a response: its LAST fenced ```python (or ```py) block, else its last bare ```
    block; ``None`` when there is none (the CLEANER reference takes the last ```python block).

    Tool calls and tool responses (``<tool_call>...</tool_call>``, ``<tool_response>...</tool_response>``)
    are skipped: the submitted solution is the answer text, not code sent to the interpreter or its output.
    """
    if not isinstance(response, str):
        return None
    text = _TOOL_SPANS_RE.sub("", response)
    python_blocks, bare_blocks = [], []
    for match in _FENCE_RE.finditer(text):
        tag = match.group(1).lower()
        if tag in _PYTHON_TAGS:
            python_blocks.append(match.group(2))
        elif tag == "":
            bare_blocks.append(match.group(2))
    blocks = python_blocks or bare_blocks
    if not blocks:
        return None
    code = blocks[-1]
    return code if code.strip() else None


# ------------------------------------------------------------------------------------ output compare
def _stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def _decimal_tokens(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(token) for token in line.split()]
    except (InvalidOperation, ValueError):
        return None


def compare_stdout(actual: str, expected: str) -> tuple[bool, str]:
    """LiveCodeBench's stdout rule: strip, split on newlines, strip each line; same number of lines; each
    line equal, or equal as a sequence of ``Decimal`` tokens. Returns ``(passed, reason)``."""
    got, want = _stripped_lines(actual), _stripped_lines(expected)
    if len(got) != len(want):
        return False, f"wrong answer: {len(got)} output lines, expected {len(want)}"
    for idx, (g, w) in enumerate(zip(got, want)):
        if g == w:
            continue
        g_dec, w_dec = _decimal_tokens(g), _decimal_tokens(w)
        try:
            if g_dec is not None and w_dec is not None and g_dec == w_dec:
                continue
        except InvalidOperation:  # signalling NaN
            pass
        return False, f"wrong answer at line {idx}: {g[:80]!r} != {w[:80]!r}"
    return True, ""


def compare_call_output(actual: Any, expected: Any, *, unwrap_singleton_output: bool = False) -> bool:
    """LCB call-based rule: ``actual == expected`` (tuples already lists after the JSON round trip); with
    ``unwrap_singleton_output`` (APPS/TACO rows) ``expected == [actual]`` also passes."""
    if actual == expected:
        return True
    return bool(unwrap_singleton_output and isinstance(expected, list) and len(expected) == 1 and actual == expected[0])


# ----------------------------------------------------------------------------------- test programs
_SET_DIGITS = f"_cleaner_sys.set_int_max_str_digits({LCB_INT_MAX_STR_DIGITS})\n"


def _stdin_program(code: str) -> str:
    """Run the solution as ``__main__`` after LCB's prelude; ``SystemExit`` is a normal end (as in LCB)."""
    return (
        "import sys as _cleaner_sys\n"
        f"{_SET_DIGITS}"
        f"_cleaner_ns = {{'__name__': '__main__'}}\n"
        f"exec(compile({LCB_PRELUDE!r}, '<prelude>', 'exec'), _cleaner_ns)\n"
        "try:\n"
        f"    exec(compile({code!r}, '<solution>', 'exec'), _cleaner_ns)\n"
        "except SystemExit:\n"
        "    pass\n"
        "_cleaner_sys.stdout.flush()\n"
    )


def _call_program(code: str, fn_name: str, case: TestCase, unwrap_singleton: bool, marker: str) -> str:
    """Load the solution as a module (``__name__`` is not ``__main__``, as in LCB), call the function with
    the decoded arguments and compare the result with the expected output as LCB's ``grade_call_based`` does
    (a tuple becomes a list, then ``==``; a result whose truth value raises, such as a numpy array, is a
    runtime error). Prints ``marker`` + ``1`` / ``0`` (equal or not) + JSON of the result (for the lenient
    comparison) on the real stdout; the solution's own prints are discarded so they can neither corrupt the
    result line nor hit the output limit."""
    return (
        "import json as _cleaner_json, sys as _cleaner_sys\n"
        f"{_SET_DIGITS}"
        "class _CleanerSink:\n"
        "    def write(self, s): return len(s)\n"
        "    def flush(self): pass\n"
        "_cleaner_out = _cleaner_sys.stdout\n"
        "_cleaner_sys.stdout = _CleanerSink()\n"
        "_cleaner_ns = {'__name__': '__solution__'}\n"
        f"exec(compile({LCB_PRELUDE!r}, '<prelude>', 'exec'), _cleaner_ns)\n"
        f"_cleaner_src = {code!r}\n"
        "exec(compile(_cleaner_src, '<solution>', 'exec'), _cleaner_ns)\n"
        "if 'class Solution' in _cleaner_src:\n"
        f"    _cleaner_fn = getattr(_cleaner_ns['Solution'](), {fn_name!r})\n"
        "else:\n"
        f"    _cleaner_fn = _cleaner_ns[{fn_name!r}]\n"
        f"_cleaner_result = _cleaner_fn(*_cleaner_json.loads({case.args_json or '[]'!r}))\n"
        "_cleaner_sys.stdout = _cleaner_out\n"
        "if isinstance(_cleaner_result, tuple):\n"
        "    _cleaner_result = list(_cleaner_result)\n"
        f"_cleaner_expected = _cleaner_json.loads({json.dumps(case.expected)!r})\n"
        "_cleaner_equal = bool(_cleaner_result == _cleaner_expected)\n"
        f"if not _cleaner_equal and {unwrap_singleton!r} and isinstance(_cleaner_expected, list) "
        "and len(_cleaner_expected) == 1:\n"
        "    _cleaner_equal = bool(_cleaner_result == _cleaner_expected[0])\n"
        "try:\n"
        "    _cleaner_payload = _cleaner_json.dumps(_cleaner_result)\n"
        "except Exception:\n"
        "    _cleaner_payload = '!unserializable ' + type(_cleaner_result).__name__\n"
        f"print({marker!r} + ('1 ' if _cleaner_equal else '0 ') + _cleaner_payload, flush=True)\n"
    )


def _check_program(code: str, spec: TestSpec, case: TestCase, marker: str) -> str:
    """``import_prefix + solution + check + check(entry_point)`` as the reference runs it, plus a final
    marker so a solution that exits early cannot pass."""
    return (
        f"import sys as _cleaner_sys\n{_SET_DIGITS}"
        f"{spec.import_prefix}\n{code}\n\n{spec.test_preamble}\n{case.check_source}\n\n"
        f"check({spec.entry_point})\nprint({marker!r}, flush=True)\n"
    )


# ---------------------------------------------------------------------------------------- judging
@dataclass(frozen=True)
class CodeJudgement:
    """Result of judging one solution: LCB per-test codes plus the reward numbers.

    ``per_test`` has one entry per test that ran, in order (shorter than ``total`` only after an early
    stop); ``details`` has a short reason per entry. ``error`` is ``"no_code"`` or ``"syntax_error"`` when
    nothing ran.
    """

    per_test: tuple[bool | int, ...]
    total: int
    details: tuple[str, ...] = ()
    code: str | None = None
    error: str | None = None
    durations_s: tuple[float, ...] = field(default=(), compare=False)

    @property
    def passed(self) -> int:
        return sum(1 for r in self.per_test if r is True)

    @property
    def fraction(self) -> float:
        """The paper's code reward: fraction of tests passed, in [0, 1]."""
        return self.passed / self.total if self.total else 0.0

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total

    def lcb_results(self) -> list[bool | int]:
        """The list LiveCodeBench's evaluator stores for this generation: codes up to the first failure."""
        out: list[bool | int] = []
        for r in self.per_test:
            out.append(r)
            if r is not True:
                break
        return out

    def lcb_metadata(self) -> dict[str, Any]:
        """LCB-style metadata: the first failure's ``error_code`` / ``error_message``, or execution time."""
        for r, detail in zip(self.per_test, self.details):
            if r is not True:
                code = WRONG_ANSWER if r is False else int(r)
                return {"error_code": code, "error_message": LCB_ERROR_MESSAGES.get(code, "Error"), "detail": detail}
        return {"execution time": round(sum(self.durations_s), 6)}


@dataclass(frozen=True)
class _Job:
    program: str
    stdin: str | None


def _jobs(code: str, spec: TestSpec, marker: str) -> list[_Job]:
    if spec.mode == "stdin":
        program = _stdin_program(code)
        return [_Job(program, c.stdin) for c in spec.cases]
    if spec.mode == "call":
        assert spec.fn_name is not None
        return [_Job(_call_program(code, spec.fn_name, c, spec.unwrap_singleton_output, marker), None)
                for c in spec.cases]
    return [_Job(_check_program(code, spec, c, marker), None) for c in spec.cases]


def _grade(result: Any, spec: TestSpec, case: TestCase, marker: str, grading: str) -> tuple[bool | int, str]:
    """Map one sandbox ``ExecResult`` to an LCB code and a short reason."""
    status = getattr(result, "status", "sandbox_error")
    if status == "timeout":
        return TIME_LIMIT_EXCEEDED, "time limit exceeded"
    if status == "sandbox_error":
        return RUNNER_ERROR, f"sandbox error: {str(getattr(result, 'stderr', ''))[-200:]}"
    if status == "memory":
        return RUNTIME_ERROR, "memory limit exceeded"
    if status == "output_limit":
        return WRONG_ANSWER, "output limit exceeded"
    if status != "ok":
        error_type = getattr(result, "error_type", None) or "error"
        if spec.mode == "check" and error_type == "AssertionError":
            return WRONG_ANSWER, "assertion failed"
        return RUNTIME_ERROR, f"runtime error: {error_type}"
    stdout = result.stdout if isinstance(result.stdout, str) else str(result.stdout)
    if spec.mode == "stdin":
        ok, reason = compare_stdout(stdout, case.expected)
        return (PASS, "") if ok else (WRONG_ANSWER, reason)
    lines = [line for line in stdout.split("\n") if line.startswith(marker)]
    if not lines:
        return RUNTIME_ERROR, "program ended before the test finished"
    if spec.mode == "check":
        return PASS, ""
    equal, _, payload = lines[-1][len(marker) :].partition(" ")
    if equal == "1" or (grading == "lenient" and _lenient_call_match(payload, spec, case)):
        return PASS, ""
    # LCB stores a call-based wrong answer as the comparison result ``False`` (error_code -2 in metadata).
    return False, f"wrong answer: {payload[:80]} != {_short_json(case.expected)}"


def _lenient_call_match(payload: str, spec: TestSpec, case: TestCase) -> bool:
    """Lenient grading: the result, after a JSON round trip, equals the expected output."""
    if payload.startswith("!unserializable"):
        return False
    try:
        actual = json.loads(payload)
    except (ValueError, RecursionError):  # not JSON, an integer over the digit limit, deep nesting
        return False
    return compare_call_output(actual, case.expected, unwrap_singleton_output=spec.unwrap_singleton_output)


def _short_json(value: Any) -> str:
    try:
        return json.dumps(value)[:80]
    except (ValueError, RecursionError):
        return type(value).__name__


def _precheck(code: str | None, spec: TestSpec) -> CodeJudgement | None:
    """Judgements that need no sandbox: no code block, or code that does not compile (LCB: -4)."""
    n = len(spec.cases)
    if code is None:
        # What LCB gives an empty program: no output (wrong answer) or no function (runtime error).
        fill = WRONG_ANSWER if spec.mode == "stdin" else RUNTIME_ERROR
        return CodeJudgement(per_test=(fill,) * n, total=n, details=("no code block",) * n, error="no_code")
    try:
        compile(code, "<solution>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as exc:
        reason = f"compile error: {type(exc).__name__}: {exc}"[:200]
        return CodeJudgement(per_test=(RUNTIME_ERROR,) * n, total=n, details=(reason,) * n, code=code,
                             error="syntax_error")
    return None


def _finish(code: str, spec: TestSpec, graded: list[tuple[bool | int, str, float]]) -> CodeJudgement:
    return CodeJudgement(
        per_test=tuple(g[0] for g in graded),
        total=len(spec.cases),
        details=tuple(g[1] for g in graded),
        code=code,
        durations_s=tuple(g[2] for g in graded),
    )


def _exec_kwargs(timeout_s: float, memory_mb: int, max_output_bytes: int) -> dict[str, Any]:
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if memory_mb <= 0:
        raise ValueError(f"memory_mb must be positive, got {memory_mb}")
    return {"timeout_s": timeout_s, "memory_mb": memory_mb, "max_output_bytes": max_output_bytes}


def _process_sandbox(workers: int | None) -> Any:
    """The process's one long-lived pool (:func:`cleaner.sandbox.shared_sandbox`, shared with tool calls);
    ``workers`` sizes it if this is its first use."""
    from cleaner.sandbox import shared_sandbox

    return shared_sandbox(workers)


def _test_workers(n_tests: int, workers: int | None, early_stop: bool) -> int:
    if early_stop:
        return 1
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be positive, got {workers}")
    return max(1, min(n_tests, workers or os.cpu_count() or 1))


def judge_code(
    code: str | None,
    spec: TestSpec,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    early_stop: bool = False,
    workers: int | None = None,
    sandbox: Any | None = None,
    grading: Grading = "lenient",
) -> CodeJudgement:
    """Judge ``code`` against ``spec`` in the sandbox (synchronous; no event loop needed).

    Each test is one sandboxed process with a per-test ``timeout_s`` and ``memory_mb``, run through
    ``sandbox.run_sync`` (a ``cleaner.sandbox.Sandbox`` pool) or, without one, the process's shared pool
    (:func:`cleaner.sandbox.shared_sandbox`). Up to ``workers`` tests (default: CPU count) run at once,
    unless ``early_stop``, which runs them in order and stops at the first failure like LiveCodeBench.
    ``grading`` is ``reference`` (LCB's verdicts) or ``lenient`` (module docstring).
    """
    _check_grading(grading)
    early = _precheck(code, spec)
    if early is not None:
        return early
    assert code is not None
    kwargs = _exec_kwargs(timeout_s, memory_mb, max_output_bytes)
    n_workers = _test_workers(len(spec.cases), workers, early_stop)
    if sandbox is None:
        sandbox = _process_sandbox(workers)
    return _judge_with(sandbox.run_sync, code, spec, kwargs, n_workers, early_stop, grading)


def _check_grading(grading: str) -> None:
    if grading not in GRADING_MODES:
        raise ValueError(f"unknown grading mode {grading!r}; expected one of {GRADING_MODES}")


def _judge_with(
    run: Callable[..., Any],
    code: str,
    spec: TestSpec,
    kwargs: dict[str, Any],
    n_workers: int,
    early_stop: bool,
    grading: str,
) -> CodeJudgement:
    marker = f"__cleaner_result_{secrets.token_hex(8)}__"
    jobs = _jobs(code, spec, marker)

    def one(index: int) -> tuple[bool | int, str, float]:
        result = run(jobs[index].program, stdin=jobs[index].stdin, **kwargs)
        status, reason = _grade(result, spec, spec.cases[index], marker, grading)
        return status, reason, float(result.duration_s or 0.0)

    if early_stop or n_workers == 1:
        graded = []
        for i in range(len(jobs)):
            graded.append(one(i))
            if early_stop and graded[-1][0] is not True:
                break
        return _finish(code, spec, graded)
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="cleaner-judge") as threads:
        return _finish(code, spec, list(threads.map(one, range(len(jobs)))))


async def judge_code_async(
    code: str | None,
    spec: TestSpec,
    *,
    sandbox: Any | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    early_stop: bool = False,
    workers: int | None = None,
    grading: Grading = "lenient",
) -> CodeJudgement:
    """Async :func:`judge_code`: tests go through ``await sandbox.run(...)`` (the pool bounds the
    concurrency) or, without ``sandbox``, the process's shared pool (sized by ``workers`` on first use)."""
    _check_grading(grading)
    early = _precheck(code, spec)
    if early is not None:
        return early
    assert code is not None
    kwargs = _exec_kwargs(timeout_s, memory_mb, max_output_bytes)
    if sandbox is None:
        _test_workers(len(spec.cases), workers, early_stop)  # validates workers
        sandbox = _process_sandbox(workers)
    return await _judge_with_async(sandbox, code, spec, kwargs, early_stop, grading)


async def _judge_with_async(
    sandbox: Any, code: str, spec: TestSpec, kwargs: dict[str, Any], early_stop: bool, grading: str
) -> CodeJudgement:
    marker = f"__cleaner_result_{secrets.token_hex(8)}__"
    jobs = _jobs(code, spec, marker)

    async def one(index: int) -> tuple[bool | int, str, float]:
        result = await sandbox.run(jobs[index].program, stdin=jobs[index].stdin, **kwargs)
        status, reason = _grade(result, spec, spec.cases[index], marker, grading)
        return status, reason, float(result.duration_s or 0.0)

    if early_stop:
        graded = []
        for i in range(len(jobs)):
            graded.append(await one(i))
            if graded[-1][0] is not True:
                break
        return _finish(code, spec, graded)
    return _finish(code, spec, list(await asyncio.gather(*(one(i) for i in range(len(jobs))))))


def code_result(judgement: CodeJudgement, grading: str = "lenient") -> dict[str, Any]:
    """verl reward dict for a code row: ``score`` = fraction passed (the paper), ``acc`` = all passed,
    ``grading`` = the mode that judged it."""
    return {
        "score": float(judgement.fraction),
        "acc": judgement.all_passed,
        "pred": judgement.code or "",
        "passed": judgement.passed,
        "total": judgement.total,
        "per_test": json.dumps(list(judgement.per_test)),
        "grading": grading,
    }


def code_score(
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **judge_kwargs: Any,
) -> dict[str, Any]:
    """Extract the last python block of ``solution_str``, judge it against the parsed ground truth, and
    return the verl reward dict (see :func:`code_result`). ``judge_kwargs`` go to :func:`judge_code`."""
    spec = parse_test_spec(ground_truth, extra_info)
    judgement = judge_code(extract_code_block(solution_str), spec, **judge_kwargs)
    return code_result(judgement, judge_kwargs.get("grading", "lenient"))


async def code_score_async(
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **judge_kwargs: Any,
) -> dict[str, Any]:
    """Async :func:`code_score`; ``judge_kwargs`` go to :func:`judge_code_async` (e.g. ``sandbox=``)."""
    spec = parse_test_spec(ground_truth, extra_info)
    judgement = await judge_code_async(extract_code_block(solution_str), spec, **judge_kwargs)
    return code_result(judgement, judge_kwargs.get("grading", "lenient"))


__all__: Sequence[str] = (
    "PASS", "GLOBAL_TIMEOUT", "WRONG_ANSWER", "TIME_LIMIT_EXCEEDED", "RUNTIME_ERROR", "RUNNER_ERROR",
    "LCB_PRELUDE", "TestCase", "TestSpec", "CodeJudgement", "parse_test_spec", "extract_code_block",
    "compare_stdout", "compare_call_output", "judge_code", "judge_code_async", "code_result", "code_score",
    "code_score_async",
)
