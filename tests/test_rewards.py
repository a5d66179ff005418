"""Rewards without the sandbox: math (strict vs verify), multiple choice, dispatch, ground-truth shapes,
code-spec parsing / extraction / LCB output comparison, and the DAPO overlong penalty against verl."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from cleaner.rewards import (
    PASS,
    RUNTIME_ERROR,
    WRONG_ANSWER,
    CodeJudgement,
    choice_score,
    compare_call_output,
    compare_stdout,
    compute_score,
    extract_code_block,
    math_score,
    normalize_answer,
    overlong_penalty,
    parse_math_ground_truth,
    parse_test_spec,
    reward_kind,
)

RESULT_KEYS = {"score", "acc", "pred", "passed", "total", "per_test", "grading"}


def boxed(answer: str) -> str:
    return f"Let me think. The tool printed 42.\nSo the final answer is $\\boxed{{{answer}}}$."


# ------------------------------------------------------------------------------------------ math
# (prediction in the box, ground truth, strict accepts?, verify accepts?)
EQUIVALENCES = [
    ("15625", "15625", True, True),
    ("-3", "-3", True, True),
    ("1,000", "1000", True, True),  # thousands separator: light normalisation
    ("1{,}000", "1000", True, True),
    ("\\text{5}", "5", True, True),
    ("5.", "5", True, True),
    ("\\frac{1}{2}", "\\frac{1}{2}", True, True),
    ("\\frac {1} {2}", "\\frac{1}{2}", True, True),  # whitespace only
    ("0.5", "\\frac{1}{2}", False, True),
    ("1/2", "\\frac{1}{2}", False, True),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", False, True),
    ("\\frac12", "\\frac{1}{2}", False, True),
    ("x=3", "3", False, True),
    ("3.0", "3", False, True),
    ("007", "7", False, True),
    ("\\sqrt{8}", "2\\sqrt{2}", False, True),
    ("[1, 2)", "[1,2)", True, True),
    ("\\frac{\\pi}{2}", "\\pi/2", False, True),
    ("1+x^2", "x^2+1", False, True),
    ("(0,1)", "[0,1]", False, False),  # open vs closed interval
    ("-3", "3", False, False),
    ("4", "3", False, False),
    ("3.1", "3", False, False),
]


@pytest.mark.parametrize(("pred", "truth", "strict_ok", "verify_ok"), EQUIVALENCES)
def test_math_strict_vs_verify(pred: str, truth: str, strict_ok: bool, verify_ok: bool) -> None:
    strict = math_score(boxed(pred), truth, mode="strict")
    verify = math_score(boxed(pred), truth, mode="verify")
    assert (strict["acc"], strict["score"]) == (strict_ok, 1.0 if strict_ok else -1.0)
    assert (verify["acc"], verify["score"]) == (verify_ok, 1.0 if verify_ok else -1.0)


def test_math_uses_last_boxed_and_nested_braces() -> None:
    text = "First guess \\boxed{7}. Actually the answer is \\boxed{\\frac{\\sqrt{3}}{2}}."
    assert math_score(text, "\\frac{\\sqrt{3}}{2}")["acc"] is True
    assert math_score(text, "7")["acc"] is False
    assert math_score(text, "7")["pred"] == "\\frac{\\sqrt{3}}{2}"


@pytest.mark.parametrize("text", ["", "The answer is 5.", "\\boxed{", "\\boxed{}", None, 12345])
def test_math_no_answer_is_minus_one(text: object) -> None:
    for mode in ("strict", "verify"):
        result = compute_score("math_dapo", text, "5", {"reward_mode": mode})  # type: ignore[arg-type]
        assert result["score"] == -1.0 and result["acc"] is False


@pytest.mark.parametrize(
    ("truth", "expected"),
    [
        ("15625", ["15625"]),
        ('["15625"]', ["15625"]),  # Skywork-OR1: JSON list in a string
        ('["2", "-2"]', ["2", "-2"]),
        (-3, ["-3"]),
        (np.int64(12), ["12"]),
        (["a", "b"], ["a", "b"]),
        (np.array(['["7"]'], dtype=object), ["7"]),
        ("[1, 2]", ["[1, 2]"]),  # an interval, not a JSON wrapper
    ],
)
def test_math_ground_truth_shapes(truth: object, expected: list[str]) -> None:
    assert parse_math_ground_truth(truth) == expected


def test_skywork_list_ground_truth_any_element_counts() -> None:
    assert compute_score("train-math-deepscaler", boxed("-2"), '["2", "-2"]')["acc"] is True
    assert compute_score("train-math-deepscaler", boxed("15625"), '["15625"]')["score"] == 1.0


@pytest.mark.parametrize("truth", ["", "   ", None, True, "[]", [], {"a": 1}])
def test_math_malformed_ground_truth_raises(truth: object) -> None:
    with pytest.raises(ValueError, match="ground truth"):
        math_score(boxed("1"), truth)


def test_math_modes_selectable_and_validated() -> None:
    text = boxed("0.5")
    assert compute_score("math_dapo", text, "\\frac{1}{2}")["acc"] is False  # default: strict (paper)
    assert compute_score("math_dapo", text, "\\frac{1}{2}", math_mode="verify")["acc"] is True
    assert compute_score("math_dapo", text, "\\frac{1}{2}", {"reward_mode": "verify"})["acc"] is True
    # the row's own mode wins over the run-wide keyword
    assert compute_score("math_dapo", text, "\\frac{1}{2}", {"reward_mode": "strict"}, math_mode="verify")["acc"] is False
    with pytest.raises(ValueError, match="unknown math reward mode"):
        compute_score("math_dapo", text, "1", {"reward_mode": "fuzzy"})
    with pytest.raises(ValueError, match="unknown math reward mode"):
        math_score(text, "1", mode="lenient")


def test_verify_mode_works_off_the_main_thread() -> None:
    """math-verify's signal timeouts only work in the main thread; reward workers run in threads."""
    results: list[dict] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(math_score(boxed("x=3"), "3", mode="verify"))
            results.append(math_score(boxed("\\sqrt{8}"), "2\\sqrt{2}", mode="verify"))
            results.append(math_score(boxed("4"), "3", mode="verify"))
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert not errors
    assert [r["acc"] for r in results] == [True, True, False]


