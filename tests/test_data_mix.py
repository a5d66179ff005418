"""The RL mix recipe (seeded sampling by source and subset) and the 7B difficulty filter."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from cleaner.data.mix import KEEP_RATIOS_7B, apply_difficulty_filter, build_rl_mix, difficulty_filter, sample_source
from cleaner.data.schema import DataError, row_uid, validate_rl_row

FIX = Path(__file__).parent / "fixtures" / "datasets"


def fixture_recipe(**overrides) -> dict:
    recipe = {
        "seed": 0,
        "max_bad_fraction": 0.25,
        "sources": {
            "dapo_math": {"source": {"path": str(FIX / "dapo_math_17k.parquet")}, "count": "all"},
            "skywork_math": {
                "source": {"path": str(FIX / "skywork_or1_math.parquet")},
                "subsets": {"train-math-numinamath1.5_olympiads": 2, "train-math-deepscaler": 1, "*": 2},
            },
            "megascience": {"source": {"path": str(FIX / "megascience.parquet")}, "count": 3,
                            "options": {"max_question_chars": 300}},
            "skywork_code": {
                "source": {"path": str(FIX / "skywork_or1_code.parquet")},
                "subsets": {"train-code-taco-*": 2, "train-code-leetcode-*": "all"},
            },
        },
    }
    recipe.update(overrides)
    return recipe


def test_mix_counts_report_and_determinism() -> None:
    rows, report = build_rl_mix(fixture_recipe())
    assert len(rows) == 4 + 5 + 3 + 4 == report["total"]
    for row in rows:
        assert validate_rl_row(row) == []
    assert len({row_uid(r) for r in rows}) == len(rows)
    by_source = Counter(r["extra_info"]["source"] for r in rows)
    assert by_source == {"dapo_math": 4, "skywork_math": 5, "megascience": 3, "skywork_code": 4}
    sky = report["sources"]["skywork_math"]
    assert sky["sample"]["subsets"]["train-math-numinamath1.5_olympiads"] == {"requested": 2, "available": 3, "realised": 2}
    assert sky["sample"]["subsets"]["*"] == {"requested": 2, "available": 3, "realised": 2}  # aops, still3, omnimath
    assert sky["bad_rows"] == 1 and "reward_model.ground_truth" in sky["first_problems"][0]
    code = report["sources"]["skywork_code"]["sample"]
    assert code["unmatched_rows"] == 1 and code["subsets"]["train-code-leetcode-*"]["realised"] == 2
    assert report["by_ability"] == {"code": 4, "math": 9, "science": 3}
    again, _ = build_rl_mix(fixture_recipe())
    assert again == rows
    other, _ = build_rl_mix(fixture_recipe(seed=1))
    assert [row_uid(r) for r in other] != [row_uid(r) for r in rows]


def test_mix_fails_clearly_when_a_source_is_too_small() -> None:
    recipe = fixture_recipe()
    recipe["sources"]["megascience"]["count"] = 50
    with pytest.raises(DataError, match="mix source 'megascience': asked for 50 rows but only 6 are available"):
        build_rl_mix(recipe)
    recipe = fixture_recipe()
    recipe["sources"]["skywork_math"]["subsets"]["train-math-deepscaler"] = 9
    with pytest.raises(DataError, match="subset 'train-math-deepscaler': asked for 9 rows but only 2"):
        build_rl_mix(recipe)


def test_mix_recipe_errors() -> None:
    recipe = fixture_recipe()
    recipe["sources"]["skywork_math"]["count"] = 7
    with pytest.raises(DataError, match="count 7 differs from the sum of its subsets \\(5\\)"):
        build_rl_mix(recipe)
    with pytest.raises(DataError, match="unknown loader 'nope'"):
        build_rl_mix({"sources": {"nope": {"source": "x.parquet"}}})
    with pytest.raises(DataError, match="expected a non-negative integer or 'all'"):
        build_rl_mix({"sources": {"dapo_math": {"source": "x.parquet", "count": -1}}})
    with pytest.raises(DataError, match="more than max_bad_fraction"):
        build_rl_mix(fixture_recipe(max_bad_fraction=0.0))


def test_sample_source_without_replacement() -> None:
    rows = [{"data_source": "s", "extra_info": {"index": str(i)}} for i in range(50)]
    picked, report = sample_source("s", rows, count=20, subsets=None, seed=3)
    assert len({r["extra_info"]["index"] for r in picked}) == 20 and report["realised"] == 20
    assert picked == sample_source("s", rows, count=20, subsets=None, seed=3)[0]
    assert picked != sample_source("s", rows, count=20, subsets=None, seed=4)[0]


def test_difficulty_filter_exact_keep_ratios() -> None:
    pass_counts = [k for k in range(9) for _ in range(100)]
    kept = difficulty_filter(pass_counts, seed=0)
    kept_by_bucket = Counter(pass_counts[i] for i in kept)
    assert dict(kept_by_bucket) == {1: 80, 2: 90, 3: 100, 4: 100, 5: 100, 6: 100, 7: 100}
    assert kept == sorted(kept) and len(set(kept)) == len(kept)
    assert kept == difficulty_filter(pass_counts, seed=0)
    assert kept != difficulty_filter(pass_counts, seed=1)
    assert difficulty_filter([1, 1, 1, 1, 1], seed=0, keep_ratios=KEEP_RATIOS_7B).__len__() == 4  # round(0.8 * 5)
    with pytest.raises(DataError, match="pass count of prompt 1 must be an integer in \\[0, 8\\]"):
        difficulty_filter([3, 9], seed=0)
    with pytest.raises(DataError, match="every pass count 0..8"):
        difficulty_filter([3], seed=0, keep_ratios={0: 1.0})


def test_apply_difficulty_filter_by_uid() -> None:
    rows = [{"data_source": "math_dapo", "extra_info": {"index": str(i)}} for i in range(10)]
    counts = {f"math_dapo/{i}": (0 if i < 2 else 8 if i < 4 else 5) for i in range(10)}
    kept, report = apply_difficulty_filter(rows, counts, seed=0)
    assert [r["extra_info"]["index"] for r in kept] == [str(i) for i in range(4, 10)]
    assert report["by_pass_count"]["0"] == {"prompts": 2, "kept": 0} and report["kept"] == 6
    with pytest.raises(DataError, match="1 of 10 rows have no pass count, e.g. \\['math_dapo/9'\\]"):
        apply_difficulty_filter(rows, {k: v for k, v in counts.items() if k != "math_dapo/9"}, seed=0)
