"""Evaluation sets -> eval rows (same schema as RL rows): AIME24, AIME25, GPQA-Diamond, LiveCodeBench v6.

Paper protocol (CLEANER.md "Evaluation protocol"): AIME24 and AIME25 (30 problems each, integer answers in
``\\boxed{}``), GPQA-Diamond (198 four-choice questions, the option letter in ``\\boxed{}``) and LiveCodeBench
problems dated 2025-02..2025-05 (175, the v6 release file ``test6.jsonl``).

- GPQA is gated: a hub read needs ``HF_TOKEN``. Its choices are shuffled per question with a seeded RNG keyed
  by ``(seed, Record ID)``, so the order does not depend on row order or on the process.
- LiveCodeBench: the release files are read directly (the dataset's loading script breaks on datasets>=4).
  ``private_test_cases`` is either JSON or base64 -> zlib -> pickle -> JSON string; the pickle is read with
  an unpickler that refuses every global, so only plain data (the JSON string) can come out of it. Ground
  truth = JSON of the list of ``{"input", "output", "testtype"}`` tests (public then private);
  ``extra_info`` carries ``fn_name`` (``metadata.func_name``, empty for stdin problems) and ``starter_code``.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import pickle
import random
import zlib
from typing import Any, Callable, Mapping

import pyarrow as pa

from cleaner import prompts
from cleaner.data.loaders import BadRow, Loaded, get_field, normalise_rows, rl_row, str_field
from cleaner.data.schema import DEFAULT_AGENT_NAME, DataError
from cleaner.data.sources import DEFAULT_CACHE_DIR, SourceSpec, read_table

GPQA_HUB = "Idavidrein/gpqa"
LCB_TESTTYPES = ("stdin", "functional")


def _normalise_table(
    name: str, table: pa.Table, normalise: Callable[[dict[str, Any], int], dict[str, Any] | None], max_bad: float
) -> Loaded:
    return normalise_rows(name, table.to_pylist(), list(range(table.num_rows)), normalise, max_bad_fraction=max_bad)


# -------------------------------------------------------------------------------------------- AIME


def _aime_normalise(
    *, data_source: str, problem_key: str, answer_key: str, id_key: str, agent_name: str
) -> Callable[[dict[str, Any], int], dict[str, Any]]:
    def normalise(row: dict[str, Any], pos: int) -> dict[str, Any]:
        problem = str_field(row, problem_key)
        answer = get_field(row, answer_key)
        if isinstance(answer, bool) or not isinstance(answer, (int, str)) or not str(answer).strip():
            raise BadRow(answer_key, f"expected an integer or a non-empty string, got {answer!r}")
        answer_str = str(answer).strip()
        if not answer_str.lstrip("-").isdigit():
            raise BadRow(answer_key, f"AIME answers are integers, got {answer_str!r}")
        row_id = row.get(id_key)
        return rl_row(
            data_source=data_source,
            content=prompts.aime_user_prompt(problem),
            ability="math",
            ground_truth=str(int(answer_str)),
            index=str(row_id) if row_id is not None and str(row_id).strip() else str(pos),
            source=data_source,
            split="test",
            agent_name=agent_name,
        )

    return normalise


def load_aime24(
    source: SourceSpec | Mapping[str, Any] | str,
    *,
    cache_dir: str = str(DEFAULT_CACHE_DIR),
    agent_name: str = DEFAULT_AGENT_NAME,
    max_bad_fraction: float = 0.0,
) -> Loaded:
    """Maxwell-Jia/AIME_2024 (``ID``, ``Problem``, ``Solution``, ``Answer`` int) -> ``aime24`` eval rows."""
    table = read_table(source, cache_dir=cache_dir)
    fn = _aime_normalise(
        data_source="aime24", problem_key="Problem", answer_key="Answer", id_key="ID", agent_name=agent_name
    )
    return _normalise_table("aime24", table, fn, max_bad_fraction)


def load_aime25(
    source: SourceSpec | Mapping[str, Any] | str,
    *,
    cache_dir: str = str(DEFAULT_CACHE_DIR),
    agent_name: str = DEFAULT_AGENT_NAME,
    max_bad_fraction: float = 0.0,
) -> Loaded:
    """math-ai/aime25 (``problem``, ``answer`` str, ``id``) -> ``aime25`` eval rows."""
    table = read_table(source, cache_dir=cache_dir)
    fn = _aime_normalise(
        data_source="aime25", problem_key="problem", answer_key="answer", id_key="id", agent_name=agent_name
    )
    return _normalise_table("aime25", table, fn, max_bad_fraction)


# -------------------------------------------------------------------------------------------- GPQA


def gpqa_clean(text: Any) -> str:
    """Whitespace/title clean-up of a GPQA choice, as lm-eval's ``gpqa`` ``preprocess`` does."""
    if text is None:
        return " "
    text = str(text).strip().replace(" [title]", ". ")
    return text.replace("  ", " ")