def test_normalize_answer_is_light() -> None:
    assert normalize_answer(" $\\text{1,234}$. ") == "1234"
    assert normalize_answer("10\\!000") == "10000"
    assert normalize_answer("\\dfrac{1}{2}") == "\\dfrac{1}{2}"
    assert normalize_answer("x = 3") == "x=3"


# ------------------------------------------------------------------------------- multiple choice
@pytest.mark.parametrize("answer", ["B", "(B)", "\\text{B}", "\\text{(B)}", "\\textbf{B}", "B.", "B) 42", "b"])
def test_choice_accepts_letter_spellings(answer: str) -> None:
    assert choice_score(boxed(answer), "B") == {"score": 1.0, "acc": True, "pred": "B"}


@pytest.mark.parametrize("answer", ["C", "Because", "A or B", "42", ""])
def test_choice_rejects_other_answers(answer: str) -> None:
    result = compute_score("gpqa_diamond", boxed(answer), "B")
    assert result["score"] == -1.0 and result["acc"] is False


def test_choice_uses_last_box_and_validates_ground_truth() -> None:
    assert choice_score("\\boxed{A} no wait \\boxed{D}", "D")["acc"] is True
    assert choice_score("no box, answer D", "D")["score"] == -1.0
    for bad in ["", "AB", "42", None, 1]:
        with pytest.raises(ValueError, match="multiple-choice ground truth"):
            choice_score(boxed("A"), bad)


# ------------------------------------------------------------------------------------- dispatch
@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("math_dapo", "math"),
        ("train-math-numinamath1.5_olympiads", "math"),
        ("aime24", "math"),
        ("toolcalc/arith", "math"),
        ("mega-science", "math"),
        ("gpqa_diamond", "choice"),
        ("train-code-taco-easy", "code"),
        ("train-code-leetcode-Medium", "code"),
        ("livecodebench", "code"),
        ("LiveCodeBench_v6", "code"),
    ],
)
def test_reward_kind_from_data_source(source: str, kind: str) -> None:
    assert reward_kind(source) == kind


