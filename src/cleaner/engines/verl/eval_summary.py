"""Turn a verl validation-only run's dumped generations into our eval summary (the embedded ``cleaner eval`` format).

verl writes ``<trainer.validation_data_dir>/<step>.jsonl``: one line per sample with ``input`` (decoded prompt),
``output``, ``gts``, ``score`` and the reward extra info, which :mod:`cleaner.engines.verl.reward` fills with
``acc`` and the agent's per-trajectory statistics (``cleaner/<name>``). Samples are grouped into problems by their
prompt; Pass@1 (avg@k), Pass@k and the tool statistics are computed by :func:`cleaner.evaluate.summarize_records`,
so paper-scale and testbed evaluations report the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cleaner.engines.verl import STAT_PREFIX

__all__ = ["records_from_generations", "summarize_generations"]

_STATS = ("tool_calls_before", "tool_failures_before", "tool_calls_after", "tool_failures_after",
          "first_attempt_calls", "first_attempt_failures", "response_length", "turns", "triggered", "recovered",
          "failed", "shallow", "deep", "retries")


def _latest_dump(gen_dir: Path) -> Path:
    files = sorted(gen_dir.glob("*.jsonl"), key=lambda p: (int(p.stem) if p.stem.isdigit() else -1, p.name))
    if not files:
        raise FileNotFoundError(f"no generations (*.jsonl) in {gen_dir}: did the validation-only run finish?")
    return files[-1]


def records_from_generations(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    problems: dict[str, int] = {}
    counts: dict[int, int] = {}
    records = []
    for entry in lines:
        pid = problems.setdefault(str(entry.get("input", "")), len(problems))
        sample = counts.get(pid, 0)
        counts[pid] = sample + 1
        stats = {name: float(entry.get(STAT_PREFIX + name, 0) or 0) for name in _STATS}
        stats["finish_reason"] = "answer" if entry.get(STAT_PREFIX + "answered") else "other"
        acc = entry.get("acc")
        records.append({
            "problem": pid, "sample": sample, "data_source": entry.get("data_source", "unknown"),
            "ground_truth": entry.get("gts"), "acc": bool(acc if acc is not None else float(entry["score"]) > 0),
            "score": float(entry["score"]), "stats": stats, "response_text": entry.get("output", ""), "wall_s": 0.0,
            "grading": entry.get("grading"),  # written by cleaner.engines.verl.reward (reward.grading)
        })
    return records


def summarize_generations(gen_dir: str | Path, *, k: int, out_json: str | Path,
                          out_jsonl: str | Path | None = None, saar_at_test_time: bool | None = None) -> dict[str, Any]:
    """The summary of the newest dump in ``gen_dir``; ``saar_at_test_time`` (the run's ``--saar``) is recorded as
    the embedded ``cleaner eval`` records it."""
    from cleaner.evaluate import summarize_records, write_eval_outputs

    dump = _latest_dump(Path(gen_dir))
    lines = [json.loads(line) for line in dump.read_text().splitlines() if line.strip()]
    records = records_from_generations(lines)
    summary = summarize_records(records, k=k)
    summary.update({"source": str(dump), "engine": "verl", "k": k})
    if saar_at_test_time is not None:
        summary["saar_at_test_time"] = bool(saar_at_test_time)
    write_eval_outputs(summary, records, Path(out_json), Path(out_jsonl) if out_jsonl else None)
    return summary


def pass_counts(gen_dir: str | Path, data: str | Path, model_dir: str | Path) -> dict[str, int]:
    """Passes per training prompt (``{uid: passes}``, uid = ``data_source/index``) from a validation-only run
    over the training set, for the 7B recipe's difficulty filter.

    verl dumps the prompt decoded with ``skip_special_tokens=True``; each row's prompt is rendered and decoded the
    same way with the model's tokenizer (and the tool schema, as the rollout saw it) to match dumps to rows.
    """
    from transformers import AutoTokenizer

    from cleaner.data.schema import read_parquet_rows, row_uid
    from cleaner.prompts import tool_schemas

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    rows = read_parquet_rows(data)
    by_text: dict[str, str] = {}
    for row in rows:
        ids = tok.apply_chat_template(list(row["prompt"]), tools=tool_schemas(), add_generation_prompt=True,
                                      tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) else ids
        by_text[tok.decode(ids, skip_special_tokens=True)] = row_uid(row)
    dump = _latest_dump(Path(gen_dir))
    counts: dict[str, int] = {uid: 0 for uid in by_text.values()}
    unmatched = 0
    for line in dump.read_text().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        uid = by_text.get(str(entry.get("input", "")))
        if uid is None:
            unmatched += 1
            continue
        acc = entry.get("acc")
        counts[uid] += int(bool(acc if acc is not None else float(entry["score"]) > 0))
    if unmatched:
        raise ValueError(f"{dump}: {unmatched} generations match no prompt of {data} (different data or template?)")
    return counts
