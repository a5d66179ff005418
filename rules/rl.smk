# RL per experiment x seed: GRPO/DAPO with (cleaner) or without (baseline) SAAR-purified rollouts.
# Outputs are final/ and summary.json only: checkpoints/ and metrics.jsonl beside them are not declared, so an
# interrupted job (kill -9) leaves its checkpoints in place and the rerun resumes from the newest one.

if ENGINE == "embedded":

    rule rl:
        input:
            model=sft_model(),
            train=f"{RES}/data/train.parquet",
        output:
            model=directory(f"{RES}/{{exp}}/seed{{seed}}/rl/final"),
            summary=f"{RES}/{{exp}}/seed{{seed}}/rl/summary.json",
        log:
            f"{RES}/logs/rl/{{exp}}_seed{{seed}}.log",
        benchmark:
            f"{RES}/benchmarks/rl/{{exp}}_seed{{seed}}.tsv"
        threads: workflow.cores
        resources:
            mem_mb=6000,
            runtime=120,
        conda:
            "../envs/cpu.yaml"
        params:
            cli=CLI,
            cfg=CONFIGFILE,
        shell:
            "{params.cli} rl --config {params.cfg} --experiment {wildcards.exp} --seed {wildcards.seed} "
            "--model {input.model} --data {input.train} --out $(dirname {output.model}) --threads {threads} "
            "> {log} 2>&1"

else:

    rule rl:
        input:
            model=sft_model(),
            train=f"{RES}/data/train.parquet",
            val=f"{RES}/data/{eval_splits()[0]}.parquet",
        output:
            model=directory(f"{RES}/{{exp}}/seed{{seed}}/rl/final"),
            summary=f"{RES}/{{exp}}/seed{{seed}}/rl/summary.json",
            overrides=f"{RES}/{{exp}}/seed{{seed}}/rl/verl_overrides.txt",
        log:
            f"{RES}/logs/rl/{{exp}}_seed{{seed}}.log",
        benchmark:
            f"{RES}/benchmarks/rl/{{exp}}_seed{{seed}}.tsv"
        threads: 16
        resources:
            mem_mb=512000,
            runtime=72 * 60,
            gpu=4,
            gpu_model="h200",
            nodes=lambda wc: config["verl"]["nnodes"] if "verl" in config else 1,
        conda:
            "../envs/verl.yaml"
        params:
            cli=CLI,
            cfg=CONFIGFILE,
        shell:
            "{params.cli} verl rl --config {params.cfg} --experiment {wildcards.exp} --seed {wildcards.seed} "
            "--model {input.model} --train {input.train} --val {input.val} --out $(dirname {output.model}) "
            "--overrides-out {output.overrides} > {log} 2>&1"