def test_every_row_kind_returns_the_same_keys() -> None:
    """verl stacks each reward key over a batch: mixed math/choice/code batches need one key set."""
    math_result = compute_score("math_dapo", boxed("5"), "5")
    choice_result = compute_score("gpqa_diamond", boxed("A"), "A")
    no_code = compute_score("train-code-taco-easy", "I cannot solve it.", json.dumps({"inputs": ["1\n"], "outputs": ["1\n"]}))
    for result in (math_result, choice_result, no_code):
        assert set(result) == RESULT_KEYS
        assert isinstance(result["score"], float) and isinstance(result["per_test"], str)
    assert math_result["passed"] == 1 and math_result["total"] == 1
    assert no_code == {"score": 0.0, "acc": False, "pred": "", "passed": 0, "total": 1,
                       "per_test": json.dumps([WRONG_ANSWER]), "grading": "lenient"}


def test_toolcalc_integer_answers() -> None:
    assert compute_score("toolcalc/modpow", boxed("123"), 123)["score"] == 1.0
    assert compute_score("toolcalc/modpow", boxed("0123"), 123)["score"] == -1.0


# --------------------------------------------------------------------------- code spec / helpers
def test_extract_code_block_takes_last_python_block() -> None:
    response = (
        "Plan.\n```python\nprint('draft')\n```\nText.\n```cpp\nint main(){}\n```\n"
        '<tool_call>{"name": "code_interpreter", "arguments": {"code": "```python\\nprint(0)\\n```"}}</tool_call>\n'
        "<tool_response>\n```python\nprint('from the tool')\n```\n</tool_response>\n"
        "Final:\n```py\nprint('final')\n```\n"
    )
    assert extract_code_block(response) == "print('final')\n"
    assert extract_code_block("```\nx = 1\n```") == "x = 1\n"
    assert extract_code_block("```python\nx = 1\n``` then ```\ny = 2\n```") == "x = 1\n"  # python beats bare
    assert extract_code_block("```python\nunterminated") is None
    assert extract_code_block("no code") is None
    assert extract_code_block("```python\n\n```") is None


def test_parse_skywork_stdin_spec() -> None:
    spec = parse_test_spec(json.dumps({"inputs": ["1 2\n", ["3 4", "5"]], "outputs": ["3\n", ["7", "5"]]}))
    assert spec.mode == "stdin"
    assert [c.stdin for c in spec.cases] == ["1 2\n", "3 4\n5"]
    assert [c.expected for c in spec.cases] == ["3\n", "7\n5"]


def test_parse_skywork_call_spec_accepts_lists_and_json_lines() -> None:
    spec = parse_test_spec(json.dumps({"fn_name": "add", "inputs": [[1, 2], "[3]\n4"], "outputs": [[3], "7"]}))
    assert spec.mode == "call" and spec.fn_name == "add" and spec.unwrap_singleton_output
    assert [json.loads(c.args_json) for c in spec.cases] == [[1, 2], [[3], 4]]
    assert [c.expected for c in spec.cases] == [[3], 7]


def test_parse_leetcode_check_spec_splits_asserts() -> None:
    test_code = (
        "def check(candidate):\n"
        "    base = [2, 7, 11, 15]\n"
        "    assert candidate(nums=base, target=9) == [0, 1]\n"
        "    assert candidate(nums=[3, 2, 4],\n"
        "                     target=6) == [1, 2]\n"
    )
    spec = parse_test_spec(json.dumps({"import_prefix": "from typing import *\n", "test_code": test_code,
                                       "entry_point": "Solution().twoSum"}))
    assert spec.mode == "check" and spec.entry_point == "Solution().twoSum" and len(spec.cases) == 2
    assert all("base = [2, 7, 11, 15]" in c.check_source for c in spec.cases)
    assert "target=9" in spec.cases[0].check_source and "target=9" not in spec.cases[1].check_source


