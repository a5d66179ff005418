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
            regime="",
        shell:
            "{params.cli} testbed make-data --config {params.cfg} --out $(dirname {output.train}) {params.regime} "
            "> {log} 2>&1"

    use rule testbed_data as testbed_data_regime with:
        output:
            train=f"{RES}/regimes/{{regime}}/data/train.parquet",
            val=f"{RES}/regimes/{{regime}}/data/val.parquet",
            test=f"{RES}/regimes/{{regime}}/data/test.parquet",
            sft=f"{RES}/regimes/{{regime}}/data/sft.jsonl",
            summary=f"{RES}/regimes/{{regime}}/data/summary.json",
        log:
            f"{RES}/logs/data/testbed_data_{{regime}}.log",
        benchmark:
            f"{RES}/benchmarks/data/testbed_data_{{regime}}.tsv"
        params:
            cli=CLI,
            cfg=CONFIGFILE,
            regime=lambda wc: f"--regime {wc.regime}",

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

    rule lm_eval_inputs:
        output:
            expand(f"{RES}/data/lm_eval/{{task}}.jsonl", task=LM_EVAL_TASKS),
        log:
            f"{RES}/logs/data/lm_eval_inputs.log",
        benchmark:
            f"{RES}/benchmarks/data/lm_eval_inputs.tsv"
        resources:
            mem_mb=4000,
            runtime=60,
        conda:
            "../envs/cpu.yaml"
        params:
            cli=CLI,
            cfg=CONFIGFILE,
            raw=lambda wc, output: str(Path(output[0]).parent),
        shell:
            "{params.cli} data prepare-eval --config {params.cfg} --only aime24,aime25,gpqa_diamond "
            "--out-dir {params.raw}/rows --raw-dir {params.raw} > {log} 2>&1"

    rule difficulty_rollouts:
        # Qwen2.5-7B recipe: pass counts of the SFT model over 8 rollouts of every training prompt.
        input:
            model=rl_init_model_input(),
            train=f"{RES}/data/train.parquet",
        output:
            counts=f"{RES}/data/difficulty/pass_counts.json",
            overrides=f"{RES}/data/difficulty/run/overrides.txt",
        log:
            f"{RES}/logs/data/difficulty_rollouts.log",
        benchmark:
            f"{RES}/benchmarks/data/difficulty_rollouts.tsv"
        threads: 16
        resources:
            mem_mb=256000,
            runtime=24 * 60,
            gpu=lambda wc: config["verl"]["n_gpus_per_node"],
            gpu_model="h200",
        conda:
            "../envs/verl.yaml"
        container:
            GPU_CONTAINER
        params:
            cli=GPU_CLI,
            cfg=CONFIGFILE,
            experiment=EXPERIMENTS[0],
            n=config["data"]["difficulty_rollouts"],
            model=lambda wc, input: rl_init_model_path(input),
            run=lambda wc, output: str(Path(output.overrides).parent),
            saar="off",  # the filter keeps prompts by the SFT model's own pass rate, without rollback
        shell:
            "({params.cli} verl overrides --config {params.cfg} --stage eval --experiment {params.experiment} "
            "--n-samples {params.n} --drop-overlong-prompts --output-dir {params.run} --val-files {input.train} "
            "--model-path {params.model} --saar {params.saar} --out {output.overrides} && "
            "{params.cli} verl train --overrides {output.overrides} --stage eval && "
            "{params.cli} verl pass-counts --generations {params.run}/generations --data {input.train} "
            "--model {params.model} --out {output.counts}) > {log} 2>&1"

    rule difficulty_filter:
        input:
            train=f"{RES}/data/train.parquet",
            counts=f"{RES}/data/difficulty/pass_counts.json",
        output:
            f"{RES}/data/train.filtered.parquet",
        log:
            f"{RES}/logs/data/difficulty_filter.log",
        benchmark:
            f"{RES}/benchmarks/data/difficulty_filter.tsv"
        resources:
            mem_mb=4000,
            runtime=10,
        conda:
            "../envs/cpu.yaml"
        params:
            cli=CLI,
            cfg=CONFIGFILE,
        shell:
            "{params.cli} data filter-difficulty --config {params.cfg} --rows {input.train} "
            "--pass-counts {input.counts} --out {output} > {log} 2>&1"
