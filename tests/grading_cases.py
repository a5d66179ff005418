"""Loader of the differential grading cases (tests/fixtures/grading_cases.yaml) and the recorded LiveCodeBench
verdicts (tests/fixtures/grading_lcb_verdicts.json), shared by tests/test_grading_reference.py and
scripts/record_lcb_verdicts.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CASES_PATH = FIXTURES / "grading_cases.yaml"
LCB_VERDICTS_PATH = FIXTURES / "grading_lcb_verdicts.json"
DEFAULT_LCB_TIMEOUT_S = 6


def expand_text(value: Any) -> str:
    """A text field: a string, or a list of parts (string, ``[string, count]``, ``{power: [base, exp]}``)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ValueError(f"a text field must be a string or a list of parts, got {value!r:.60}")
    parts = []
    for part in value:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, list) and len(part) == 2:
            parts.append(str(part[0]) * int(part[1]))
        elif isinstance(part, dict) and set(part) == {"power"}:
            base, exponent = part["power"]
            parts.append(_digits(int(base) ** int(exponent)))
        else:
            raise ValueError(f"unknown text part {part!r:.60}")
    return "".join(parts)


def _digits(value: int) -> str:
    from cleaner.rewards import int_text

    return int_text(value)


def load_cases() -> dict[str, Any]:
    """The case table with every text field expanded; ids are checked to be unique per section."""
    table = yaml.safe_load(CASES_PATH.read_text(encoding="utf-8"))
    for section in ("math", "gpqa", "code"):
        ids = [case["id"] for case in table[section]]
        if len(ids) != len(set(ids)):
            raise ValueError(f"{CASES_PATH}: duplicate ids in {section!r}")
    for case in table["math"] + table["gpqa"]:
        case["response"] = expand_text(case["response"])
        case["ground_truth"] = expand_text(case["ground_truth"])
    for case in table["code"]:
        case["code"] = expand_text(case["code"])
        case["tests"] = [{"input": expand_text(t["input"]), "output": expand_text(t["output"])} for t in case["tests"]]
        case.setdefault("timeout", DEFAULT_LCB_TIMEOUT_S)
    return table


def lcb_sample(case: dict[str, Any]) -> dict[str, Any]:
    """LiveCodeBench's evaluation sample for a code case: ``{"input_output": json}`` as its ``run_test`` reads."""
    io: dict[str, Any] = {"inputs": [t["input"] for t in case["tests"]],
                          "outputs": [t["output"] for t in case["tests"]]}
    if case["type"] == "functional":
        io["fn_name"] = case["fn_name"]
    return {"input_output": json.dumps(io)}


def lcb_ground_truth(case: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The same tests as a LiveCodeBench row of our data: ground truth JSON and ``extra_info``."""
    tests = [{"input": t["input"], "output": t["output"], "testtype": case["type"]} for t in case["tests"]]
    extra = {"fn_name": case["fn_name"]} if case["type"] == "functional" else {}
    return json.dumps(tests), extra


def load_lcb_verdicts() -> dict[str, Any]:
    return json.loads(LCB_VERDICTS_PATH.read_text(encoding="utf-8"))
