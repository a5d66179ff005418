"""The RL training mix (sources x counts from config) and the 7B recipe's difficulty filter.

Mix recipe (CLEANER.md "Data"; the paper's numbers are in ``recipes/paper.yaml``)::

    seed: 0
    max_bad_fraction: 0.01
    agent_name: tool_agent
    sources:
      dapo_math:                       # a name of your choice
        loader: dapo_math              # one of cleaner.data.loaders.LOADERS (default: the name)
        source: {hub: BytedTsinghua-SIA/DAPO-Math-17k, config: default, split: train}   # or {path: ...}
        count: all                     # an int or "all"
      skywork_math:
        loader: skywork_math
        source: {hub: Skywork/Skywork-OR1-RL-Data, split: math}
        subsets:                       # data_source glob -> count ("all" allowed); first match wins,
          train-math-numinamath1.5_olympiads: 2079                # so "*" last means "everything else"
          ...
        options: {}                    # extra keyword arguments of the loader (e.g. max_question_chars)

With ``subsets`` the ``count`` (if given) must equal their sum. Rows are drawn without replacement with a
``random.Random`` keyed by (seed, source name, subset pattern); asking for more rows than exist raises
``DataError`` naming the source, the subset, and both numbers. The realised counts are reported.

Difficulty filter (the Qwen2.5-7B recipe): each prompt's pass count out of 8 rollouts of the SFT model
selects a keep ratio — 0/8: 0, 1/8: 0.8, 2/8: 0.9, 3..7/8: 1.0, 8/8: 0 — and exactly
``round(ratio * bucket size)`` prompts of each bucket are kept, chosen by a seeded RNG.
"""

from __future__ import annotations

import fnmatch
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from cleaner.data.loaders import LOADERS, Loaded
from cleaner.data.schema import DEFAULT_AGENT_NAME, DataError, row_uid
from cleaner.data.sources import DEFAULT_CACHE_DIR, SourceSpec

ALL = "all"
KEEP_RATIOS_7B: dict[int, float] = {0: 0.0, 1: 0.8, 2: 0.9, 3: 1.0, 4: 1.0, 5: 1.0, 6: 1.0, 7: 1.0, 8: 0.0}


@dataclass(frozen=True)
class SourceRecipe:
    """One entry of the mix: which loader reads which source, and how many rows of which subsets to take."""

    name: str
    loader: str
    source: SourceSpec
    count: int | str = ALL
    subsets: dict[str, int | str] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, cfg: Mapping[str, Any]) -> "SourceRecipe":
        if not isinstance(cfg, Mapping):
            raise DataError(f"mix source {name!r}: expected a mapping, got {type(cfg).__name__}")
        unknown = sorted(set(cfg) - {"loader", "source", "count", "subsets", "options"})
        if unknown:
            raise DataError(f"mix source {name!r}: unknown key(s) {unknown}")
        loader = cfg.get("loader", name)
        if loader not in LOADERS:
            raise DataError(f"mix source {name!r}: unknown loader {loader!r} (known: {sorted(LOADERS)})")
        if "source" not in cfg:
            raise DataError(f"mix source {name!r}: missing 'source' ({{hub: ..., split: ...}} or {{path: ...}})")
        subsets = cfg.get("subsets")
        if subsets is not None:
            if not isinstance(subsets, Mapping) or not subsets:
                raise DataError(f"mix source {name!r}: 'subsets' must be a non-empty mapping pattern -> count")
            subsets = {str(k): _check_count(v, f"{name}.subsets.{k}") for k, v in subsets.items()}
        count = _check_count(cfg.get("count", ALL if subsets is None else _subset_total(subsets)), f"{name}.count")
        if subsets is not None and count != _subset_total(subsets):
            raise DataError(
                f"mix source {name!r}: count {count} differs from the sum of its subsets ({_subset_total(subsets)})"
            )
        options = dict(cfg.get("options") or {})
        return cls(name, loader, SourceSpec.parse(cfg["source"]), count, subsets, options)


