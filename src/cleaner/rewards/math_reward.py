"""Math outcome reward: the authors' grader (``reference``), a light normalisation, or math-verify equivalence.

CLEANER (arXiv 2601.15141, training recipe) rewards math with +1 / -1 on an exact match of the last
``\\boxed{}`` against the ground truth. The reference implementation (Open-AgentRL
``recipe/demystify/reward.py``) calls verl's ``math_dapo.compute_score(..., strict_box_verify=True)``: it keeps
the last 300 characters of the response, of those the last 100, takes the last ``\\boxed{`` (``str.rfind``),
balances braces from there (``\\{`` counts as a brace) and compares the raw content with the ground-truth
string; no box (or an unclosed last one) is -1. :func:`reference_math_score` is that grader, character for
character (``tests/test_grading_reference.py`` runs it against verl's own function on every test run).

The ``lenient`` grading (:func:`math_score`) differs from it on purpose, for lm-eval-style reporting: the
whole response is searched (a box followed by more than 100 characters still counts), the last *complete*
box wins (an unclosed trailing ``\\boxed{`` falls back to the previous one; escaped braces do not count;
``\\boxed {x}`` is a box), and both sides get a light normalisation (whitespace, ``$``, a trailing ``.``, a
whole-answer ``\\text{}`` wrapper, thousands separators, LaTeX thin spaces), so "1,000" matches "1000" but
``\\dfrac12`` does not match ``\\frac{1}{2}``. docs/rewards.md lists the cases where the two disagree.

``verify`` mode uses HuggingFace math-verify (``parse`` + ``verify``) on the last boxed answer, after a
cheap strict comparison. math-verify guards its parsing with ``signal.alarm``, which only works in the main
thread; elsewhere (reward workers running in threads) we pass ``None`` timeouts, which math-verify
documents as "timeouts disabled", and bound the work by capping the answer length instead.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from typing import Any

from cleaner.protocol import extract_boxed

MATH_MODES = ("strict", "verify")
"""Lenient-grading modes for math rows: ``strict`` (normalised last-boxed match) and ``verify`` (math-verify)."""

REFERENCE_TAIL_CHARS = 300
"""``math_dapo.compute_score`` keeps only the last 300 characters of the response."""
REFERENCE_BOX_WINDOW_CHARS = 100
"""``math_dapo.is_correct_strict_box`` then looks for the box in the last 100 of those."""
_REFERENCE_BOX_OPEN = "\\boxed{"

_VERIFY_TIMEOUT_S = 5
_MAX_VERIFY_ANSWER_CHARS = 1000
_WRAPPER_RE = re.compile(r"^\\(?:text|textbf|textrm|mathrm|mbox)\{(.*)\}$", re.DOTALL)
_THOUSANDS_RE = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_LATEX_SPACES = ("\\!", "\\,", "\\;", "\\:", "\\ ", "~")


def last_boxed_content(text: str) -> str | None:
    """Return the content of the LAST complete ``\\boxed{...}`` in ``text`` (braces balanced), else None.

    Delegates to :func:`cleaner.protocol.extract_boxed`, the project's one boxed-answer extractor. It
    differs from verl's ``math_dapo.last_boxed_only_string`` (the reference) in two edge cases: escaped
    braces ``\\{`` do not count, and an unclosed trailing ``\\boxed{`` falls back to the previous
    complete box instead of giving no answer.
    """
    if not isinstance(text, str):
        return None
    return extract_boxed(text)


def reference_last_boxed(text: str) -> str | None:
    """verl ``math_dapo.last_boxed_only_string`` + ``remove_boxed``: the content after the LAST ``\\boxed{``,
    up to the brace that balances it (every ``{`` / ``}`` counts, escaped or not); None when there is no
    ``\\boxed{`` or the last one is never closed."""
    start = text.rfind(_REFERENCE_BOX_OPEN)
    if start < 0:
        return None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + len(_REFERENCE_BOX_OPEN) : i]
    return None


def _reference_ground_truths(ground_truth: Any) -> list[str]:
    """The ground truth as the reference compares it: a string untouched (no strip, no JSON unwrapping);
    other shapes (an int, a numpy scalar, a list of answers) become strings, any of which may match."""
    if hasattr(ground_truth, "tolist") and not isinstance(ground_truth, str):
        ground_truth = ground_truth.tolist()
    if isinstance(ground_truth, str):
        return [ground_truth]
    if isinstance(ground_truth, int) and not isinstance(ground_truth, bool):
        return [int_text(ground_truth)]
    return parse_math_ground_truth(ground_truth)


def reference_math_score(solution_str: str, ground_truth: Any) -> dict[str, Any]:
    """The authors' math grader: verl ``math_dapo.compute_score(solution_str, ground_truth,
    strict_box_verify=True)`` (last 300 characters, last 100 of those, last ``\\boxed{``, raw content ``==``
    ground truth), +1 / -1. ``pred`` is the raw box content, ``""`` where verl gives None (as the recipe's
    reward wrapper does). Differs only where verl would raise: a non-string response scores -1, and a
    non-string ground truth is turned into strings first (see :func:`_reference_ground_truths`)."""
    answers = _reference_ground_truths(ground_truth)
    text = solution_str if isinstance(solution_str, str) else ""
    window = text[-REFERENCE_TAIL_CHARS:][-REFERENCE_BOX_WINDOW_CHARS:]
    pred = reference_last_boxed(window)
    correct = pred is not None and pred in answers
    return {"score": 1.0 if correct else -1.0, "acc": correct, "pred": pred or ""}


def int_text(value: int) -> str:
    """``str(value)`` without Python's int-to-str digit limit (``sys.set_int_max_str_digits``), which
    makes ``str`` raise ``ValueError`` for integers of more than 4,300 digits by default."""
    try:
        return str(value)
    except ValueError:
        chunk = 10**1000
        digits, rest = [], abs(value)
        while rest:
            rest, part = divmod(rest, chunk)
            digits.append(str(part).zfill(1000))
        return ("-" if value < 0 else "") + "".join(reversed(digits)).lstrip("0")


def normalize_answer(answer: str) -> str:
    """Light normalisation used by ``strict`` mode on both the prediction and the ground truth.

    Removes whitespace and LaTeX spacing commands, surrounding ``$``, a trailing period, one whole-answer
    ``\\text{}``-style wrapper and thousands separators (``1,000`` / ``1{,}000``). Nothing mathematical:
    ``\\dfrac`` stays ``\\dfrac`` and ``x=3`` stays ``x=3``.
    """
    s = answer.strip()
    for _ in range(3):  # wrappers can nest: "$\text{5}$."
        before = s
        s = s.strip().strip("$").strip()
        if s.endswith("."):
            s = s[:-1].rstrip()
        match = _WRAPPER_RE.match(s)
        if match:
            s = match.group(1)
        if s == before:
            break
    for space in _LATEX_SPACES:
        s = s.replace(space, "")
    s = re.sub(r"\s+", "", s)
    s = s.replace("{,}", ",")
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    return s


def parse_math_ground_truth(ground_truth: Any) -> list[str]:
    """Normalise the math ground-truth shapes of our datasets to a list of acceptable answers.

    Accepts a plain string (DAPO-Math, AIME, testbed), an int, a JSON-encoded list of strings in a string
    (Skywork-OR1: ``'["15625"]'``), or a real list / array of those. A JSON list of non-strings such as
    ``"[1, 2]"`` is an interval answer, not a wrapper, and is kept whole. Raises ``ValueError`` for an
    empty or unusable ground truth.
    """
    if hasattr(ground_truth, "tolist") and not isinstance(ground_truth, str):
        ground_truth = ground_truth.tolist()  # numpy scalars / arrays from a verl batch
    if isinstance(ground_truth, bool) or ground_truth is None:
        raise ValueError(f"math ground truth must be a string, number or list, got {ground_truth!r}")
    if isinstance(ground_truth, int):
        return [int_text(ground_truth)]
    if isinstance(ground_truth, float):
        return [str(ground_truth)]
    if isinstance(ground_truth, str):
        text = ground_truth.strip()
        if not text:
            raise ValueError("math ground truth is an empty string")
        if text.startswith("[") and text.endswith("]"):
            try:
                decoded = json.loads(text)
            except json.JSONDecodeError:
                decoded = None
            if decoded == []:
                raise ValueError("math ground truth is an empty JSON list")
            if isinstance(decoded, list) and all(isinstance(x, str) for x in decoded):
                return parse_math_ground_truth(decoded)
        return [text]
    if isinstance(ground_truth, Sequence):
        answers: list[str] = []
        for item in ground_truth:
            answers.extend(parse_math_ground_truth(item))
        if not answers:
            raise ValueError("math ground truth is an empty list")
        return answers
    raise ValueError(f"math ground truth has unsupported type {type(ground_truth).__name__}")


def _verify_equivalent(prediction: str, answers: Sequence[str]) -> bool:
    """math-verify equivalence of ``prediction`` (boxed content) with any of ``answers``; never raises."""
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    if len(prediction) > _MAX_VERIFY_ANSWER_CHARS:
        return False
    in_main = threading.current_thread() is threading.main_thread()
    timeout = _VERIFY_TIMEOUT_S if in_main else None
    try:
        target = parse(f"\\boxed{{{prediction}}}", parsing_timeout=timeout)
        if not target:
            return False
        for answer in answers:
            gold = parse(f"\\boxed{{{answer}}}", parsing_timeout=timeout)
            if gold and verify(gold, target, timeout_seconds=timeout):
                return True
    except (Exception, TimeoutException):  # math-verify's timeout is a BaseException
        return False
    return False


def math_score(solution_str: str, ground_truth: Any, *, mode: str = "strict") -> dict[str, Any]:
    """Score a math response: +1 / -1 on the last ``\\boxed{}`` answer (no boxed answer: -1).

    ``mode="strict"`` is the paper's exact match after ``normalize_answer``; ``mode="verify"`` also accepts
    math-verify equivalences (``0.5`` for ``\\frac{1}{2}``, ``x=3`` for ``3``, ``\\sqrt{8}`` for
    ``2\\sqrt{2}``). Returns ``{"score", "acc", "pred"}``; raises ``ValueError`` only for an unknown mode
    or a malformed ground truth.
    """
    if mode not in MATH_MODES:
        raise ValueError(f"unknown math reward mode {mode!r}; expected one of {MATH_MODES}")
    answers = parse_math_ground_truth(ground_truth)
    boxed = last_boxed_content(solution_str)
    if boxed is None:
        return {"score": -1.0, "acc": False, "pred": ""}
    pred = normalize_answer(boxed)
    correct = bool(pred) and any(pred == normalize_answer(a) for a in answers)
    if not correct and mode == "verify" and pred:
        correct = _verify_equivalent(boxed, answers)
    return {"score": 1.0 if correct else -1.0, "acc": correct, "pred": pred}
