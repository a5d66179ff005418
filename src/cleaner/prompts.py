"""Prompt templates of the CLEANER reproduction, in one place.

What lives here:
- ``CODE_INTERPRETER_TOOL``: the OpenAI function schema of the one tool the agent has. Chat templates
  (Qwen3 / Qwen2.5 ``tools=``) render it into the system prompt, so RL rows never carry a system message.
- The per-domain user-message wrappers: maths and numeric science (answer in ``\\boxed{}``), multiple choice
  (the option letter in ``\\boxed{}``), code (a final fenced ```python block, stdin/stdout or starter code).

Sources. The authors' training code (github.com/Tianshi-Xu/Open-AgentRL, the Open-CLEANER / DemyAgent
recipe: ``recipe/demystify/sandbox_fusion_tool_config.yaml`` for the tool schema and
``recipe/demystify/reward.py`` ``CustomRLHFDataset`` for the user-message wrappers) builds its prompts at load
time from the published Open-AgentRL-30K rows. The reference strings below are kept verbatim (typos included:
they are what the published checkpoints were trained on); the ones marked "ours" have no reference
counterpart and are documented as our own in ``docs/data.md``. The LiveCodeBench formatting sentences come
from LiveCodeBench's ``lcb_runner/prompts/code_generation.py``.
"""

from __future__ import annotations

import copy
from typing import Any

# Reference: recipe/demystify/sandbox_fusion_tool_config.yaml (tool_schema).
CODE_INTERPRETER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "code_interpreter",
        "description": "A tool for executing code.",
        "parameters": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "The code to execute."},
            },
            "required": ["code"],
        },
    },
}


def tool_schemas() -> list[dict[str, Any]]:
    """The ``tools=`` list for ``tokenizer.apply_chat_template`` (a fresh copy: callers may mutate it)."""
    return [copy.deepcopy(CODE_INTERPRETER_TOOL)]


# ---- reference wrappers (recipe/demystify/reward.py) ----
MATH_PREAMBLE = (
    "You are a reasoning assistant that solves math problems carefully and accurately.\n"
    "Analyze and solve the following math problem step by step.\n"
    "Be explicit about your reasoning before performing any calculation.\n\n"
)
TOOL_HINT = (
    "You may use the provided tool to perform precise and efficient calculations or "
    "to verify intermediate or final results before concluding.\n\n"
)
AGENT_NOTE = (
    "**Note:** Use tools only when necessary for computation or verification. "
    "Once you confirm the final answer, stop calling tools and output it in the required format."
)
BOXED_ANSWER_FORMAT = (
    "\nRemember once you make sure the current answer is your final answer, do not call the tools again and "
    "directly output the final answer in the following text format, the answer format must be: "
    "\\boxed{'The final answer goes here.'}."
)
NO_UNITS_NOTE = (
    "\nDo not put units of the final answer inside \\boxed{}. The content of \\boxed{} should be the final "
    "numerical value of the final answer only, without any units."
)
# map_fn2 (math_dapo and mega-science rows of Open-AgentRL-30K) words the note slightly differently.
NO_UNITS_NOTE_30K = (
    "\nDo not put units of the final answer inside \\boxed{}. The content of \\boxed{} should be the "
    "numerical value of the final answer only, without any units."
)
CHOICE_LETTER_NOTE = "\n Here you need to put the final uppercase letter option of this problem into \\boxed{}"
CODE_SUBMIT_NOTE = (
    "\nBefore sumbit your code, you can utilize tools to check the correctness of your code, once you make sure "
    "the current code is correct, do not call the tools again and submit your code within "
    "```python\n# YOUR CODE HERE\n```."
)
CODE_PREAMBLE = (
    "You will be given a question (problem specification) and will generate a correct Python program that "
    "matches the specification and passes all tests.\n\n"
)

# ---- LiveCodeBench formatting (lcb_runner/prompts/code_generation.py) ----
LCB_WITH_STARTER_CODE = (
    "You will use the following starter code to write the solution to the problem and enclose your code "
    "within delimiters."
)
LCB_WITHOUT_STARTER_CODE = (
    "Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test on the "
    "sample inputs). Enclose your code within delimiters as follows. Ensure that when the python program runs, "
    "it reads the inputs, runs the algorithm and writes output to STDOUT."
)

# ---- the DAPO-Math-17k instruction that the paper's prompts replace ----
DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'