def shuffle_gpqa_choices(row: Mapping[str, Any], *, seed: int) -> tuple[list[str], str]:
    """The four choices in a deterministic per-question order, and the correct letter ``A``-``D``.

    The RNG is keyed by ``seed`` and the question's ``Record ID`` (string seeds of ``random.Random`` are
    hashed with SHA-512, so the order is the same in every process and independent of row order).
    """
    correct = gpqa_clean(str_field(row, "Correct Answer"))
    choices = [gpqa_clean(str_field(row, f"Incorrect Answer {i}")) for i in (1, 2, 3)] + [correct]
    if len(set(choices)) != 4:
        raise BadRow("Correct Answer", "the four choices are not distinct after clean-up")
    record_id = str_field(row, "Record ID")
    random.Random(f"gpqa:{seed}:{record_id}").shuffle(choices)
    return choices, chr(65 + choices.index(correct))


def load_gpqa_diamond(
    source: SourceSpec | Mapping[str, Any] | str,
    *,
    cache_dir: str = str(DEFAULT_CACHE_DIR),
    agent_name: str = DEFAULT_AGENT_NAME,
    max_bad_fraction: float = 0.0,
    seed: int = 0,
) -> Loaded:
    """Idavidrein/gpqa ``gpqa_diamond`` (gated) -> ``gpqa_diamond`` eval rows, answer letter as ground truth."""
    spec = SourceSpec.parse(source)
    table = read_table(spec, cache_dir=cache_dir, gated=spec.hub is not None)

    def normalise(row: dict[str, Any], pos: int) -> dict[str, Any]:
        question = str_field(row, "Question")
        choices, letter = shuffle_gpqa_choices(row, seed=seed)
        domain = row.get("High-level domain")
        domain = domain.strip().lower() if isinstance(domain, str) and domain.strip() else "science"
        subdomain = row.get("Subdomain") if isinstance(row.get("Subdomain"), str) else ""
        return rl_row(
            data_source="gpqa_diamond",
            content=prompts.multiple_choice_user_prompt(question, choices, domain=domain),
            ability="science",
            ground_truth=letter,
            index=str_field(row, "Record ID"),
            source="gpqa_diamond",
            split="test",
            agent_name=agent_name,
            choices=choices,
            domain=domain,
            subdomain=subdomain,
        )

    return _normalise_table("gpqa_diamond", table, normalise, max_bad_fraction)


# ----------------------------------------------------------------------------------- LiveCodeBench


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global: only built-in data (str, list, dict, ...) can be loaded."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a test-case pickle")


def decode_lcb_tests(value: Any, *, field: str = "private_test_cases") -> list[dict[str, str]]:
    """LiveCodeBench test cases: JSON text, or base64 -> zlib -> pickle -> JSON text (the private tests)."""
    if not isinstance(value, str) or not value.strip():
        raise BadRow(field, "expected a non-empty string")
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        try:
            raw = zlib.decompress(base64.b64decode(value.encode("ascii"), validate=True))
            text = _DataOnlyUnpickler(io.BytesIO(raw)).load()
        except (ValueError, zlib.error, pickle.UnpicklingError, EOFError, UnicodeEncodeError) as exc:
            raise BadRow(field, f"neither JSON nor base64/zlib/pickle: {exc}") from None
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if not isinstance(text, str):
            raise BadRow(field, f"the pickle holds a {type(text).__name__}, expected a JSON string")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise BadRow(field, "the decoded pickle is not JSON") from None
    if not isinstance(data, list):
        raise BadRow(field, f"expected a JSON list of tests, got {type(data).__name__}")
    tests = []
    for i, test in enumerate(data):
        if not isinstance(test, Mapping) or not all(isinstance(test.get(k), str) for k in ("input", "output")):
            raise BadRow(f"{field}[{i}]", "expected {input: str, output: str, testtype}")
        if test.get("testtype") not in LCB_TESTTYPES:
            raise BadRow(f"{field}[{i}].testtype", f"{test.get('testtype')!r} not in {LCB_TESTTYPES}")
        tests.append({"input": test["input"], "output": test["output"], "testtype": test["testtype"]})
    return tests


