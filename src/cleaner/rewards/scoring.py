"""verl custom-reward entry point: ``compute_score(data_source, solution_str, ground_truth, extra_info)``.

Dispatch follows the CLEANER reference (``recipe/demystify/reward.py``) and the dataset names of
Open-AgentRL-30K / the eval sets: a ``data_source`` containing ``"code"`` (``train-code-taco-easy``,
``train-code-leetcode-Medium``, ``livecodebench``) is a code problem, one containing ``"gpqa"`` is multiple
choice, everything else (``math_dapo``, ``train-math-*``, ``aime*``, ``toolcalc/<family>``) is math.

Every row returns the same keys, because verl stacks each key of the reward dicts of a batch into one
array (mixed math / code batches would otherwise be ragged): ``score`` (float), ``acc`` (bool), ``pred``
(str: the extracted answer or code), ``passed`` / ``total`` (ints; math and choice: ``int(acc)`` / 1) and
``per_test`` (JSON text of the LCB per-test codes; ``"[]"`` for math and choice).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from cleaner.rewards.choice import choice_score
from cleaner.rewards.code import (
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT_S,
    code_result,
    extract_code_block,
    judge_code,
    judge_code_async,
    parse_test_spec,
)
from cleaner.rewards.math_reward import MATH_MODES, math_score

RewardKind = Literal["math", "choice", "code"]
DEFAULT_MATH_MODE = "strict"
"""The paper's math reward: exact match of the last ``\\boxed{}``."""


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


def _with_counts(result: dict[str, Any]) -> dict[str, Any]:
    return {**result, "passed": int(bool(result["acc"])), "total": 1, "per_test": json.dumps([])}


def _text(solution_str: Any) -> str:
    return solution_str if isinstance(solution_str, str) else ""


def _code_kwargs(timeout_s: float, memory_mb: int, early_stop: bool) -> dict[str, Any]:
    return {"timeout_s": timeout_s, "memory_mb": memory_mb, "early_stop": early_stop}


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    *,
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
    [0, 1] with ``acc`` = all passed (no code block: 0); code tests run through ``sandbox`` (a
    ``cleaner.sandbox.Sandbox`` pool, usable from any thread) when given. The other keyword arguments
    are verl ``reward_kwargs``;
    ``reward_router_address`` / ``reward_model_tokenizer`` are accepted because verl's reward loop passes
    them when a reward model router is configured, and are unused. Raises ``ValueError`` only for a
    malformed ground truth or an unknown reward mode, never for bad model output.
    """
    del reward_router_address, reward_model_tokenizer
    kind = reward_kind(data_source)
    text = _text(solution_str)
    if kind == "choice":
        return _with_counts(choice_score(text, ground_truth))
    if kind == "math":
        return _with_counts(math_score(text, ground_truth, mode=resolve_math_mode(extra_info, math_mode)))
    spec = parse_test_spec(ground_truth, extra_info)
    judgement = judge_code(
        extract_code_block(text), spec, workers=code_workers, sandbox=sandbox,
        **_code_kwargs(code_timeout_s, code_memory_mb, code_early_stop),
    )
    return code_result(judgement)


async def compute_score_async(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    *,
    sandbox: Any | None = None,
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
        return compute_score(data_source, solution_str, ground_truth, extra_info, math_mode=math_mode)
    spec = parse_test_spec(ground_truth, extra_info)
    judgement = await judge_code_async(
        extract_code_block(_text(solution_str)), spec, sandbox=sandbox, workers=code_workers,
        **_code_kwargs(code_timeout_s, code_memory_mb, code_early_stop),
    )
    return code_result(judgement)
