"""DAPO's overlong reward shaping ("soft overlong punishment", DAPO paper eq. 13).

CLEANER trains with the DAPO overlong penalty (buffer 4096 tokens). The definition matches verl's
``DAPORewardManager`` (``verl/workers/reward_manager/dapo.py``): with ``expected = max_response_length -
overlong_buffer_len`` the penalty is ``min(-(length - expected) / overlong_buffer_len * penalty_factor, 0)``,
i.e. 0 up to ``expected`` tokens, then linear down to ``-penalty_factor`` at ``max_response_length``. Like
verl we do not clamp beyond the maximum (a truncated response never exceeds it).
"""

from __future__ import annotations


def overlong_penalty(
    response_length: int,
    *,
    max_response_length: int,
    overlong_buffer_len: int,
    penalty_factor: float = 1.0,
) -> float:
    """Return the DAPO overlong penalty (<= 0) added to the outcome reward of one response.

    ``response_length`` counts the response tokens verl counts (``attention_mask`` over the response,
    tool tokens included). Raises ``ValueError`` for an inconsistent configuration, mirroring the
    assertions of verl's ``DAPORewardManager``.
    """
    if overlong_buffer_len <= 0:
        raise ValueError(f"overlong_buffer_len must be positive, got {overlong_buffer_len}")
    if max_response_length < overlong_buffer_len:
        raise ValueError(
            f"max_response_length ({max_response_length}) must be >= overlong_buffer_len ({overlong_buffer_len})"
        )
    if response_length < 0:
        raise ValueError(f"response_length must be >= 0, got {response_length}")
    expected_length = max_response_length - overlong_buffer_len
    exceed = response_length - expected_length
    return float(min(-exceed / overlong_buffer_len * penalty_factor, 0.0))
