"""cleaner.stats: intervals over seeds and the paired two-level bootstrap."""

import numpy as np
import pytest

from cleaner.stats import bootstrap_ci, mean_ci, paired_bootstrap_diff


def test_mean_ci_matches_the_t_interval_by_hand():
    # mean 2, sample sd 1, n 3: half-width t_{0.975, 2} * 1 / sqrt(3) = 4.302653 / 1.732051 = 2.484138
    iv = mean_ci([1.0, 2.0, 3.0])
    assert iv.mean == pytest.approx(2.0)
    assert iv.hi - iv.mean == pytest.approx(2.484138, abs=1e-5)
    assert iv.mean - iv.lo == pytest.approx(2.484138, abs=1e-5)
    assert iv.n == 3


def test_mean_ci_of_one_seed_has_no_interval():
    iv = mean_ci([0.7])
    assert (iv.mean, iv.lo, iv.hi) == (0.7, None, None)
    assert not iv.excludes_zero()


def test_paired_difference_is_exact_when_every_pair_differs_by_the_same_amount():
    rng = np.random.default_rng(1)
    control = rng.random((3, 50))
    iv = paired_bootstrap_diff(control + 0.05, control)
    # Pairing cancels all problem and seed variance: every replicate is exactly +0.05.
    assert iv.mean == pytest.approx(0.05)
    assert iv.lo == pytest.approx(0.05) and iv.hi == pytest.approx(0.05)
    assert iv.excludes_zero()


def test_unpaired_spread_is_wider_than_the_paired_one():
    rng = np.random.default_rng(2)
    control = rng.random((3, 80))
    treatment = control + rng.normal(0.02, 0.01, size=control.shape)
    paired = paired_bootstrap_diff(treatment, control)
    t_iv, c_iv = bootstrap_ci(treatment), bootstrap_ci(control)
    assert (paired.hi - paired.lo) < 0.5 * min(t_iv.hi - t_iv.lo, c_iv.hi - c_iv.lo)
    assert paired.lo < 0.02 < paired.hi


def test_bootstrap_covers_seed_variance_not_only_problems():
    # Three seeds whose problems all score the same within a seed: a problems-only bootstrap would give a
    # zero-width interval; resampling seeds gives the spread between them.
    scores = np.array([[0.5] * 40, [0.7] * 40, [0.9] * 40])
    iv = bootstrap_ci(scores)
    assert iv.mean == pytest.approx(0.7)
    assert iv.lo < 0.6 and iv.hi > 0.8


def test_bootstrap_is_reproducible_and_rejects_bad_shapes():
    scores = np.random.default_rng(3).random((2, 10))
    assert bootstrap_ci(scores) == bootstrap_ci(scores)
    with pytest.raises(ValueError, match="same seeds x problems"):
        paired_bootstrap_diff(scores, scores[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([[0.1, float("nan")]])
    with pytest.raises(ValueError, match="seeds x problems"):
        bootstrap_ci([0.1, 0.2])


def test_per_problem_scores_average_the_k_samples_in_problem_order(tmp_path):
    import json

    from cleaner.stats import load_per_problem

    records = [{"problem": 1, "sample": 0, "acc": 1.0}, {"problem": 0, "sample": 0, "acc": 0.0},
               {"problem": 1, "sample": 1, "acc": 0.0}, {"problem": 0, "sample": 1, "acc": 0.0}]
    path = tmp_path / "test.trajectories.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert load_per_problem(path).tolist() == [0.0, 0.5]
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match="test.trajectories.jsonl:1"):
        load_per_problem(path)