def test_parse_livecodebench_specs() -> None:
    stdin = parse_test_spec(json.dumps([{"input": "3\n", "output": "6\n", "testtype": "stdin"}]))
    assert stdin.mode == "stdin" and not stdin.unwrap_singleton_output
    functional = json.dumps([{"input": "[1, 2]\n3", "output": "[4, 5]", "testtype": "functional"}])
    starter = "class Solution:\n    def addAll(self, nums: List[int], k: int) -> List[int]:\n        "
    for extra in ({"fn_name": "addAll"}, {"starter_code": starter}, {"metadata": json.dumps({"func_name": "addAll"})}):
        spec = parse_test_spec(functional, extra)
        assert spec.mode == "call" and spec.fn_name == "addAll" and not spec.unwrap_singleton_output
        assert json.loads(spec.cases[0].args_json) == [[1, 2], 3] and spec.cases[0].expected == [4, 5]


@pytest.mark.parametrize(
    ("truth", "extra", "message"),
    [
        ("not json", None, "not valid JSON"),
        ("eJzLSM3JyQcABiwCFQ==", None, "compressed LiveCodeBench"),
        ("42", None, "JSON object or list"),
        ("[]", None, "empty test list"),
        (json.dumps({"inputs": ["1"], "outputs": []}), None, "1 inputs but 0 outputs"),
        (json.dumps({"inputs": [], "outputs": []}), None, "no test cases"),
        (json.dumps({"inputs": "1", "outputs": "1"}), None, "list fields"),
        (json.dumps({"foo": 1}), None, "none of the known keys"),
        (json.dumps({"test_code": "assert True", "entry_point": "f"}), None, "def check"),
        (json.dumps({"test_code": "def check(c):\n    assert c(1)", "entry_point": ""}), None, "entry_point"),
        (json.dumps({"test_code": "def check(:", "entry_point": "f"}), None, "does not parse"),
        (json.dumps([{"input": "1", "output": "1", "testtype": "functional"}]), {}, "fn_name"),
        (json.dumps([{"input": "1", "output": "1", "testtype": "stdin"},
                     {"input": "1", "output": "1", "testtype": "functional"}]), {"fn_name": "f"}, "mix"),
        (json.dumps([{"input": "{bad", "output": "1", "testtype": "functional"}]), {"fn_name": "f"}, "not valid JSON"),
        (json.dumps([{"input": 1, "output": "1"}]), None, "string 'input' and 'output'"),
    ],
)
def test_malformed_code_spec_raises(truth: str, extra: dict | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_test_spec(truth, extra)


def test_malformed_code_ground_truth_raises_from_compute_score() -> None:
    with pytest.raises(ValueError, match="code ground truth"):
        compute_score("train-code-taco-easy", "```python\nprint(1)\n```", "{oops")


@pytest.mark.parametrize(
    ("actual", "expected", "ok"),
    [
        ("3\n", "3", True),
        ("  1 2 3  \r\n4\n\n", "1 2 3\n4", True),  # strip, per-line strip
        ("1.50 2", "1.5 2.0", True),  # Decimal fallback per token
        ("0.3333333", "0.333333", False),  # no numeric tolerance beyond representation (LCB)
        ("1e3", "1000", True),
        ("1 2", "1  2", True),  # text differs, Decimal tokens equal
        ("YES", "yes", False),
        ("1\n2", "1 2", False),  # line count differs
        ("", "", True),
        ("abc 1.0", "abc 1", False),  # non-numeric token: Decimal fallback fails
    ],
)
def test_compare_stdout_follows_lcb(actual: str, expected: str, ok: bool) -> None:
    assert compare_stdout(actual, expected)[0] is ok


def test_compare_call_output() -> None:
    assert compare_call_output([1, 2], [1, 2])
    assert not compare_call_output([1, 2], [[1, 2]])  # LCB: exact
    assert compare_call_output([1, 2], [[1, 2]], unwrap_singleton_output=True)  # APPS/TACO wrapping
    assert not compare_call_output(0.30000000000000004, 0.3)


def test_code_judgement_lcb_shapes() -> None:
    judgement = CodeJudgement(per_test=(PASS, WRONG_ANSWER, PASS), total=3, details=("", "wa", ""))
    assert judgement.passed == 2 and judgement.fraction == pytest.approx(2 / 3) and not judgement.all_passed
    assert judgement.lcb_results() == [True, -2]
    assert judgement.lcb_metadata()["error_code"] == WRONG_ANSWER
    call_wrong = CodeJudgement(per_test=(PASS, False), total=2, details=("", "wrong answer: [1] != [2]"))
    assert call_wrong.lcb_results() == [True, False] and call_wrong.passed == 1
    assert call_wrong.lcb_metadata()["error_code"] == WRONG_ANSWER
    assert CodeJudgement(per_test=(PASS,), total=1, details=("",), durations_s=(0.25,)).lcb_metadata() == {
        "execution time": 0.25}
    compile_error = CodeJudgement(per_test=(RUNTIME_ERROR,) * 4, total=4, details=("c",) * 4)
    assert compile_error.lcb_results() == [-4]


# ---------------------------------------------------------------------------------- overlong
def test_overlong_penalty_shape() -> None:
    kwargs = {"max_response_length": 20480, "overlong_buffer_len": 4096}
    assert overlong_penalty(0, **kwargs) == 0.0
    assert overlong_penalty(16384, **kwargs) == 0.0
    assert overlong_penalty(16384 + 2048, **kwargs) == pytest.approx(-0.5)
    assert overlong_penalty(20480, **kwargs) == pytest.approx(-1.0)
    assert overlong_penalty(20480, penalty_factor=0.3, **kwargs) == pytest.approx(-0.3)
    with pytest.raises(ValueError, match="overlong_buffer_len"):
        overlong_penalty(10, max_response_length=100, overlong_buffer_len=0)
    with pytest.raises(ValueError, match="max_response_length"):
        overlong_penalty(10, max_response_length=10, overlong_buffer_len=100)


def test_overlong_penalty_matches_verl_dapo_reward_manager() -> None:
    """Run verl's own DAPORewardManager on a batch of every response length and compare."""
    from types import SimpleNamespace

    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast
    from verl import DataProto
    from verl.workers.reward_manager.dapo import DAPORewardManager

    raw = Tokenizer(WordLevel({"<pad>": 0, "</s>": 1, "a": 2}, unk_token="<pad>"))
    raw.pre_tokenizer = WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", pad_token="<pad>")
    max_len, prompt_len = 48, 3
    lengths = list(range(1, max_len + 1))
    n = len(lengths)
    attention = torch.zeros((n, prompt_len + max_len), dtype=torch.long)
    attention[:, :prompt_len] = 1
    for i, length in enumerate(lengths):
        attention[i, prompt_len : prompt_len + length] = 1
    batch = DataProto.from_dict(
        tensors={"prompts": torch.full((n, prompt_len), 2), "responses": torch.full((n, max_len), 2),
                 "attention_mask": attention},
        non_tensors={"reward_model": np.array([{"ground_truth": "1"}] * n, dtype=object),
                     "data_source": np.array(["math_dapo"] * n, dtype=object)},
    )
    for buffer_len, factor in [(16, 1.0), (7, 0.5), (48, 2.0)]:
        config = SimpleNamespace(enable=True, len=buffer_len, penalty_factor=factor, log=True)
        manager = DAPORewardManager(tokenizer, 0, compute_score=lambda **_: {"score": 0.0},
                                    max_resp_len=max_len, overlong_buffer_cfg=config)
        rewards = manager(batch, return_dict=True)["reward_tensor"]
        ours = [overlong_penalty(length, max_response_length=max_len, overlong_buffer_len=buffer_len,
                                 penalty_factor=factor) for length in lengths]
        verl_values = [float(rewards[i, length - 1]) for i, length in enumerate(lengths)]
        assert ours == pytest.approx(verl_values, abs=1e-6)
        by_length = dict(zip(lengths, ours))
        assert by_length[max_len] == pytest.approx(-factor)
        assert by_length.get(max_len - buffer_len, 0.0) == 0.0 and by_length[max_len - buffer_len + 1] < 0
