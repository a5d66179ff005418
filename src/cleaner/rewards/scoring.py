"""verl custom-reward entry point: ``compute_score(data_source, solution_str, ground_truth, extra_info)``.

Dispatch follows the CLEANER reference (``recipe/demystify/reward.py``) and the dataset names of
Open-AgentRL-30K / the eval sets: a ``data_source`` containing ``"code"`` (``train-code-taco-easy``,
``train-code-leetcode-Medium``, ``livecodebench``) is a code problem, one containing ``"gpqa"`` is multiple
choice, everything else (``math_dapo``, ``train-math-*``, ``aime*``, ``toolcalc/<family>``) is math.

Grading modes (``grading=``, config ``reward.grading``; docs/rewards.md):

* ``reference`` -- the verdicts of the graders the paper's numbers come from: math and GPQA rows as the
  authors' recipe grades them (verl ``math_dapo.compute_score(..., strict_box_verify=True)``, raw last box in
  the last 100 characters ``==`` ground truth), code rows as LiveCodeBench's ``testing_util.py`` (call-based
  results compared with ``==`` in the solution's process, tuples turned into lists at the top level only);
* ``lenient`` -- the light normalisation of :func:`cleaner.rewards.math_reward.math_score` (optionally
  math-verify, ``math_mode="verify"``), GPQA letter spellings, and call-based results that also pass after a
  JSON round trip (nested tuples, ...). The default of the function and of the testbed.

Every row returns the same keys, because verl stacks each key of the reward dicts of a batch into one
array (mixed math / code batches would otherwise be ragged): ``score`` (float), ``acc`` (bool), ``pred``
(str: the extracted answer or code), ``passed`` / ``total`` (ints; math and choice: ``int(acc)`` / 1),
``per_test`` (JSON text of the LCB per-test codes; ``"[]"`` for math and choice) and ``grading`` (the mode
that produced the score, so every reported number names its grader).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from cleaner.rewards.choice import choice_score, parse_choice_ground_truth
from cleaner.rewards.code import (
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT_S,
    GRADING_MODES,
    code_result,
    extract_code_block,
    judge_code,
    judge_code_async,
    parse_test_spec,
)
from cleaner.rewards.math_reward import MATH_MODES, math_score, reference_math_score

RewardKind = Literal["math", "choice", "code"]
DEFAULT_GRADING = "lenient"
"""Today's behaviour (the testbed's grading); the paper configs set ``reward.grading: reference``."""
DEFAULT_MATH_MODE = "strict"
"""Lenient grading's math rule: normalised exact match of the last ``\\boxed{}``."""


def reward_kind(data_source: str) -> RewardKind:
    """Which reward a row gets, from its ``data_source`` name (see the module docstring)."""
    name = str(data_source or "").lower()
    if "code" in name:
        return "code"
    if "gpqa" in name:
        return "choice"
    return "math"


def resolve_math_mode(extra_info: Mapping[str, Any] | None, math_mode: str | None) -> str:
    """``extra_info["reward_mode"]`` (per row) wins over ``math_mode`` (per run), then ``"strict"``."""
    mode = None
    if isinstance(extra_info, Mapping):
        mode = extra_info.get("reward_mode")
    mode = mode or math_mode or DEFAULT_MATH_MODE
    if mode not in MATH_MODES:
        raise ValueError(f"unknown math reward mode {mode!r}; expected one of {MATH_MODES}")
    return str(mode)


def resolve_grading(grading: str | None) -> str:
    """``grading`` checked against :data:`GRADING_MODES`; None means :data:`DEFAULT_GRADING`."""
    mode = grading or DEFAULT_GRADING
    if mode not in GRADING_MODES:
        raise ValueError(f"unknown grading mode {mode!r}; expected one of {GRADING_MODES} (config reward.grading)")
    return str(mode)


def _with_counts(result: dict[str, Any], grading: str) -> dict[str, Any]:
    return {**result, "passed": int(bool(result["acc"])), "total": 1, "per_test": json.dumps([]), "grading": grading}


