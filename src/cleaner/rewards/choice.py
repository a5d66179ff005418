"""Multiple-choice outcome reward (GPQA-Diamond): the option letter in the last ``\\boxed{}``.

The CLEANER reference scores GPQA with the same strict last-boxed rule as math (its prompt asks to "put the
final uppercase letter option of this problem into \\boxed{}"), +1 / -1. We accept the common spellings
of a letter answer inside the box: ``B``, ``(B)``, ``\\text{B}``, ``\\textbf{(B)}``, ``B.``, ``B)``, and a
letter followed by its option text (``B) 42``); the letter is compared case-insensitively.
"""

from __future__ import annotations

import re
from typing import Any

from cleaner.rewards.math_reward import last_boxed_content

_WRAPPER_RE = re.compile(r"^\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\{(.*)\}$", re.DOTALL)
_LETTER_RE = re.compile(r"^\(?([A-Za-z])\)?(?:[.:)]?|[.:)]\s+.*)$", re.DOTALL)
_GROUND_TRUTH_RE = re.compile(r"^\(?([A-Za-z])\)?$")


def extract_choice_letter(answer: str) -> str | None:
    """Return the upper-case option letter written in a boxed answer, or ``None`` if there is none."""
    s = answer.strip()
    for _ in range(3):
        before = s
        s = s.strip().strip("$").strip()
        match = _WRAPPER_RE.match(s)
        if match:
            s = match.group(1).strip()
        if s == before:
            break
    match = _LETTER_RE.match(s)
    return match.group(1).upper() if match else None


def parse_choice_ground_truth(ground_truth: Any) -> str:
    """Validate a GPQA ground truth: one option letter (``"A"`` or ``"(A)"``); raises ``ValueError``."""
    if hasattr(ground_truth, "tolist") and not isinstance(ground_truth, str):
        ground_truth = ground_truth.tolist()
    if not isinstance(ground_truth, str):
        raise ValueError(f"multiple-choice ground truth must be a letter string, got {ground_truth!r}")
    match = _GROUND_TRUTH_RE.match(ground_truth.strip())
    if not match:
        raise ValueError(f"multiple-choice ground truth must be one option letter, got {ground_truth!r}")
    return match.group(1).upper()


def choice_score(solution_str: str, ground_truth: Any) -> dict[str, Any]:
    """Score a multiple-choice response +1 / -1 on the letter in its last ``\\boxed{}`` (none: -1)."""
    letter = parse_choice_ground_truth(ground_truth)
    boxed = last_boxed_content(solution_str)
    pred = extract_choice_letter(boxed) if boxed is not None else None
    correct = pred == letter
    return {"score": 1.0 if correct else -1.0, "acc": correct, "pred": pred or ""}