def math_user_prompt(problem: str) -> str:
    """User message for a training maths problem with a closed-form answer in ``\\boxed{}``.

    Reference ``map_fn_skywork`` (maths branch), concatenated exactly as there (no separators added):
    preamble, problem, tool hint, tool note, boxed answer format, no-units note. Used for Skywork-OR1 maths
    rows (their own prompt text as ``problem``) and for DAPO-Math-17k rows (the bare problem, after the
    "Answer: $Answer" instruction is stripped).
    """
    return MATH_PREAMBLE + problem + TOOL_HINT + AGENT_NOTE + BOXED_ANSWER_FORMAT + NO_UNITS_NOTE


def aime_user_prompt(problem: str) -> str:
    """User message for an AIME evaluation problem (reference ``map_fn``, exact order and concatenation)."""
    return MATH_PREAMBLE + TOOL_HINT + problem + AGENT_NOTE + BOXED_ANSWER_FORMAT


def science_user_prompt(problem: str, *, domain: str = "science") -> str:
    """User message for a science problem with a short numeric reference answer (MegaScience subset).

    Ours: the reference appends only its no-units note to the (unpublished) MegaScience prompt text of
    Open-AgentRL-30K; we use the GPQA wrapper's domain sentence with the maths answer format.
    """
    head = f"Analyze and solve the following {domain} problem step by step. \n\n"
    return head + TOOL_HINT + problem + AGENT_NOTE + BOXED_ANSWER_FORMAT + NO_UNITS_NOTE


def format_choices(choices: list[str]) -> str:
    """``(A) ...`` lines, one per option, in the given order (ours: the reference's GPQA text is unpublished)."""
    return "\n".join(f"({chr(65 + i)}) {choice}" for i, choice in enumerate(choices))


def multiple_choice_user_prompt(question: str, choices: list[str], *, domain: str = "science") -> str:
    """User message for a multiple-choice question; the answer is the option letter in ``\\boxed{}``.

    Reference ``map_fn_gpqa``: domain sentence, tool hint, problem, tool note, answer format, letter note.
    The problem text (question, blank line, the ``(A)``-``(D)`` options) is ours.
    """
    head = f"Analyze and solve the following {domain} problem step by step. \n\n"
    problem = question.strip() + "\n\n" + format_choices(choices) + "\n"
    return head + TOOL_HINT + problem + AGENT_NOTE + BOXED_ANSWER_FORMAT + CHOICE_LETTER_NOTE


def code_user_prompt(problem: str, *, starter_code: str = "") -> str:
    """User message for a LiveCodeBench problem: a final ```python block, reading stdin or completing the
    starter code.

    Reference ``map_lcb`` (preamble, problem, tool note, LCB formatting sentence, submission note). Ours:
    with starter code (call-based problems) we use LiveCodeBench's own starter-code sentence, which the
    reference omits, and we do not repeat the public tests after the problem (``question_content`` already
    shows the examples).
    """
    if starter_code.strip():
        fmt = LCB_WITH_STARTER_CODE + "\n```python\n" + starter_code.rstrip() + "\n```"
    else:
        fmt = LCB_WITHOUT_STARTER_CODE + "\n```python\n# YOUR CODE HERE\n```"
    return CODE_PREAMBLE + problem.strip() + "\n\n" + AGENT_NOTE + "\n\n" + fmt + CODE_SUBMIT_NOTE


def code_training_user_prompt(original_prompt: str) -> str:
    """User message for a Skywork-OR1 code row: its own prompt text (which already states the I/O format)
    followed by the tool note and the submission instruction (reference ``map_fn_skywork``, code branch)."""
    return original_prompt + AGENT_NOTE + CODE_SUBMIT_NOTE


def strip_dapo_instruction(content: str) -> str:
    """The bare problem of a DAPO-Math-17k prompt, without its "Answer: $Answer" instruction lines.

    Raises ValueError when the text does not carry the DAPO instruction (a changed upstream prompt must not be
    silently wrapped twice).
    """
    if not content.startswith(DAPO_PREFIX):
        raise ValueError("prompt does not start with the DAPO 'Answer: $Answer' instruction")
    body = content[len(DAPO_PREFIX) :]
    if body.endswith(DAPO_SUFFIX):
        body = body[: -len(DAPO_SUFFIX)]
    return body.strip()


def open_agentrl_user_prompt(data_source: str, content: str) -> str:
    """The user message the reference trains on for one published Open-AgentRL-30K row.

    Reference ``CustomRLHFDataset._read_files_and_tokenize``: ``math_dapo`` and ``mega-science`` rows already
    ask for ``\\boxed{}`` and get only the no-units note (``map_fn2``); the Skywork rows are wrapped at load
    time (``map_fn_skywork``): code rows by the submission note, maths rows by the maths wrapper.
    """
    if data_source in ("math_dapo", "mega-science"):
        return content + NO_UNITS_NOTE_30K
    if "code" in data_source:
        return code_training_user_prompt(content)
    return math_user_prompt(content)
