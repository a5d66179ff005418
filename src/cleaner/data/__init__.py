"""Training data and benchmarks of the CLEANER reproduction (see ``docs/data.md``).

- ``schema``: the normalised RL / eval row (verl parquet), ``validate_rl_row``, atomic writers.
- ``sources``: one read path for hub ids (``datasets``, cached under ``resources/``) and local files.
- ``loaders``: DAPO-Math-17k, Skywork-OR1 math / code, MegaScience, Open-AgentRL-30K -> RL rows.
- ``eval_sets``: AIME24, AIME25, GPQA-Diamond, LiveCodeBench v6 -> eval rows.
- ``sft``: Open-AgentRL-SFT-3K -> ``{messages, tools}`` rows.
- ``mix``: the mix recipe (sources x counts, seeded) and the 7B difficulty filter.
- ``lm_eval_tasks``: lm-evaluation-harness's own tasks on local files (no-tool baselines).
- ``cli``: ``cleaner data ...`` subcommands (``add_commands``).
"""

from cleaner.data.eval_sets import (
    EVAL_LOADERS,
    decode_lcb_tests,
    load_aime24,
    load_aime25,
    load_gpqa_diamond,
    load_livecodebench,
    shuffle_gpqa_choices,
)
from cleaner.data.loaders import (
    LOADERS,
    Loaded,
    load_dapo_math,
    load_megascience,
    load_open_agentrl,
    load_skywork_code,
    load_skywork_math,
    numeric_reference_answer,
)
from cleaner.data.mix import KEEP_RATIOS_7B, apply_difficulty_filter, build_rl_mix, difficulty_filter, sample_source
from cleaner.data.schema import (
    DataError,
    RowProblem,
    check_bad_fraction,
    read_parquet_rows,
    row_uid,
    validate_rl_row,
    validate_sft_row,
    write_rl_parquet,
    write_sft_parquet,
)
from cleaner.data.sft import load_sft
from cleaner.data.sources import SourceSpec, read_table

__all__ = [
    "EVAL_LOADERS",
    "KEEP_RATIOS_7B",
    "LOADERS",
    "DataError",
    "Loaded",
    "RowProblem",
    "SourceSpec",
    "apply_difficulty_filter",
    "build_rl_mix",
    "check_bad_fraction",
    "decode_lcb_tests",
    "difficulty_filter",
    "load_aime24",
    "load_aime25",
    "load_dapo_math",
    "load_gpqa_diamond",
    "load_livecodebench",
    "load_megascience",
    "load_open_agentrl",
    "load_sft",
    "load_skywork_code",
    "load_skywork_math",
    "numeric_reference_answer",
    "read_parquet_rows",
    "read_table",
    "row_uid",
    "sample_source",
    "shuffle_gpqa_choices",
    "validate_rl_row",
    "validate_sft_row",
    "write_rl_parquet",
    "write_sft_parquet",
]
