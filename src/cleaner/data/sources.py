"""Where a dataset comes from: one spec, one read path, hub or local file.

A source spec (YAML or dict) is either

- ``{hub: owner/name, config: ..., split: ...}`` — read with ``datasets.load_dataset`` (cached under
  ``cache_dir``, by default ``resources/hf``), or
- ``{hub: owner/name, files: [test6.jsonl, ...]}`` — the named repository files are downloaded with
  ``huggingface_hub.hf_hub_download`` into the same cache and then read as local files (LiveCodeBench: its
  loading script does not run on datasets>=4), or
- ``{path: file | directory | glob}`` — local parquet / jsonl / json / csv files (a directory means every such file
  in it, sorted by name).

A bare string is a path. Gated hub datasets (GPQA) need ``HF_TOKEN`` in the environment; without it the read
fails with a message that says so. Every path returns a ``pyarrow.Table`` so that large sources (DAPO's 1.79M
rows, MegaScience's 1.25M) can be deduplicated / filtered column-wise before rows become Python dicts.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from cleaner.data.schema import DataError

DEFAULT_CACHE_DIR = Path("resources") / "hf"
_TABLE_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")


@dataclass(frozen=True)
class SourceSpec:
    """A hub dataset (optionally selected files of it) or a local path; see the module docstring."""

    hub: str | None = None
    config: str | None = None
    split: str | None = None
    files: tuple[str, ...] = ()
    revision: str | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if (self.hub is None) == (self.path is None):
            raise DataError(f"a source spec needs exactly one of 'hub' or 'path', got {self}")
        if self.path is not None and (self.config or self.split or self.files or self.revision):
            raise DataError(f"a local 'path' source takes no config/split/files/revision: {self}")
        if self.hub is not None and not self.files and not self.split:
            raise DataError(f"hub source {self.hub!r} needs a 'split' (or 'files' to read directly)")

    @classmethod
    def parse(cls, spec: "SourceSpec | Mapping[str, Any] | str | os.PathLike[str]") -> "SourceSpec":
        """Build a spec from a config value: a mapping, a path string, or an existing spec."""
        if isinstance(spec, SourceSpec):
            return spec
        if isinstance(spec, (str, os.PathLike)):
            return cls(path=os.fspath(spec))
        if not isinstance(spec, Mapping):
            raise DataError(f"a source spec must be a mapping or a path, got {type(spec).__name__}")
        unknown = sorted(set(spec) - {"hub", "config", "split", "files", "revision", "path"})
        if unknown:
            raise DataError(f"unknown source spec key(s) {unknown} in {dict(spec)}")
        files = spec.get("files") or ()
        if isinstance(files, str):
            files = (files,)
        path = spec.get("path")
        return cls(
            hub=spec.get("hub"),
            config=spec.get("config"),
            split=spec.get("split"),
            files=tuple(files),
            revision=spec.get("revision"),
            path=os.fspath(path) if path is not None else None,
        )

    def describe(self) -> str:
        """Short human-readable origin for reports."""
        if self.path is not None:
            return self.path
        sel = ",".join(self.files) if self.files else f"{self.config or 'default'}/{self.split}"
        return f"hf:{self.hub}[{sel}]"


def hf_token(*, required: bool, dataset: str) -> str | None:
    """The Hugging Face token from ``HF_TOKEN`` (``HUGGING_FACE_HUB_TOKEN`` also accepted)."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if required and not token:
        raise DataError(
            f"{dataset} is a gated dataset: accept its terms on https://huggingface.co/datasets/{dataset} "
            "and export HF_TOKEN=<a read token> before preparing it (or point the source at a local file "
            "with 'path:')"
        )
    return token


def local_files(path: str | os.PathLike[str]) -> list[Path]:
    """The data files a local ``path`` spec names: a file, every table file of a directory, or a glob."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in _TABLE_SUFFIXES)
    elif p.exists():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(os.fspath(path)))
    if not files:
        raise DataError(f"no data file found at {os.fspath(path)!r}")
    bad = [f for f in files if f.suffix not in _TABLE_SUFFIXES]
    if bad:
        raise DataError(f"unsupported data file type {bad[0]} (expected one of {_TABLE_SUFFIXES})")
    return files


def read_json_records(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl`` file (one object per line) or a ``.json`` file (a list of objects)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects")
        return data
    rows = []
    # split on "\n" only: str.splitlines() would also break on U+2028 etc. inside JSON strings
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not a JSON object line ({exc.msg})") from exc
    return rows


def _read_csv(path: Path) -> pa.Table:
    # GPQA ships CSV; quoted fields span lines, every column stays a string
    parse = pa_csv.ParseOptions(newlines_in_values=True)
    header = pa_csv.open_csv(path, parse_options=parse).schema.names
    return pa_csv.read_csv(path, parse_options=parse,
                           convert_options=pa_csv.ConvertOptions(column_types={c: pa.string() for c in header}))


def read_local_file(path: Path) -> pa.Table:
    """One local parquet / json(l) / csv file as a table; a file that does not parse is a ``DataError`` naming it."""
    try:
        if path.suffix == ".parquet":
            return pq.read_table(path)
        if path.suffix == ".csv":
            return _read_csv(path)
        rows = read_json_records(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        # pyarrow's messages name the row / column but not the file ("CSV parse error: Expected 3 columns ...")
        raise DataError(f"{path}: cannot read as {path.suffix[1:]}: {exc}") from exc
    if not rows:
        raise DataError(f"{path}: empty file")
    return pa.Table.from_pylist(rows)


def read_local_table(files: list[Path]) -> pa.Table:
    """Concatenate local parquet / json(l) / csv files into one table (schemas must agree)."""
    tables = [read_local_file(f) for f in files]
    try:
        return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"files {[str(f) for f in files]} do not share one schema: {exc}") from exc


def read_table(
    spec: SourceSpec | Mapping[str, Any] | str,
    *,
    cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
    gated: bool = False,
) -> pa.Table:
    """Read a source into a ``pyarrow.Table``: the single code path behind every loader.

    ``gated`` marks hub datasets that need ``HF_TOKEN`` (a missing token is a clear ``DataError``).
    """
    spec = SourceSpec.parse(spec)
    if spec.path is not None:
        return read_local_table(local_files(spec.path))
    assert spec.hub is not None
    token = hf_token(required=gated, dataset=spec.hub)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    if spec.files:
        from huggingface_hub import hf_hub_download

        try:
            paths = [
                Path(
                    hf_hub_download(
                        repo_id=spec.hub,
                        filename=name,
                        repo_type="dataset",
                        revision=spec.revision,
                        cache_dir=os.fspath(cache),
                        token=token,
                    )
                )
                for name in spec.files
            ]
        except Exception as exc:  # network, auth, missing file: say which source and how to work around it
            raise DataError(_hub_failure(spec, exc)) from exc
        return read_local_table(paths)
    import datasets

    try:
        ds = datasets.load_dataset(
            spec.hub,
            name=spec.config,
            split=spec.split,
            revision=spec.revision,
            cache_dir=os.fspath(cache / "datasets"),
            token=token,
        )
    except Exception as exc:
        raise DataError(_hub_failure(spec, exc)) from exc
    return ds.with_format("arrow")[:]


def _hub_failure(spec: SourceSpec, exc: Exception) -> str:
    return (
        f"could not read {spec.describe()}: {type(exc).__name__}: {exc}. Without internet (or for a gated "
        "dataset without access) download it elsewhere and point the source at the copy with {path: ...}"
    )
