"""No-tool baselines with lm-evaluation-harness's own tasks, optionally on local copies of the data.

The paper's tables compare the agent with the tool against plain generation; for the latter we run
lm-eval's ``aime24``, ``aime25`` and ``gpqa_diamond_cot_zeroshot`` tasks unchanged (prompt, filters,
metrics). Offline, each task is overridden by a generated YAML that ``include``s lm-eval's own task file
(by absolute path, so its ``!function`` hooks still resolve next to it) and only swaps the data:
``dataset_path: json|parquet`` with ``dataset_kwargs.data_files`` pointing at a local file shaped like the
hub dataset (``cleaner data prepare-eval --raw-dir`` writes such files). A single ``data_files`` string
gives split ``train``, so the split keys are set to ``train``.

``run_lm_eval`` calls ``lm_eval.simple_evaluate`` with a ``TaskManager`` over the generated directory and
writes a small normalised JSON (one primary metric per task plus every metric lm-eval reported).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from cleaner.data.schema import DataError, write_json_atomic
from cleaner.fsutil import write_text_atomic

# Task -> lm-eval task file (relative to lm_eval/tasks), split overrides, primary metric key.
LM_EVAL_TASKS: dict[str, dict[str, Any]] = {
    "aime24": {
        "file": "aime/aime24.yaml",
        "splits": {"training_split": "train", "fewshot_split": "train", "test_split": "train"},
        "primary": "exact_match,none",
    },
    "aime25": {
        "file": "aime/aime25.yaml",
        "splits": {"training_split": "train", "fewshot_split": "train", "test_split": "train"},
        "primary": "exact_match,none",
    },
    "gpqa_diamond_cot_zeroshot": {
        "file": "gpqa/cot_zeroshot/gpqa_diamond_cot_zeroshot.yaml",
        "splits": {"training_split": "train", "validation_split": "train", "test_split": None},
        "primary": "exact_match,flexible-extract",
    },
}


def lm_eval_tasks_dir() -> Path:
    """The installed lm-eval's ``tasks`` directory."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


def _check_tasks(tasks: Sequence[str]) -> None:
    unknown = [t for t in tasks if t not in LM_EVAL_TASKS]
    if unknown:
        raise DataError(f"unsupported lm-eval task(s) {unknown}; supported: {sorted(LM_EVAL_TASKS)}")
    if not tasks:
        raise DataError("no lm-eval task given")