def _answer_score(kind: RewardKind, text: str, ground_truth: Any, extra_info: Any, math_mode: str | None,
                  grading: str) -> dict[str, Any]:
    """Math or multiple-choice score under ``grading`` (the reference grades both with ``math_dapo``)."""
    if grading == "reference":
        mode = resolve_math_mode(extra_info, math_mode)
        if mode != "strict":
            raise ValueError(f"math mode {mode!r} is a lenient-grading option; reference grading is math_dapo's "
                             "exact match (set reward.grading: lenient to use it)")
        if kind == "choice":
            parse_choice_ground_truth(ground_truth)  # same validation in both modes
        return reference_math_score(text, ground_truth)
    if kind == "choice":
        return choice_score(text, ground_truth)
    return math_score(text, ground_truth, mode=resolve_math_mode(extra_info, math_mode))


def _text(solution_str: Any) -> str:
    return solution_str if isinstance(solution_str, str) else ""


def _code_kwargs(timeout_s: float, memory_mb: int, early_stop: bool, grading: str) -> dict[str, Any]:
    return {"timeout_s": timeout_s, "memory_mb": memory_mb, "early_stop": early_stop, "grading": grading}


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    *,
    grading: str | None = None,
    math_mode: str | None = None,
    code_timeout_s: float = DEFAULT_TIMEOUT_S,
    code_memory_mb: int = DEFAULT_MEMORY_MB,
    code_early_stop: bool = False,
    code_workers: int | None = None,
    sandbox: Any | None = None,
    reward_router_address: Any = None,
    reward_model_tokenizer: Any = None,
) -> dict[str, Any]:
    """Outcome reward of one response (verl's ``custom_reward_function`` signature).

    Math and multiple choice score +1 / -1 (the paper); code scores the fraction of tests passed in
    [0, 1] with ``acc`` = all passed (no code block: 0); ``grading`` picks the grader (module docstring);
    code tests run through ``sandbox`` (a ``cleaner.sandbox.Sandbox`` pool, usable from any thread) when
    given. The other keyword arguments are verl ``reward_kwargs``;
    ``reward_router_address`` / ``reward_model_tokenizer`` are accepted because verl's reward loop passes
    them when a reward model router is configured, and are unused. Raises ``ValueError`` only for a
    malformed ground truth or an unknown / inconsistent mode, never for bad model output.
    """
    del reward_router_address, reward_model_tokenizer
    mode = resolve_grading(grading)
    kind = reward_kind(data_source)
    text = _text(solution_str)
    if kind != "code":
        return _with_counts(_answer_score(kind, text, ground_truth, extra_info, math_mode, mode), mode)
    spec = parse_test_spec(ground_truth, extra_info)
    judgement = judge_code(
        extract_code_block(text), spec, workers=code_workers, sandbox=sandbox,
        **_code_kwargs(code_timeout_s, code_memory_mb, code_early_stop, mode),
    )
    return code_result(judgement, mode)


async def compute_score_async(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    *,
    sandbox: Any | None = None,
    grading: str | None = None,
    math_mode: str | None = None,
    code_timeout_s: float = DEFAULT_TIMEOUT_S,
    code_memory_mb: int = DEFAULT_MEMORY_MB,
    code_early_stop: bool = False,
    code_workers: int | None = None,
    reward_router_address: Any = None,
    reward_model_tokenizer: Any = None,
) -> dict[str, Any]:
    """Async :func:`compute_score` (verl's reward loop awaits coroutine reward functions directly).

    Code tests go through ``sandbox`` (a ``cleaner.sandbox.Sandbox`` pool) when given. Math and choice
    scoring is cheap and synchronous; math-verify runs without its signal timeouts off the main thread.
    """
    del reward_router_address, reward_model_tokenizer
    if reward_kind(data_source) != "code":
        return compute_score(data_source, solution_str, ground_truth, extra_info, grading=grading,
                             math_mode=math_mode)
    mode = resolve_grading(grading)
    spec = parse_test_spec(ground_truth, extra_info)
    judgement = await judge_code_async(
        extract_code_block(_text(solution_str)), spec, sandbox=sandbox, workers=code_workers,
        **_code_kwargs(code_timeout_s, code_memory_mb, code_early_stop, mode),
    )
    return code_result(judgement, mode)
