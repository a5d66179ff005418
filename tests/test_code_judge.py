"""The LiveCodeBench-semantics code judge, run for real in ``cleaner.sandbox`` (short timeouts)."""

from __future__ import annotations

import json
import time

import pytest

from cleaner.rewards import (
    PASS,
    RUNTIME_ERROR,
    TIME_LIMIT_EXCEEDED,
    WRONG_ANSWER,
    code_score,
    compute_score,
    compute_score_async,
    judge_code,
    judge_code_async,
    parse_test_spec,
)

FAST = {"timeout_s": 3.0, "memory_mb": 1024}

# A TACO-style stdin problem: read n, then n integers; print their sum and their mean with 2 decimals.
STDIN_SPEC = json.dumps(
    {
        "inputs": ["3\n1 2 3\n", "1\n10\n", "4\n1 1 1 2\n"],
        "outputs": ["6\n2.00\n", "10\n10.00\n", "5\n1.25\n"],
    }
)
STDIN_SOLUTION = """
n = int(input())
xs = list(map(int, input().split()))
print(sum(xs))
print(f"{sum(xs) / n:.2f}")
"""

# A LiveCodeBench functional (call-based) problem: LeetCode starter code, JSON lines as arguments.
LCB_FUNCTIONAL = json.dumps(
    [
        {"input": "[1, 2, 3]\n2", "output": "[3, 4, 5]", "testtype": "functional"},
        {"input": "[]\n5", "output": "[]", "testtype": "functional"},
        {"input": "[-1]\n1", "output": "[0]", "testtype": "functional"},
    ]
)
LCB_EXTRA = {"starter_code": "class Solution:\n    def addAll(self, nums: List[int], k: int) -> List[int]:\n        "}
LCB_SOLUTION = """
class Solution:
    def addAll(self, nums: List[int], k: int) -> List[int]:
        return [x + k for x in nums]
"""


def respond(code: str, lang: str = "python") -> str:
    return f"I will test it first.\n```{lang}\nprint('scratch')\n```\nFinal solution:\n```{lang}\n{code}\n```\n"


# --------------------------------------------------------------------------------------- stdin
def test_stdin_problem_all_pass_and_partial() -> None:
    spec = parse_test_spec(STDIN_SPEC)
    good = judge_code(STDIN_SOLUTION, spec, **FAST)
    assert good.per_test == (PASS, PASS, PASS) and good.all_passed and good.fraction == 1.0
    # Integer mean: right on tests 1 and 2 only ("2" vs "2.00" is equal as Decimal; "1" vs "1.25" is not).
    partial = judge_code("n=int(input()); xs=list(map(int,input().split())); print(sum(xs)); print(sum(xs)//n)",
                         spec, **FAST)
    assert partial.per_test == (PASS, PASS, WRONG_ANSWER)
    assert partial.fraction == pytest.approx(2 / 3) and not partial.all_passed
    assert partial.lcb_results() == [True, True, -2]


def test_stdin_reward_through_compute_score() -> None:
    result = compute_score("train-code-taco-easy", respond(STDIN_SOLUTION), STDIN_SPEC, code_timeout_s=3.0)
    assert result["score"] == 1.0 and result["acc"] is True
    assert (result["passed"], result["total"]) == (3, 3) and json.loads(result["per_test"]) == [True] * 3
    assert "sum(xs)" in result["pred"]


def test_stdin_follows_lcb_semantics() -> None:
    spec = parse_test_spec(json.dumps({"inputs": ["2 3\n"], "outputs": ["5\n"]}))
    # LCB's prelude: sys / math names are available without imports; exit() after the answer is fine.
    assert judge_code("a, b = map(int, sys.stdin.read().split())\nprint(a + b)\nexit(3)\nprint('x')",
                      spec, **FAST).per_test == (PASS,)
    assert judge_code("if __name__ == '__main__':\n    print(sum(map(int, input().split())))",
                      spec, **FAST).per_test == (PASS,)
    assert judge_code("print('5.000')", spec, **FAST).per_test == (PASS,)  # Decimal fallback
    assert judge_code("print(' 5 ')\nprint()", spec, **FAST).per_test == (PASS,)  # strip
    assert judge_code("print(6)", spec, **FAST).per_test == (WRONG_ANSWER,)
    assert judge_code("print(5); print(5)", spec, **FAST).per_test == (WRONG_ANSWER,)  # extra line