def _check_count(value: Any, where: str) -> int | str:
    if value == ALL:
        return ALL
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"{where}: expected a non-negative integer or 'all', got {value!r}")
    return value


def _subset_total(subsets: Mapping[str, int | str]) -> int | str:
    counts = list(subsets.values())
    return ALL if ALL in counts else sum(int(c) for c in counts)


def parse_mix_recipe(recipe: Mapping[str, Any]) -> list[SourceRecipe]:
    """The ``sources`` mapping of a mix recipe as ``SourceRecipe`` objects (order preserved)."""
    sources = recipe.get("sources")
    if not isinstance(sources, Mapping) or not sources:
        raise DataError("mix recipe: 'sources' must be a non-empty mapping of source name -> settings")
    return [SourceRecipe.parse(str(name), cfg) for name, cfg in sources.items()]


def _draw(n_available: int, count: int | str, rng: random.Random, where: str) -> list[int]:
    if count == ALL:
        return list(range(n_available))
    assert isinstance(count, int)
    if count > n_available:
        raise DataError(f"{where}: asked for {count} rows but only {n_available} are available")
    return sorted(rng.sample(range(n_available), count))


def sample_source(
    name: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    count: int | str,
    subsets: Mapping[str, int | str] | None,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Draw ``count`` rows (or per-subset counts) without replacement; returns the rows and a report."""
    if subsets is None:
        picked = _draw(len(rows), count, random.Random(f"mix:{seed}:{name}"), f"mix source {name!r}")
        return [dict(rows[i]) for i in picked], {"requested": count, "available": len(rows), "realised": len(picked)}
    pools: dict[str, list[int]] = {pattern: [] for pattern in subsets}
    unmatched = 0
    for i, row in enumerate(rows):
        for pattern in subsets:
            if fnmatch.fnmatchcase(row["data_source"], pattern):
                pools[pattern].append(i)
                break
        else:
            unmatched += 1
    out: list[dict[str, Any]] = []
    report: dict[str, Any] = {"requested": count, "available": len(rows), "unmatched_rows": unmatched, "subsets": {}}
    for pattern, want in subsets.items():
        pool = pools[pattern]
        rng = random.Random(f"mix:{seed}:{name}:{pattern}")
        picked = _draw(len(pool), want, rng, f"mix source {name!r} subset {pattern!r}")
        out.extend(dict(rows[pool[i]]) for i in picked)
        report["subsets"][pattern] = {"requested": want, "available": len(pool), "realised": len(picked)}
    report["realised"] = len(out)
    return out, report


def build_rl_mix(
    recipe: Mapping[str, Any],
    *,
    cache_dir: str = str(DEFAULT_CACHE_DIR),
    seed: int | None = None,
    agent_name: str | None = None,
    max_bad_fraction: float | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Load every source of the recipe, sample the configured counts, shuffle (seeded) and report.

    Keyword arguments override the recipe's ``seed`` / ``agent_name`` / ``max_bad_fraction``. The report
    holds, per source, the loader summary (source rows, bad rows with the first problems, unselected rows)
    and the sampling counts, plus the realised total and counts per ``data_source``.
    """
    seed = int(recipe.get("seed", 0) if seed is None else seed)
    agent_name = agent_name or recipe.get("agent_name", DEFAULT_AGENT_NAME)
    max_bad = float(recipe.get("max_bad_fraction", 0.01) if max_bad_fraction is None else max_bad_fraction)
    mixed: list[dict[str, Any]] = []
    report: dict[str, Any] = {"seed": seed, "agent_name": agent_name, "max_bad_fraction": max_bad, "sources": {}}
    for entry in parse_mix_recipe(recipe):
        loaded: Loaded = LOADERS[entry.loader](
            entry.source, cache_dir=cache_dir, agent_name=agent_name, max_bad_fraction=max_bad, **entry.options
        )
        rows, sampled = sample_source(entry.name, loaded.rows, count=entry.count, subsets=entry.subsets, seed=seed)
        mixed.extend(rows)
        report["sources"][entry.name] = {
            "loader": entry.loader,
            "origin": entry.source.describe(),
            **loaded.summary(),
            "sample": sampled,
        }
    uids = Counter(row_uid(r) for r in mixed)
    duplicates = [uid for uid, n in uids.items() if n > 1]
    if duplicates:
        raise DataError(f"the mix holds {len(duplicates)} duplicated row id(s) across sources, e.g. {duplicates[:3]}")
    random.Random(f"mix:{seed}:shuffle").shuffle(mixed)
    report["total"] = len(mixed)
    report["by_data_source"] = dict(sorted(Counter(r["data_source"] for r in mixed).items()))
    report["by_ability"] = dict(sorted(Counter(r["ability"] for r in mixed).items()))
    return mixed, report


# ------------------------------------------------------------------------------- difficulty filter


def _check_keep_ratios(keep_ratios: Mapping[int, float], n_rollouts: int) -> dict[int, float]:
    ratios = {int(k): float(v) for k, v in keep_ratios.items()}
    if set(ratios) != set(range(n_rollouts + 1)):
        raise DataError(f"keep_ratios must give a ratio for every pass count 0..{n_rollouts}, got {sorted(ratios)}")
    bad = {k: v for k, v in ratios.items() if not 0.0 <= v <= 1.0}
    if bad:
        raise DataError(f"keep ratios must lie in [0, 1]: {bad}")
    return ratios


def difficulty_filter(
    pass_counts: Sequence[int],
    *,
    seed: int,
    n_rollouts: int = 8,
    keep_ratios: Mapping[int, float] = KEEP_RATIOS_7B,
) -> list[int]:
    """Indices of the prompts kept by the 7B recipe's difficulty filter, in increasing order.

    ``pass_counts[i]`` is how many of ``n_rollouts`` rollouts of the SFT model solved prompt ``i``. For each
    pass count ``k`` exactly ``floor(keep_ratios[k] * n_k + 0.5)`` of the ``n_k`` prompts with that count are
    kept, drawn without replacement by ``random.Random`` keyed by ``(seed, k)``.
    """
    ratios = _check_keep_ratios(keep_ratios, n_rollouts)
    buckets: dict[int, list[int]] = {k: [] for k in ratios}
    for i, k in enumerate(pass_counts):
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n_rollouts:
            raise DataError(f"pass count of prompt {i} must be an integer in [0, {n_rollouts}], got {k!r}")
        buckets[k].append(i)
    kept: list[int] = []
    for k, members in buckets.items():
        n_keep = math.floor(ratios[k] * len(members) + 0.5)
        kept.extend(random.Random(f"difficulty:{seed}:{k}").sample(members, n_keep))
    return sorted(kept)


def apply_difficulty_filter(
    rows: Sequence[Mapping[str, Any]],
    pass_counts: Mapping[str, int],
    *,
    seed: int,
    n_rollouts: int = 8,
    keep_ratios: Mapping[int, float] = KEEP_RATIOS_7B,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Filter RL rows by pass counts keyed by ``row_uid`` (``data_source/index``); every row needs one.

    Returns the kept rows (input order) and a report: prompts and kept prompts per pass count.
    """
    missing = [row_uid(r) for r in rows if row_uid(r) not in pass_counts]
    if missing:
        raise DataError(f"{len(missing)} of {len(rows)} rows have no pass count, e.g. {missing[:3]}")
    counts = [pass_counts[row_uid(r)] for r in rows]
    kept = difficulty_filter(counts, seed=seed, n_rollouts=n_rollouts, keep_ratios=keep_ratios)
    by_bucket = Counter(counts)
    kept_by_bucket = Counter(counts[i] for i in kept)
    report = {
        "seed": seed,
        "n_rollouts": n_rollouts,
        "keep_ratios": {str(k): v for k, v in sorted(_check_keep_ratios(keep_ratios, n_rollouts).items())},
        "input": len(rows),
        "kept": len(kept),
        "by_pass_count": {
            str(k): {"prompts": by_bucket.get(k, 0), "kept": kept_by_bucket.get(k, 0)} for k in range(n_rollouts + 1)
        },
    }
    return [dict(rows[i]) for i in kept], report
