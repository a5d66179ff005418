"""Reward hook for verl 0.9.1: ``cleaner.rewards`` as ``custom_reward_function`` + a DAPO reward manager.

CLEANER.md recipe: outcome reward +1/-1 (maths: the last ``\\boxed{}``; code: fraction of tests passed) plus
DAPO's overlong penalty (buffer 4096). verl wires this as

- ``reward.custom_reward_function = {path: pkg://cleaner.engines.verl.reward, name: compute_score}``:
  :func:`compute_score` awaits :func:`cleaner.rewards.compute_score_async` (``reward_kwargs``: ``grading`` =
  config ``reward.grading``, ``math_mode``, ``code_timeout_s``, ...);
- ``reward.reward_manager = {source: importlib, name: CleanerRewardManager, module.path:
  pkg://cleaner.engines.verl.reward}``: verl's own ``DAPORewardManager`` (the overlong penalty, configured by
  ``reward.reward_kwargs.overlong_buffer_cfg`` / ``max_resp_len``) which first copies the agent loop's statistics
  (``cleaner/...`` extra fields, see :mod:`cleaner.engines.verl.agent_loop`) into the row's ``extra_info``.

:func:`compute_score` returns those statistics as numbers next to ``score`` / ``acc``: verl stacks every key of
the reward dicts into the batch's reward extra info, logs them per data source for validation
(``val-aux/<source>/cleaner/<name>/mean@k``) and writes them with the rollouts to ``trainer.rollout_data_dir``.
Every row carries the same keys (0 when the agent loop is verl's stock ``tool_agent``), so batches never turn
ragged; the string key ``grading`` (the mode that scored the row) reaches the dumped generations, so
``cleaner verl eval-summary`` can say which grader produced each number (verl's metrics skip string keys).

With ``grading: reference`` a math or GPQA row gets the verdict of the authors' ``recipe/demystify/reward.py``
grader (verl ``math_dapo.compute_score(..., strict_box_verify=True)``); that recipe also lifts a wrong answer's
-1 by 0.1 per tool call (capped at -0.6), a shaping the paper does not describe and we do not apply.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping

import numpy as np
from verl.experimental.reward_loop.reward_manager.dapo import DAPORewardManager

from cleaner.engines.verl import STAT_PREFIX
from cleaner.rewards import compute_score_async
from cleaner.saar import PurifyStats

__all__ = ["REWARD_STAT_KEYS", "CleanerRewardManager", "compute_score", "stats_from_extra_info"]

REWARD_STAT_KEYS: tuple[str, ...] = tuple(
    STAT_PREFIX + name
    for name in (
        *(f.name for f in fields(PurifyStats) if f.name != "stop_reason"),
        "turns", "generated_tokens", "response_length", "model_tokens", "malformed_calls", "spliced", "answered",
    )
)
"""Numeric per-trajectory statistics forwarded into verl's reward extra info (booleans as 0/1)."""


def stats_from_extra_info(extra_info: Mapping[str, Any] | None) -> dict[str, float]:
    """The agent loop's statistics found in ``extra_info`` as floats, 0.0 for each one that is absent."""
    info = extra_info if isinstance(extra_info, Mapping) else {}
    out: dict[str, float] = {}
    for key in REWARD_STAT_KEYS:
        value = info.get(key, 0)
        out[key] = float(value) if isinstance(value, (bool, int, float, np.integer, np.floating)) else 0.0
    return out


async def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **reward_kwargs: Any,
) -> dict[str, Any]:
    """verl ``custom_reward_function``: :func:`cleaner.rewards.compute_score_async` + the trajectory statistics.

    ``reward_kwargs`` are ``reward.custom_reward_function.reward_kwargs`` (``grading``, ``math_mode``,
    ``code_timeout_s``, ``code_memory_mb``, ``code_early_stop``, ``code_workers``) and what verl's reward loop
    adds (``reward_router_address``, ``reward_model_tokenizer``). Without ``grading`` the rewards' default
    (``lenient``) applies.
    """
    result = await compute_score_async(data_source, solution_str, ground_truth, extra_info, **reward_kwargs)
    return {**result, **stats_from_extra_info(extra_info)}


class CleanerRewardManager(DAPORewardManager):
    """verl's ``DAPORewardManager`` (outcome score + DAPO overlong penalty) that sees the agent's statistics.

    verl hands the reward manager the agent loop's extra fields as ``tool_extra_fields``; the stock DAPO manager
    ignores them (the naive one merges everything). This one copies the ``cleaner/...`` entries into a copy of
    the row's ``extra_info`` before scoring, so :func:`compute_score` can report them.
    """

    async def run_single(self, data: Any) -> dict:
        data = data[-1:]
        tool_fields = data.non_tensor_batch.get("tool_extra_fields")
        if tool_fields is not None and isinstance(tool_fields[0], Mapping):
            extra = data.non_tensor_batch.get("extra_info")
            merged = dict(extra[0]) if extra is not None and isinstance(extra[0], Mapping) else {}
            merged.update({k: v for k, v in tool_fields[0].items() if str(k).startswith(STAT_PREFIX)})
            column = np.empty(1, dtype=object)
            column[0] = merged
            data.non_tensor_batch["extra_info"] = column
        return await super().run_single(data)