def test_stdin_failure_codes() -> None:
    spec = parse_test_spec(json.dumps({"inputs": ["1\n", "2\n"], "outputs": ["1\n", "2\n"]}))
    runtime = judge_code("print(int(input()) // 0)", spec, **FAST)
    assert runtime.per_test == (RUNTIME_ERROR, RUNTIME_ERROR) and "ZeroDivisionError" in runtime.details[0]
    start = time.monotonic()
    tle = judge_code("while True:\n    pass", spec, timeout_s=0.5, memory_mb=512)
    assert tle.per_test == (TIME_LIMIT_EXCEEDED, TIME_LIMIT_EXCEEDED)
    assert time.monotonic() - start < 10
    syntax = judge_code("print(int(input())", spec, **FAST)
    assert syntax.per_test == (RUNTIME_ERROR, RUNTIME_ERROR) and syntax.error == "syntax_error"
    assert syntax.lcb_results() == [-4]  # LCB: a compile error is a single -4
    memory = judge_code("x = bytearray(2 * 1024 ** 3)\nprint(1)", spec, timeout_s=3.0, memory_mb=256)
    assert memory.per_test == (RUNTIME_ERROR, RUNTIME_ERROR)
    flood = judge_code("print('y' * 100000)", spec, max_output_bytes=1000, **FAST)
    assert flood.per_test == (WRONG_ANSWER, WRONG_ANSWER)


def test_early_stop_stops_at_first_failure_like_lcb() -> None:
    spec = parse_test_spec(json.dumps({"inputs": ["1\n", "2\n", "3\n"], "outputs": ["1\n", "0\n", "3\n"]}))
    full = judge_code("print(input())", spec, **FAST)
    assert full.per_test == (PASS, WRONG_ANSWER, PASS) and full.passed == 2
    stopped = judge_code("print(input())", spec, early_stop=True, **FAST)
    assert stopped.per_test == (PASS, WRONG_ANSWER) and stopped.total == 3 and stopped.passed == 1
    assert stopped.lcb_results() == full.lcb_results() == [True, -2]
    assert stopped.lcb_metadata()["error_code"] == -2


def test_no_code_block_scores_zero() -> None:
    result = compute_score("train-code-taco-easy", "I think the answer is 6.", STDIN_SPEC)
    assert result["score"] == 0.0 and result["acc"] is False and result["passed"] == 0 and result["total"] == 3
    assert compute_score("livecodebench", "```cpp\nint main(){}\n```", LCB_FUNCTIONAL, LCB_EXTRA)["score"] == 0.0


# ----------------------------------------------------------------------------------- call-based
def test_livecodebench_call_based_problem() -> None:
    result = compute_score("livecodebench", respond(LCB_SOLUTION), LCB_FUNCTIONAL, LCB_EXTRA, code_timeout_s=3.0)
    assert result["score"] == 1.0 and result["acc"] is True and json.loads(result["per_test"]) == [True] * 3
    spec = parse_test_spec(LCB_FUNCTIONAL, LCB_EXTRA)
    # A tuple result counts as the list (LCB converts tuples), prints do not disturb the result line.
    as_tuple = "class Solution:\n    def addAll(self, nums, k):\n        print('debug', nums)\n" \
               "        return tuple(x + k for x in nums)"
    assert judge_code(as_tuple, spec, **FAST).per_test == (PASS, PASS, PASS)
    wrong = "class Solution:\n    def addAll(self, nums, k):\n        return [x + k for x in nums if x > 0]"
    assert judge_code(wrong, spec, **FAST).per_test == (PASS, PASS, False)  # LCB stores the comparison
    crash = "class Solution:\n    def addAll(self, nums, k):\n        return [x + k for x in nums][0:1] + [nums[5]]"
    assert judge_code(crash, spec, **FAST).per_test == (RUNTIME_ERROR,) * 3
    missing = "class Solution:\n    def other(self, nums, k):\n        return nums"
    assert judge_code(missing, spec, **FAST).per_test == (RUNTIME_ERROR,) * 3
    plain_function = "def addAll(nums, k):\n    return [x + k for x in nums]"
    assert judge_code(plain_function, spec, **FAST).all_passed


