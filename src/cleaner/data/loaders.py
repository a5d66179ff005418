"""Training-data loaders: each public source -> normalised RL rows (``cleaner.data.schema``).

Sources and their quirks (schemas in ``docs/data.md``; the paper's mix in CLEANER.md "Data"):

- DAPO-Math-17k: 1.79M rows = 17,917 problems repeated; deduplicated on ``extra_info.index`` (first
  occurrence kept). Its "Answer: $Answer" instruction is stripped and the bare problem wrapped in the
  ``\\boxed{}`` maths prompt.
- Skywork-OR1-RL-Data ``math``: ground truth is a JSON-encoded list in a string (``'["15625"]'``), unwrapped
  to its first element. ``code``: ground truth is a JSON object, either ``{inputs, outputs[, fn_name]}``
  (stdin/stdout or call-based tests) or ``{import_prefix, test_code, entry_point}`` (a ``check`` function);
  kept verbatim (the code judge reads it), validated, and its shape recorded in ``extra_info.test_type``.
- MegaScience: only rows whose ``reference_answer`` is a plain number are selected (``NUMERIC_ANSWER``),
  with a bounded question length, deduplicated on the question text; the mix then samples 3,000.
- Open-AgentRL-30K: the published mix, re-wrapped with the reference's load-time prompts.

Every loader returns a ``Loaded`` (``rows, problems = load_x(...)`` also works): valid rows plus one
``RowProblem`` per rejected row (source row position, field, reason); more than ``max_bad_fraction`` rejected
rows raise ``DataError``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import pyarrow as pa

from cleaner import prompts
from cleaner.data.schema import DEFAULT_AGENT_NAME, DataError, RowProblem, check_bad_fraction, row_uid
from cleaner.data.sources import DEFAULT_CACHE_DIR, SourceSpec, read_table


class BadRow(Exception):
    """Raised by a row normaliser: ``field`` broke the schema for ``reason``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass
class Loaded:
    """Result of a loader: valid rows, rejected-row problems, and the counts a report needs.

    ``n_source`` counts the rows considered (after deduplication), ``n_unselected`` those a selection rule
    (not a schema error) left out, e.g. MegaScience rows without a numeric answer.
    """

    name: str
    rows: list[dict[str, Any]]
    problems: list[RowProblem]
    n_source: int
    n_unselected: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        yield self.rows
        yield self.problems

    def summary(self) -> dict[str, Any]:
        return {
            "source_rows": self.n_source,
            "valid_rows": len(self.rows),
            "bad_rows": len({p.row for p in self.problems}),
            "unselected_rows": self.n_unselected,
            "first_problems": [str(p) for p in self.problems[:10]],
            **self.notes,
        }


# ------------------------------------------------------------------------------------------ helpers


def get_field(row: Mapping[str, Any], dotted: str) -> Any:
    """``row["a"]["b"]`` for ``"a.b"``; a missing or null value raises ``BadRow(dotted, "missing")``."""
    value: Any = row
    for part in dotted.split("."):
        # parquet fills keys absent from a row with null (struct columns hold the union of keys)
        if not isinstance(value, Mapping) or value.get(part) is None:
            raise BadRow(dotted, "missing")
        value = value[part]
    return value


def str_field(row: Mapping[str, Any], dotted: str) -> str:
    """A non-empty string field (``BadRow`` otherwise)."""
    value = get_field(row, dotted)
    if not isinstance(value, str) or not value.strip():
        raise BadRow(dotted, f"expected a non-empty string, got {value!r:.80}")
    return value


