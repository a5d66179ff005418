"""Statistics a reviewer accepts: means with 95% intervals over seeds, and paired differences between arms.

Two sources of variance matter in an RL comparison: the training seed (each seed is a different policy) and the
finite set of test problems. The intervals here account for both:

- ``mean_ci(values)``: Student-t interval over per-seed means (seeds as the unit; what "mean +- CI over seeds"
  means in papers). With one value the interval is undefined (``lo = hi = None``).
- ``bootstrap_ci(scores)`` and ``paired_bootstrap_diff(treatment, control)``: a two-level (hierarchical)
  bootstrap over seeds x problems. ``scores[s][p]`` is the score of problem ``p`` under seed ``s`` (e.g. the mean
  correctness of its k samples). Each replicate resamples seeds with replacement, then problems with replacement,
  and averages. For a paired difference both arms get the SAME resampled seed and problem indices, which is what
  makes it paired: arm seed ``s`` used the same sampling seeds and problems as the control's seed ``s``.

Percentile intervals; the bootstrap generator is seeded, so a report is reproducible bit for bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

__all__ = ["Interval", "mean_ci", "bootstrap_ci", "paired_bootstrap_diff", "per_problem_scores", "load_per_problem"]

CONFIDENCE = 0.95
N_BOOT = 4000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its interval; ``lo``/``hi`` are None when it cannot be estimated (one seed)."""

    mean: float
    lo: float | None
    hi: float | None
    n: int

    def to_dict(self) -> dict:
        return asdict(self)

    def excludes_zero(self) -> bool:
        return self.lo is not None and self.hi is not None and (self.lo > 0 or self.hi < 0)


def mean_ci(values: Sequence[float], *, confidence: float = CONFIDENCE) -> Interval:
    """Mean and Student-t interval of independent values (one per seed)."""
    xs = np.asarray([float(v) for v in values], dtype=float)
    if xs.size == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(xs.mean())
    if xs.size < 2:
        return Interval(mean, None, None, 1)
    from scipy.stats import t  # scipy comes with the locked environment; imported here to keep import time low

    half = float(t.ppf(0.5 + confidence / 2, xs.size - 1)) * float(xs.std(ddof=1)) / math.sqrt(xs.size)
    return Interval(mean, mean - half, mean + half, int(xs.size))


def _as_matrix(scores: Sequence[Sequence[float]], name: str) -> np.ndarray:
    m = np.asarray(scores, dtype=float)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"{name}: expected a seeds x problems matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{name}: contains NaN or infinite scores")
    return m


def _replicate_indices(n_seeds: int, n_problems: int, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    problem_idx = rng.integers(0, n_problems, size=(n_boot, n_problems))
    return seed_idx, problem_idx


def _replicate_means(m: np.ndarray, seed_idx: np.ndarray, problem_idx: np.ndarray) -> np.ndarray:
    # m[seed_idx[b]][:, problem_idx[b]].mean() for every replicate b, vectorised in chunks to bound memory.
    chunk = 256
    return np.concatenate([m[seed_idx[i:i + chunk, :, None], problem_idx[i:i + chunk, None, :]].mean(axis=(1, 2))
                           for i in range(0, len(seed_idx), chunk)])


def _percentile_interval(point: float, reps: np.ndarray, n: int, confidence: float) -> Interval:
    lo, hi = np.quantile(reps, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(point, float(lo), float(hi), n)


def bootstrap_ci(scores: Sequence[Sequence[float]], *, confidence: float = CONFIDENCE, n_boot: int = N_BOOT,
                 seed: int = 0) -> Interval:
    """Mean over seeds x problems with a two-level bootstrap interval."""
    m = _as_matrix(scores, "scores")
    seed_idx, problem_idx = _replicate_indices(*m.shape, n_boot, seed)
    return _percentile_interval(float(m.mean()), _replicate_means(m, seed_idx, problem_idx), m.shape[0], confidence)


def paired_bootstrap_diff(treatment: Sequence[Sequence[float]], control: Sequence[Sequence[float]], *,
                          confidence: float = CONFIDENCE, n_boot: int = N_BOOT, seed: int = 0) -> Interval:
    """treatment - control, paired by seed index and problem, with a two-level bootstrap interval."""
    t_m, c_m = _as_matrix(treatment, "treatment"), _as_matrix(control, "control")
    if t_m.shape != c_m.shape:
        raise ValueError(f"paired arms need the same seeds x problems, got {t_m.shape} and {c_m.shape}")
    diff = t_m - c_m
    seed_idx, problem_idx = _replicate_indices(*diff.shape, n_boot, seed)
    return _percentile_interval(float(diff.mean()), _replicate_means(diff, seed_idx, problem_idx),
                                diff.shape[0], confidence)


def per_problem_scores(records: Sequence[dict], *, metric: str = "acc") -> np.ndarray:
    """Mean of ``metric`` over the k samples of each problem, ordered by problem index (eval trajectory records)."""
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for r in records:
        p = int(r["problem"])
        sums[p] = sums.get(p, 0.0) + float(r[metric])
        counts[p] = counts.get(p, 0) + 1
    return np.asarray([sums[p] / counts[p] for p in sorted(sums)], dtype=float)


def load_per_problem(path: str | Path, *, metric: str = "acc") -> np.ndarray:
    """``per_problem_scores`` of an eval ``<split>.trajectories.jsonl`` file."""
    path = Path(path)
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON record ({e.msg})") from None
    if not records:
        raise ValueError(f"{path}: no trajectory records")
    return per_problem_scores(records, metric=metric)