def test_lcb_call_based_is_exact_but_taco_unwraps_singletons() -> None:
    code = "def square(x):\n    return x * x"
    taco = parse_test_spec(json.dumps({"fn_name": "square", "inputs": [[3], [4]], "outputs": [[9], [15]]}))
    assert judge_code(code, taco, **FAST).per_test == (PASS, False)
    lcb = parse_test_spec(json.dumps([{"input": "3", "output": "[9]", "testtype": "functional"}]), {"fn_name": "square"})
    assert judge_code(code, lcb, **FAST).per_test == (False,)
    unserialisable = "def square(x):\n    return {x * x}"
    assert judge_code(unserialisable, taco, **FAST).per_test == (False, False)


# ------------------------------------------------------------------------------ LeetCode check()
LEETCODE_SPEC = json.dumps(
    {
        "import_prefix": "from typing import *\nfrom collections import *\n",
        "test_code": (
            "def check(candidate):\n"
            "    assert candidate(nums=[2, 7, 11, 15], target=9) == [0, 1]\n"
            "    assert candidate(nums=[3, 2, 4], target=6) == [1, 2]\n"
            "    assert candidate(nums=[3, 3], target=6) == [0, 1]\n"
            "    assert candidate(nums=[1, 5, 5], target=10) == [1, 2]\n"
        ),
        "entry_point": "Solution().twoSum",
    }
)
TWO_SUM = """
class Solution:
    def twoSum(self, nums: List[int], target: int) -> List[int]:
        seen = {}
        for i, x in enumerate(nums):
            if target - x in seen:
                return [seen[target - x], i]
            seen[x] = i
"""


def test_leetcode_check_problem() -> None:
    result = compute_score("train-code-leetcode-Easy", respond(TWO_SUM), LEETCODE_SPEC, code_timeout_s=3.0)
    assert result["score"] == 1.0 and result["acc"] is True and result["total"] == 4
    spec = parse_test_spec(LEETCODE_SPEC)
    first_pair_only = TWO_SUM.replace("if target - x in seen:", "if target - x in seen and seen[target - x] == 0:")
    partial = judge_code(first_pair_only, spec, **FAST)
    assert partial.per_test == (PASS, WRONG_ANSWER, PASS, WRONG_ANSWER) and partial.fraction == 0.5
    # Leaving the process before check() runs must not count as passing.
    exits_early = TWO_SUM + "\nimport sys\nsys.exit(0)\n"
    assert judge_code(exits_early, spec, **FAST).per_test == (RUNTIME_ERROR,) * 4


# ------------------------------------------------------------------------------------------ async
async def test_async_judge_with_and_without_a_sandbox_pool() -> None:
    from cleaner.sandbox import Sandbox

    spec = parse_test_spec(STDIN_SPEC)
    threaded = await judge_code_async(STDIN_SOLUTION, spec, **FAST)
    assert threaded.per_test == (PASS, PASS, PASS)
    async with Sandbox(workers=2) as box:
        pooled = await judge_code_async(STDIN_SOLUTION, spec, sandbox=box, **FAST)
        assert pooled.per_test == (PASS, PASS, PASS)
        result = await compute_score_async("livecodebench", respond(LCB_SOLUTION), LCB_FUNCTIONAL, LCB_EXTRA,
                                           sandbox=box, code_timeout_s=3.0)
        assert result["acc"] is True and result["passed"] == 3
    math_result = await compute_score_async("math_dapo", "\\boxed{0.5}", "\\frac{1}{2}", math_mode="verify")
    assert math_result["score"] == 1.0


def test_code_score_is_sync_without_event_loop() -> None:
    result = code_score(respond(STDIN_SOLUTION, lang="py"), STDIN_SPEC, timeout_s=3.0, workers=1)
    assert result["score"] == 1.0