def _user_content(row: Mapping[str, Any]) -> str:
    prompt = get_field(row, "prompt")
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise BadRow("prompt", "expected a non-empty list of messages")
    users = [m for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
    if len(users) != 1:
        raise BadRow("prompt", f"expected exactly one user message, got {len(users)}")
    content = users[0].get("content")
    if not isinstance(content, str) or not content.strip():
        raise BadRow("prompt[0].content", "expected a non-empty string")
    return content


def _index_str(value: Any, dotted: str) -> str:
    if isinstance(value, bool) or value is None:
        raise BadRow(dotted, f"expected a string or integer id, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise BadRow(dotted, f"expected an integer id, got {value!r}")
        value = int(value)
    if isinstance(value, (int, str)) and str(value).strip():
        return str(value)
    raise BadRow(dotted, f"expected a string or integer id, got {value!r}")


def rl_row(
    *,
    data_source: str,
    content: str,
    ability: str,
    ground_truth: str,
    index: str,
    source: str,
    split: str,
    agent_name: str,
    **extra: Any,
) -> dict[str, Any]:
    """Assemble one normalised RL row (one user message; ``extra`` goes into ``extra_info``)."""
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": content}],
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {"index": index, "source": source, "split": split, **extra},
        "agent_name": agent_name,
    }


def normalise_rows(
    name: str,
    raw_rows: list[dict[str, Any]],
    positions: list[int],
    normalise: Callable[[dict[str, Any], int], dict[str, Any] | None],
    *,
    max_bad_fraction: float,
    n_source: int | None = None,
    n_unselected: int = 0,
    uid: Callable[[dict[str, Any]], str] | None = row_uid,
) -> Loaded:
    """Run ``normalise`` on each raw row; ``None`` means "not selected", ``BadRow`` a schema problem.

    With ``uid``, a row whose id repeats an earlier row's is a problem too (the first one is kept).
    """
    rows: list[dict[str, Any]] = []
    problems: list[RowProblem] = []
    first_of_uid: dict[str, int] = {}
    unselected = n_unselected
    for raw, pos in zip(raw_rows, positions):
        try:
            out = normalise(raw, pos)
        except BadRow as bad:
            problems.append(RowProblem(name, pos, bad.field, bad.reason))
            continue
        if out is None:
            unselected += 1
            continue
        if uid is not None:
            key = uid(out)
            if key in first_of_uid:
                reason = f"duplicate id {key!r} (first at row {first_of_uid[key]})"
                problems.append(RowProblem(name, pos, "extra_info.index", reason))
                continue
            first_of_uid[key] = pos
        rows.append(out)
    total = n_source if n_source is not None else len(raw_rows)
    check_bad_fraction(name, total, problems, max_bad_fraction)
    return Loaded(name, rows, problems, total, unselected)


def _all_positions(table: pa.Table) -> tuple[list[dict[str, Any]], list[int]]:
    return table.to_pylist(), list(range(table.num_rows))


# ---------------------------------------------------------------------------------------- DAPO-Math

_INT_ANSWER = re.compile(r"^-?\d+$")


def dedup_dapo_positions(table: pa.Table) -> tuple[list[int], list[RowProblem]]:
    """Positions of the first row of each ``extra_info.index`` (and problems for rows without one)."""
    if "extra_info" not in table.column_names:
        raise DataError("DAPO-Math-17k source has no 'extra_info' column")
    info = table.column("extra_info").combine_chunks()
    if not pa.types.is_struct(info.type) or info.type.get_field_index("index") < 0:
        raise DataError(f"DAPO-Math-17k 'extra_info' is not a struct with an 'index' field: {info.type}")
    keys = info.field("index").to_pylist()
    seen: set[Any] = set()
    positions: list[int] = []
    problems: list[RowProblem] = []
    for pos, key in enumerate(keys):
        if key is None or (isinstance(key, str) and not key.strip()):
            problems.append(RowProblem("dapo_math", pos, "extra_info.index", "missing"))
        elif key not in seen:
            seen.add(key)
            positions.append(pos)
    return positions, problems


def load_dapo_math(
    source: SourceSpec | Mapping[str, Any] | str,
    *,
    cache_dir: str = str(DEFAULT_CACHE_DIR),
    agent_name: str = DEFAULT_AGENT_NAME,
    max_bad_fraction: float = 0.01,
) -> Loaded:
    """DAPO-Math-17k -> maths rows (``data_source`` ``math_dapo``), one per unique ``extra_info.index``."""
    table = read_table(source, cache_dir=cache_dir)
    positions, dedup_problems = dedup_dapo_positions(table)
    raw = table.take(pa.array(positions, type=pa.int64())).to_pylist() if positions else []

    def normalise(row: dict[str, Any], pos: int) -> dict[str, Any]:
        content = _user_content(row)
        try:
            problem = prompts.strip_dapo_instruction(content)
        except ValueError as exc:
            raise BadRow("prompt[0].content", str(exc)) from None
        answer = str_field(row, "reward_model.ground_truth").strip()
        if not _INT_ANSWER.match(answer):
            raise BadRow("reward_model.ground_truth", f"expected an integer answer, got {answer!r:.40}")
        return rl_row(
            data_source="math_dapo",
            content=prompts.math_user_prompt(problem + "\n\n"),
            ability="math",
            ground_truth=answer,
            index=_index_str(get_field(row, "extra_info.index"), "extra_info.index"),
            source="dapo_math",
            split="train",
            agent_name=agent_name,
        )

    loaded = normalise_rows(
        "dapo_math", raw, positions, normalise, max_bad_fraction=1.0, n_source=len(positions) + len(dedup_problems)
    )
    loaded.problems = sorted(dedup_problems + loaded.problems, key=lambda p: p.row)
    check_bad_fraction("dapo_math", loaded.n_source, loaded.problems, max_bad_fraction)
    loaded.notes["raw_rows"] = table.num_rows
    return loaded


# --------------------------------------------------------------------------------------- Skywork-OR1


def unwrap_json_list_answer(value: Any) -> str:
    """The first answer of a Skywork maths ground truth, a JSON-encoded list in a string (``'["15625"]'``)."""
    if not isinstance(value, str):
        raise BadRow("reward_model.ground_truth", f"expected a JSON list in a string, got {type(value).__name__}")
    try:
        answers = json.loads(value)
    except json.JSONDecodeError:
        raise BadRow("reward_model.ground_truth", f"not JSON: {value!r:.60}") from None
    if not isinstance(answers, list) or not answers:
        raise BadRow("reward_model.ground_truth", f"expected a non-empty JSON list, got {value!r:.60}")
    first = answers[0]
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        first = str(first)
    if not isinstance(first, str) or not first.strip():
        raise BadRow("reward_model.ground_truth", f"first answer is not a non-empty string: {first!r:.60}")
    return first.strip()


def code_test_type(ground_truth: Any) -> str:
    """Validate a code ground truth (JSON string) and name its shape.

    ``"stdin"``: ``{"inputs": [...], "outputs": [...]}``; ``"call"``: the same with ``fn_name``;
    ``"check"``: ``{"import_prefix", "test_code", "entry_point"}`` (a ``check(candidate)`` function).
    """
    if not isinstance(ground_truth, str):
        raise BadRow("reward_model.ground_truth", "expected a JSON object in a string")
    try:
        gt = json.loads(ground_truth)
    except json.JSONDecodeError:
        raise BadRow("reward_model.ground_truth", f"not JSON: {ground_truth!r:.60}") from None
    if not isinstance(gt, dict):
        raise BadRow("reward_model.ground_truth", f"expected a JSON object, got {type(gt).__name__}")
    if "inputs" in gt or "outputs" in gt:
        inputs, outputs = gt.get("inputs"), gt.get("outputs")
        if not isinstance(inputs, list) or not isinstance(outputs, list) or not inputs:
            raise BadRow("reward_model.ground_truth", "'inputs'/'outputs' must be non-empty lists")
        if len(inputs) != len(outputs):
            raise BadRow("reward_model.ground_truth", f"{len(inputs)} inputs but {len(outputs)} outputs")
        fn_name = gt.get("fn_name")
        if fn_name is None:
            return "stdin"
        if not isinstance(fn_name, str) or not fn_name.strip():
            raise BadRow("reward_model.ground_truth", f"'fn_name' must be a non-empty string, got {fn_name!r}")
        return "call"
    if {"test_code", "entry_point"} <= set(gt):
        for key in ("test_code", "entry_point"):
            if not isinstance(gt[key], str) or not gt[key].strip():
                raise BadRow("reward_model.ground_truth", f"'{key}' must be a non-empty string")
        if not isinstance(gt.get("import_prefix", ""), str):
            raise BadRow("reward_model.ground_truth", "'import_prefix' must be a string")
        return "check"
    raise BadRow("reward_model.ground_truth", f"unknown code test shape with keys {sorted(gt)}")


def load_skywork_math(
    source: SourceSpec | Mapping[str, Any] | str,
    *,
    cache_dir: str = str(DEFAULT_CACHE_DIR),
    agent_name: str = DEFAULT_AGENT_NAME,
    max_bad_fraction: float = 0.01,
) -> Loaded:
    """Skywork-OR1-RL-Data ``math`` split -> maths rows; ``data_source`` keeps the subset name
    (``train-math-numinamath1.5_olympiads``, ...), which the mix recipe selects on."""
    table = read_table(source, cache_dir=cache_dir)
    raw, positions = _all_positions(table)

    def normalise(row: dict[str, Any], pos: int) -> dict[str, Any]:
        data_source = str_field(row, "data_source")
        if "math" not in data_source:
            raise BadRow("data_source", f"not a maths subset: {data_source!r}")
        return rl_row(
            data_source=data_source,
            content=prompts.math_user_prompt(_user_content(row)),
            ability="math",
            ground_truth=unwrap_json_list_answer(get_field(row, "reward_model.ground_truth")),
            index=_index_str(get_field(row, "extra_info.index"), "extra_info.index"),
            source="skywork_math",
            split="train",
            agent_name=agent_name,
        )

    return normalise_rows("skywork_math", raw, positions, normalise, max_bad_fraction=max_bad_fraction)


def load_skywork_code(
    source: SourceSpec | Mapping[str, Any] | str,
    *,
    cache_dir: str = str(DEFAULT_CACHE_DIR),
    agent_name: str = DEFAULT_AGENT_NAME,
    max_bad_fraction: float = 0.01,
) -> Loaded:
    """Skywork-OR1-RL-Data ``code`` split -> code rows (TACO / LeetCode subsets in ``data_source``)."""
    table = read_table(source, cache_dir=cache_dir)
    raw, positions = _all_positions(table)

    def normalise(row: dict[str, Any], pos: int) -> dict[str, Any]:
        data_source = str_field(row, "data_source")
        if "code" not in data_source:
            raise BadRow("data_source", f"not a code subset: {data_source!r}")
        ground_truth = get_field(row, "reward_model.ground_truth")
        test_type = code_test_type(ground_truth)
        return rl_row(
            data_source=data_source,
            content=prompts.code_training_user_prompt(_user_content(row)),
            ability="code",
            ground_truth=ground_truth,
            index=_index_str(get_field(row, "extra_info.index"), "extra_info.index"),
            source="skywork_code",
            split="train",
            agent_name=agent_name,
            test_type=test_type,
        )

    return normalise_rows("skywork_code", raw, positions, normalise, max_bad_fraction=max_bad_fraction)


# --------------------------------------------------------------------------------------- MegaScience

# A plain number: optional sign, digits with optional thousands commas, optional decimals, optional exponent.
NUMERIC_ANSWER = re.compile(r"^[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?$|^[-+]?\.\d+$")


def numeric_reference_answer(value: Any) -> str | None:
    """The canonical numeric answer of a MegaScience ``reference_answer``, or None if it is not a plain number.

    Accepted after stripping whitespace, one pair of surrounding ``$`` and a trailing period: ``42``,
    ``-3.5``, ``1,200`` (commas dropped), ``6.02e23``, ``.5``. Rejected: units, LaTeX, fractions, ranges,
    words, non-finite values.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    if len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text[1:-1].strip()
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1]
    if not NUMERIC_ANSWER.match(text):
        return None
    text = text.replace(",", "")
    if not math.isfinite(float(text)):
        return None
    return text[1:] if text.startswith("+") else text


def load_megascience(
    source: SourceSpec | Mapping[str, Any] | str,
    *,
    cache_dir: str = str(DEFAULT_CACHE_DIR),
    agent_name: str = DEFAULT_AGENT_NAME,
    max_bad_fraction: float = 0.01,
    max_question_chars: int = 3000,
) -> Loaded:
    """MegaScience -> science rows with a numeric reference answer (``data_source`` ``mega-science``).

    Selection rule (ours; the reference's is unpublished): ``reference_answer`` is a plain number
    (``numeric_reference_answer``), the question has at most ``max_question_chars`` characters, and the
    first occurrence of each question text (whitespace-normalised) is kept. ``extra_info.index`` is the row's
    position in the source split (MegaScience has no id column). The mix samples the paper's 3,000 from these.
    """
    table = read_table(source, cache_dir=cache_dir)
    for column in ("question", "reference_answer"):
        if column not in table.column_names:
            raise DataError(f"MegaScience source has no {column!r} column (columns: {table.column_names})")
    # Select column-wise first: 1.25M rows, most without a numeric answer, never become dicts.
    answers = table.column("reference_answer").to_pylist()
    candidates = [pos for pos, a in enumerate(answers) if numeric_reference_answer(a) is not None]
    raw = table.take(pa.array(candidates, type=pa.int64())).to_pylist() if candidates else []
    seen_questions: set[str] = set()

    def normalise(row: dict[str, Any], pos: int) -> dict[str, Any] | None:
        question = str_field(row, "question")
        if len(question) > max_question_chars:
            return None
        key = " ".join(question.split())
        if key in seen_questions:
            return None
        seen_questions.add(key)
        subject = row.get("subject") if isinstance(row.get("subject"), str) else ""
        origin = row.get("source") if isinstance(row.get("source"), str) else ""
        answer = numeric_reference_answer(row["reference_answer"])
        assert answer is not None
        return rl_row(
            data_source="mega-science",
            content=prompts.science_user_prompt(question.strip() + "\n\n", domain=subject.strip().lower() or "science"),
            ability="science",
            ground_truth=answer,
            index=str(pos),
            source="megascience",
            split="train",
            agent_name=agent_name,
            subject=subject,
            origin=origin,
        )

    loaded = normalise_rows(
        "megascience",
        raw,
        candidates,
        normalise,
        max_bad_fraction=max_bad_fraction,
        n_source=table.num_rows,
        n_unselected=table.num_rows - len(candidates),
    )
    return loaded


# ---------------------------------------------------------------------------------- Open-AgentRL-30K


def open_agentrl_ability(data_source: str) -> str:
    """Ability of a published Open-AgentRL-30K row, from its ``data_source``."""
    if "code" in data_source:
        return "code"
    if data_source == "mega-science":
        return "science"
    return "math"


def load_open_agentrl(
    source: SourceSpec | Mapping[str, Any] | str,
    *,
    cache_dir: str = str(DEFAULT_CACHE_DIR),
    agent_name: str = DEFAULT_AGENT_NAME,
    max_bad_fraction: float = 0.01,
) -> Loaded:
    """Gen-Verse/Open-AgentRL-30K (the published 30,128-row mix) -> RL rows with the reference's prompts.

    ``reward_model.ground_truth`` is already a plain string there; code rows are validated like Skywork code.
    ``extra_info.index`` is the row position in the published file (the sources it mixes reuse index values);
    the original index, when present, is kept as ``extra_info.source_index``.
    """
    table = read_table(source, cache_dir=cache_dir)
    raw, positions = _all_positions(table)

    def normalise(row: dict[str, Any], pos: int) -> dict[str, Any]:
        data_source = str_field(row, "data_source")
        ground_truth = get_field(row, "reward_model.ground_truth")
        ability = open_agentrl_ability(data_source)
        extra: dict[str, Any] = {}
        if ability == "code":
            extra["test_type"] = code_test_type(ground_truth)
        elif not isinstance(ground_truth, str) or not ground_truth.strip():
            raise BadRow("reward_model.ground_truth", f"expected a non-empty string, got {ground_truth!r:.60}")
        info = row.get("extra_info") if isinstance(row.get("extra_info"), Mapping) else {}
        if info.get("index") is not None:
            extra["source_index"] = _index_str(info["index"], "extra_info.index")
        return rl_row(
            data_source=data_source,
            content=prompts.open_agentrl_user_prompt(data_source, _user_content(row)),
            ability=ability,
            ground_truth=ground_truth if ability == "code" else ground_truth.strip(),
            index=str(pos),
            source="open_agentrl_30k",
            split="train",
            agent_name=agent_name,
            **extra,
        )

    return normalise_rows("open_agentrl_30k", raw, positions, normalise, max_bad_fraction=max_bad_fraction)


LOADERS: dict[str, Callable[..., Loaded]] = {
    "dapo_math": load_dapo_math,
    "skywork_math": load_skywork_math,
    "skywork_code": load_skywork_code,
    "megascience": load_megascience,
    "open_agentrl_30k": load_open_agentrl,
}
