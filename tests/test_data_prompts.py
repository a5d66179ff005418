"""Prompt templates (cleaner.prompts): tool schema, per-domain answer instructions, DAPO rewrite."""

from __future__ import annotations

import pytest

from cleaner import prompts


def test_tool_schema_is_the_reference_code_interpreter() -> None:
    tools = prompts.tool_schemas()
    fn = tools[0]["function"]
    assert tools[0]["type"] == "function" and fn["name"] == "code_interpreter"
    assert fn["parameters"]["required"] == ["code"] and fn["parameters"]["properties"]["code"]["type"] == "string"
    tools[0]["function"]["name"] = "mutated"
    assert prompts.tool_schemas()[0]["function"]["name"] == "code_interpreter"


def test_dapo_instruction_is_replaced_by_boxed() -> None:
    raw = prompts.DAPO_PREFIX + "Compute $1+1$." + prompts.DAPO_SUFFIX
    problem = prompts.strip_dapo_instruction(raw)
    assert problem == "Compute $1+1$."
    text = prompts.math_user_prompt(problem)
    assert "Answer:" not in text and "\\boxed{" in text and "without any units" in text
    with pytest.raises(ValueError, match="Answer: \\$Answer"):
        prompts.strip_dapo_instruction("Compute $1+1$.")


def test_domain_instructions() -> None:
    mc = prompts.multiple_choice_user_prompt("Which?", ["a", "b", "c", "d"], domain="physics")
    assert "(A) a\n(B) b\n(C) c\n(D) d" in mc and "uppercase letter option" in mc and "physics problem" in mc
    stdin = prompts.code_user_prompt("Sum two numbers.")
    assert "Read the inputs from stdin" in stdin and "```python\n# YOUR CODE HERE\n```" in stdin
    call = prompts.code_user_prompt("Sum.", starter_code="class Solution:\n    def f(self):\n        ")
    assert "starter code" in call and "class Solution:\n    def f(self):\n```" in call and "stdin" not in call
    assert prompts.aime_user_prompt("P").startswith(prompts.MATH_PREAMBLE + prompts.TOOL_HINT + "P")


def test_open_agentrl_prompt_dispatch() -> None:
    assert prompts.open_agentrl_user_prompt("math_dapo", "x") == "x" + prompts.NO_UNITS_NOTE_30K
    assert prompts.open_agentrl_user_prompt("train-code-taco-easy", "x").endswith(prompts.CODE_SUBMIT_NOTE)
    assert prompts.open_agentrl_user_prompt("train-math-still3", "x") == prompts.math_user_prompt("x")
