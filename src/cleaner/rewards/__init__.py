"""Outcome rewards for CLEANER (arXiv 2601.15141): math, multiple choice, code, DAPO overlong penalty.

``compute_score`` is verl's custom-reward function; the pieces are usable on their own:

* :func:`compute_score` grades in one of two named modes (``grading=``, config ``reward.grading``):
  ``reference`` (the authors' ``math_dapo`` grader and LiveCodeBench's verdicts) or ``lenient``
  (normalised answers); docs/rewards.md lists where they differ;
* :func:`reference_math_score` — verl ``math_dapo.compute_score(..., strict_box_verify=True)``, the recipe's;
* :func:`math_score` — +1 / -1 on the normalised last ``\\boxed{}`` (``strict``) or math-verify (``verify``);
* :func:`choice_score` — GPQA option letter in the last ``\\boxed{}``;
* :func:`judge_code` / :func:`judge_code_async` — the LiveCodeBench-semantics judge run in
  ``cleaner.sandbox`` (also used by the LCB evaluation), :func:`code_score` its reward;
* :func:`overlong_penalty` — DAPO's soft overlong punishment, added by the trainer.
"""

from cleaner.rewards.choice import choice_score, extract_choice_letter, parse_choice_ground_truth
from cleaner.rewards.code import (
    GLOBAL_TIMEOUT,
    LCB_PRELUDE,
    PASS,
    RUNNER_ERROR,
    RUNTIME_ERROR,
    TIME_LIMIT_EXCEEDED,
    WRONG_ANSWER,
    CodeJudgement,
    TestCase,
    TestSpec,
    code_result,
    code_score,
    code_score_async,
    compare_call_output,
    compare_stdout,
    extract_code_block,
    judge_code,
    judge_code_async,
    parse_test_spec,
)
from cleaner.rewards.math_reward import (
    MATH_MODES,
    int_text,
    last_boxed_content,
    math_score,
    normalize_answer,
    parse_math_ground_truth,
    reference_last_boxed,
    reference_math_score,
)
from cleaner.rewards.overlong import overlong_penalty
from cleaner.rewards.scoring import (
    DEFAULT_GRADING,
    GRADING_MODES,
    compute_score,
    compute_score_async,
    resolve_grading,
    resolve_math_mode,
    reward_kind,
)

__all__ = [
    "DEFAULT_GRADING",
    "GLOBAL_TIMEOUT",
    "GRADING_MODES",
    "LCB_PRELUDE",
    "MATH_MODES",
    "PASS",
    "RUNNER_ERROR",
    "RUNTIME_ERROR",
    "TIME_LIMIT_EXCEEDED",
    "WRONG_ANSWER",
    "CodeJudgement",
    "TestCase",
    "TestSpec",
    "choice_score",
    "code_result",
    "code_score",
    "code_score_async",
    "compare_call_output",
    "compare_stdout",
    "compute_score",
    "compute_score_async",
    "extract_choice_letter",
    "extract_code_block",
    "int_text",
    "judge_code",
    "judge_code_async",
    "last_boxed_content",
    "math_score",
    "normalize_answer",
    "overlong_penalty",
    "parse_choice_ground_truth",
    "parse_math_ground_truth",
    "parse_test_spec",
    "reference_last_boxed",
    "reference_math_score",
    "resolve_grading",
    "resolve_math_mode",
    "reward_kind",
]