def parse_date(value: Any, field: str) -> dt.date:
    """The date part of an ISO date / datetime string."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if not isinstance(value, str):
        raise BadRow(field, f"expected an ISO date string, got {value!r}")
    try:
        return dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00")).date()
    except ValueError:
        raise BadRow(field, f"not an ISO date: {value!r}") from None


def load_livecodebench(
    source: SourceSpec | Mapping[str, Any] | str,
    *,
    cache_dir: str = str(DEFAULT_CACHE_DIR),
    agent_name: str = DEFAULT_AGENT_NAME,
    max_bad_fraction: float = 0.0,
    start_date: str | dt.date | None = "2025-02-01",
    end_date: str | dt.date | None = "2025-05-31",
) -> Loaded:
    """LiveCodeBench release file(s) -> ``livecodebench`` eval rows for problems dated in
    ``[start_date, end_date]`` (inclusive; None leaves that side open)."""
    start = parse_date(start_date, "start_date") if start_date is not None else None
    end = parse_date(end_date, "end_date") if end_date is not None else None
    if start and end and start > end:
        raise DataError(f"LiveCodeBench date window is empty: {start} > {end}")
    table = read_table(source, cache_dir=cache_dir)

    def normalise(row: dict[str, Any], pos: int) -> dict[str, Any] | None:
        date = parse_date(row.get("contest_date"), "contest_date")
        if (start and date < start) or (end and date > end):
            return None
        content = str_field(row, "question_content")
        question_id = str_field(row, "question_id")
        starter_code = row.get("starter_code") or ""
        if not isinstance(starter_code, str):
            raise BadRow("starter_code", "expected a string")
        public = decode_lcb_tests(row.get("public_test_cases"), field="public_test_cases")
        private = decode_lcb_tests(row.get("private_test_cases"), field="private_test_cases")
        tests = public + private
        if not tests:
            raise BadRow("public_test_cases", "no tests at all")
        metadata_text = row.get("metadata") or "{}"
        try:
            metadata = json.loads(metadata_text) if isinstance(metadata_text, str) else dict(metadata_text)
        except (json.JSONDecodeError, TypeError, ValueError):
            raise BadRow("metadata", f"not a JSON object: {metadata_text!r:.60}") from None
        fn_name = metadata.get("func_name") or ""
        functional = any(t["testtype"] == "functional" for t in tests)
        if functional and not fn_name:
            raise BadRow("metadata.func_name", "functional tests but no func_name")
        return rl_row(
            data_source="livecodebench",
            content=prompts.code_user_prompt(content, starter_code=starter_code),
            ability="code",
            ground_truth=json.dumps(tests),
            index=question_id,
            source="livecodebench",
            split="test",
            agent_name=agent_name,
            fn_name=fn_name,
            starter_code=starter_code,
            platform=str(row.get("platform") or ""),
            contest_date=date.isoformat(),
            difficulty=str(row.get("difficulty") or ""),
            question_title=str(row.get("question_title") or ""),
        )

    loaded = _normalise_table("livecodebench", table, normalise, max_bad_fraction)
    loaded.notes["date_window"] = [start.isoformat() if start else None, end.isoformat() if end else None]
    return loaded


EVAL_LOADERS: dict[str, Callable[..., Loaded]] = {
    "aime24": load_aime24,
    "aime25": load_aime25,
    "gpqa_diamond": load_gpqa_diamond,
    "livecodebench": load_livecodebench,
}