def local_task_config(
    task: str, data_file: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """The override YAML (as a dict) that points lm-eval's ``task`` at a local json(l)/parquet file
    (``cache_dir``: where ``datasets`` caches the converted file; default: its own cache)."""
    _check_tasks([task])
    path = Path(data_file).resolve()
    if not path.is_file():
        raise DataError(f"lm-eval data file for {task!r} not found: {path}")
    if path.suffix in (".json", ".jsonl"):
        builder = "json"
    elif path.suffix == ".parquet":
        builder = "parquet"
    else:
        raise DataError(f"lm-eval data file for {task!r} must be .json/.jsonl/.parquet, got {path.name}")
    base = lm_eval_tasks_dir() / LM_EVAL_TASKS[task]["file"]
    if not base.is_file():
        raise DataError(f"the installed lm-eval has no task file {base}")
    dataset_kwargs: dict[str, Any] = {"data_files": str(path)}
    if cache_dir is not None:
        dataset_kwargs["cache_dir"] = str(Path(cache_dir).resolve())
    return {
        "include": str(base),
        "task": task,
        "dataset_path": builder,
        "dataset_name": None,
        "dataset_kwargs": dataset_kwargs,
        **LM_EVAL_TASKS[task]["splits"],
    }


def write_local_task_dir(
    out_dir: str | os.PathLike[str],
    data_files: Mapping[str, str | os.PathLike[str]],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write one override YAML per task into ``out_dir`` (an lm-eval ``include_path``); returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for task, data_file in data_files.items():
        text = yaml.safe_dump(local_task_config(task, data_file, cache_dir=cache_dir), sort_keys=False)
        write_text_atomic(out / f"{task}.yaml", text)
    return out


def normalise_lm_eval_results(raw: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per task: every metric (``name,filter`` keys), their stderr, the primary metric and sample counts."""
    out: dict[str, dict[str, Any]] = {}
    for task in tasks:
        if task not in raw.get("results", {}):
            raise DataError(f"lm-eval returned no result for task {task!r}")
        res = raw["results"][task]
        metrics = {k: v for k, v in res.items() if "," in k and "_stderr," not in k}
        stderr = {k.replace("_stderr,", ","): v for k, v in res.items() if "_stderr," in k}
        primary = LM_EVAL_TASKS[task]["primary"]
        if primary not in metrics:
            raise DataError(f"lm-eval result for {task!r} lacks the primary metric {primary!r}: {sorted(metrics)}")
        n = raw.get("n-samples", {}).get(task, {})
        out[task] = {
            "primary_metric": primary,
            "value": metrics[primary],
            "stderr": stderr.get(primary),
            "metrics": metrics,
            "stderrs": stderr,
            "n_samples": n.get("effective"),
            "n_docs": n.get("original"),
        }
    return out


def run_lm_eval(
    model_dir: str | os.PathLike[str],
    tasks: Sequence[str],
    out_json: str | os.PathLike[str],
    *,
    data_files: Mapping[str, str | os.PathLike[str]] | None = None,
    limit: int | float | None = None,
    batch_size: int | str = 1,
    device: str | None = None,
    dtype: str = "auto",
    apply_chat_template: bool = True,
    max_gen_toks: int | None = None,
    gen_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    task_dir: str | os.PathLike[str] | None = None,
    datasets_cache_dir: str | os.PathLike[str] | None = None,
    bootstrap_iters: int = 1000,
) -> dict[str, Any]:
    """Run lm-eval's own ``tasks`` on the HF checkpoint in ``model_dir`` and write a normalised JSON.

    ``data_files`` maps a task to a local file shaped like its hub dataset; those tasks run from it (set
    ``HF_DATASETS_OFFLINE=1`` offline), the others from the hub. The override YAMLs go to ``task_dir`` (a
    temporary directory when None); ``datasets_cache_dir`` is where ``datasets`` caches the local files.
    ``max_gen_toks`` / ``gen_kwargs`` override the tasks' generation
    settings (lm-eval's AIME default is 32,768 new tokens, greedy). Returns the JSON document written.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = list(tasks)
    _check_tasks(tasks)
    data_files = dict(data_files or {})
    stray = sorted(set(data_files) - set(tasks))
    if stray:
        raise DataError(f"data_files given for task(s) {stray} that are not being run ({tasks})")
    if not Path(model_dir).is_dir():
        raise DataError(f"model directory not found: {model_dir}")
    if os.environ.get("HF_DATASETS_OFFLINE") == "1":
        offline_missing = [t for t in tasks if t not in data_files]
        if offline_missing:
            raise DataError(f"HF_DATASETS_OFFLINE=1 but no local data file for task(s) {offline_missing}")
    generation: dict[str, Any] = dict(gen_kwargs or {})
    if max_gen_toks is not None:
        generation["max_gen_toks"] = int(max_gen_toks)

    with tempfile.TemporaryDirectory(prefix="cleaner-lm-eval-") as tmp:
        include_dir = (
            write_local_task_dir(task_dir or tmp, data_files, cache_dir=datasets_cache_dir) if data_files else None
        )
        # Only scan lm-eval's ~thousands of built-in task files when some task still reads the hub.
        manager = TaskManager(
            include_path=str(include_dir) if include_dir else None,
            include_defaults=len(data_files) < len(tasks),
        )
        raw = lm_eval.simple_evaluate(
            model="hf",
            model_args={"pretrained": str(Path(model_dir).resolve()), "dtype": dtype},
            tasks=tasks,
            task_manager=manager,
            limit=limit,
            batch_size=batch_size,
            device=device,
            apply_chat_template=apply_chat_template,
            gen_kwargs=generation or None,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            bootstrap_iters=bootstrap_iters,
            log_samples=False,
        )
    if raw is None:
        raise DataError("lm_eval.simple_evaluate returned no results (not rank 0?)")
    doc = {
        "model_dir": str(model_dir),
        "lm_eval_version": getattr(lm_eval, "__version__", "unknown"),
        "limit": limit,
        "seed": seed,
        "apply_chat_template": apply_chat_template,
        "gen_kwargs": generation,
        "data_files": {t: str(Path(p).resolve()) for t, p in data_files.items()},
        "tasks": normalise_lm_eval_results(raw, tasks),
    }
    write_json_atomic(doc, out_json)
    return doc
