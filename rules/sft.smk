# Model init and cold-start SFT. Embedded engine: the testbed's tiny Qwen3 (tokenizer trained on the SFT data)
# trained by cleaner.train.sft. verl engine: verl's SFT trainer on the real SFT set (multi-turn + tools), then the
# FSDP checkpoint converted to a Hugging Face directory.

if ENGINE == "embedded":

    rule model_init:
        input:
            sft=sft_data(),
        output:
            directory(f"{RES}/model/init"),
        log:
            f"{RES}/logs/model/init.log",
        benchmark:
            f"{RES}/benchmarks/model/init.tsv"
        resources:
            mem_mb=2000,
            runtime=10,
        conda:
            "../envs/cpu.yaml"
        params:
            cli=CLI,
            cfg=CONFIGFILE,
            regime="",
        shell:
            "{params.cli} testbed make-model --config {params.cfg} --sft {input.sft} --out {output} {params.regime} "
            "> {log} 2>&1"

    use rule model_init as model_init_regime with:
        input:
            sft=f"{RES}/regimes/{{regime}}/data/sft.jsonl",
        output:
            directory(f"{RES}/regimes/{{regime}}/model/init"),
        log:
            f"{RES}/logs/model/init_{{regime}}.log",
        benchmark:
            f"{RES}/benchmarks/model/init_{{regime}}.tsv"
        params:
            cli=CLI,
            cfg=CONFIGFILE,
            regime=lambda wc: f"--regime {wc.regime}",

    rule sft:
        input:
            model=f"{RES}/model/init",
            data=sft_data(),
        output:
            model=directory(f"{RES}/sft/final"),
            summary=f"{RES}/sft/summary.json",
        log:
            f"{RES}/logs/sft/sft.log",
        benchmark:
            f"{RES}/benchmarks/sft/sft.tsv"
        threads: workflow.cores
        resources:
            mem_mb=4000,
            runtime=60,
        conda:
            "../envs/cpu.yaml"
        params:
            cli=CLI,
            cfg=CONFIGFILE,
        shell:
            "{params.cli} sft --config {params.cfg} --model {input.model} --data {input.data} "
            "--out $(dirname {output.model}) --threads {threads} > {log} 2>&1"

    use rule sft as sft_regime with:
        input:
            model=f"{RES}/regimes/{{regime}}/model/init",
            data=f"{RES}/regimes/{{regime}}/data/sft.jsonl",
        output:
            model=directory(f"{RES}/regimes/{{regime}}/sft/final"),
            summary=f"{RES}/regimes/{{regime}}/sft/summary.json",
        log:
            f"{RES}/logs/sft/sft_{{regime}}.log",
        benchmark:
            f"{RES}/benchmarks/sft/sft_{{regime}}.tsv"

else:

    rule sft:
        input:
            data=sft_data(),
        output:
            model=directory(f"{RES}/sft/final"),
            overrides=f"{RES}/sft/run/overrides.txt",
        log:
            f"{RES}/logs/sft/sft.log",
        benchmark:
            f"{RES}/benchmarks/sft/sft.tsv"
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
            run=lambda wc, output: str(Path(output.overrides).parent),
        shell:
            "({params.cli} verl overrides --config {params.cfg} --stage sft --output-dir {params.run} "
            "--train-files {input.data} --out {output.overrides} && "
            "{params.cli} verl train --overrides {output.overrides} --stage sft && "
            "{params.cli} verl convert {params.run}/checkpoints {output.model}) > {log} 2>&1"
