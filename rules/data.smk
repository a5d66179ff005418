# Data: the embedded testbed generator (engine-independent rows in the RL schema + SFT trajectories), or the
# real sources (DAPO-Math, Skywork-OR1, MegaScience; AIME24/25, GPQA-Diamond, LiveCodeBench) when data.source = real.


if config["data"]["source"] == "testbed":

    rule testbed_data:
        output:
            train=f"{RES}/data/train.parquet",
            val=f"{RES}/data/val.parquet",
            test=f"{RES}/data/test.parquet",
            sft=f"{RES}/data/sft.jsonl",
            summary=f"{RES}/data/summary.json",
        log:
            f"{RES}/logs/data/testbed_data.log",
        benchmark:
            f"{RES}/benchmarks/data/testbed_data.tsv"
        threads: 2
        resources:
            mem_mb=2000,
            runtime=30,
        conda:
            "../envs/cpu.yaml"
        params:
            cli=CLI,
            cfg=CONFIGFILE,
        shell:
            "{params.cli} testbed make-data --config {params.cfg} --out $(dirname {output.train}) > {log} 2>&1"

else:

    rule real_rl_data:
        output:
            train=f"{RES}/data/train.parquet",
            report=f"{RES}/data/train_report.json",
        log:
            f"{RES}/logs/data/real_rl_data.log",
        benchmark:
            f"{RES}/benchmarks/data/real_rl_data.tsv"
        threads: 2
        resources:
            mem_mb=8000,
            runtime=120,
        conda:
            "../envs/cpu.yaml"
        params:
            cli=CLI,
            cfg=CONFIGFILE,
            mix=config["data"]["rl_mix_key"],
        shell:
            "{params.cli} data prepare-rl --config {params.cfg} --mix {params.mix} --out {output.train} "
            "--report {output.report} > {log} 2>&1"

    rule real_sft_data:
        output:
            sft=f"{RES}/data/sft.parquet",
        log:
            f"{RES}/logs/data/real_sft_data.log",
        benchmark:
            f"{RES}/benchmarks/data/real_sft_data.tsv"
        resources:
            mem_mb=4000,
            runtime=60,
        conda:
            "../envs/cpu.yaml"
        params:
            cli=CLI,
            cfg=CONFIGFILE,
        shell:
            "{params.cli} data prepare-sft --config {params.cfg} --out {output.sft} > {log} 2>&1"

    rule real_eval_data:
        output:
            f"{RES}/data/{{split}}.parquet",
        log:
            f"{RES}/logs/data/real_eval_{{split}}.log",
        benchmark:
            f"{RES}/benchmarks/data/real_eval_{{split}}.tsv"
        resources:
            mem_mb=4000,
            runtime=60,
        conda:
            "../envs/cpu.yaml"
        params:
            cli=CLI,
            cfg=CONFIGFILE,
        shell:
            "{params.cli} data prepare-eval --config {params.cfg} --only {wildcards.split} --out-dir $(dirname {output}) "
            "--report {output}.report.json > {log} 2>&1"
