# CLEANER reproduction pipeline: data -> model init -> cold-start SFT -> RL per experiment x seed -> eval -> report.
# Default: the embedded CPU testbed (config/config.yaml). Paper scale: --profile slurm --configfile config/paper-*.yaml
from snakemake.utils import min_version

min_version("9.0")


# `--configfile X` replaces the default instead of being merged into it, so the CLI (which rules call with the
# same file) and Snakemake see exactly one config.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/sft.smk"
include: "rules/rl.smk"
include: "rules/eval.smk"
include: "rules/report.smk"
include: "rules/smoke.smk"


rule all:
    input:
        report_outputs(),
    default_target: True


# Named targets for part of the DAG.
rule data:
    input:
        data_outputs(),


rule sft_only:
    input:
        sft_model(),


rule rl_only:
    input:
        rl_outputs(),


rule eval_only:
    input:
        eval_outputs(),


# verl engine: every GPU stage on a handful of rows with the real model, one node (rules/smoke.smk). Run it first.
rule paper_smoke:
    input:
        smoke_outputs() if ENGINE == "verl" else [],
