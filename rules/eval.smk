# Agentic evaluation (with the tool) of the SFT model and of every RL run on every eval split, on either engine:
# SAAR off in eval/, and, for tool arms with eval.saar_at_test_time, SAAR on (eval.saar settings, the same for every
# arm) in eval_saar/ on the same problems and sampling seeds (common.smk: saar_eval_experiments).
# Embedded: cleaner.evaluate with the HF engine. verl: a validation-only verl run (SGLang, eval.k samples, top-p
# eval.top_p; `cleaner verl overrides --stage eval --saar on|off`) whose dumped generations become the same summary
# (cleaner verl eval-summary).

if ENGINE == "embedded":

    rule eval_sft:
        input:
            model=sft_model(),
            data=f"{RES}/data/{{split}}.parquet",
        output:
            summary=report(f"{RES}/sft/eval/{{split}}.json", caption="report/eval_sft.rst", category="3. Evaluation",
                           subcategory="sft (start)", labels={"experiment": "sft (start)", "split": "{split}"}),
            trajectories=f"{RES}/sft/eval/{{split}}.trajectories.jsonl",
        log:
            f"{RES}/logs/eval/sft_{{split}}.log",
        benchmark:
            f"{RES}/benchmarks/eval/sft_{{split}}.tsv"
        threads: 1
        resources:
            mem_mb=3000,
            runtime=60,
        conda:
            "../envs/cpu.yaml"
        params:
            cli=CLI,
            cfg=CONFIGFILE,
            experiment=EXPERIMENTS[0],
            k=lambda wc: eval_k(EXPERIMENTS[0], wc.split),
            saar="off",
        shell:
            "{params.cli} eval --config {params.cfg} --experiment {params.experiment} --model {input.model} "
            "--data {input.data} --k {params.k} --out {output.summary} --trajectories {output.trajectories} "
            "--threads {threads} --saar {params.saar} > {log} 2>&1"

    rule eval:
        input:
            model=f"{RES}/{{exp}}/seed{{seed}}/rl/final",
            data=lambda wc: exp_data(wc.exp, wc.split),
        output:
            summary=report(f"{RES}/{{exp}}/seed{{seed}}/eval/{{split}}.json", caption="report/eval.rst",
                           category="3. Evaluation", subcategory="{exp}",
                           labels={"experiment": "{exp}", "seed": "{seed}", "split": "{split}"}),
            trajectories=f"{RES}/{{exp}}/seed{{seed}}/eval/{{split}}.trajectories.jsonl",
        log:
            f"{RES}/logs/eval/{{exp}}_seed{{seed}}_{{split}}.log",
        benchmark:
            f"{RES}/benchmarks/eval/{{exp}}_seed{{seed}}_{{split}}.tsv"
        threads: 1
        resources:
            mem_mb=3000,
            runtime=60,
        conda:
            "../envs/cpu.yaml"
        params:
            cli=CLI,
            cfg=CONFIGFILE,
            k=lambda wc: eval_k(wc.exp, wc.split),
            saar="off",
        shell:
            "{params.cli} eval --config {params.cfg} --experiment {wildcards.exp} --model {input.model} "
            "--data {input.data} --k {params.k} --out {output.summary} --trajectories {output.trajectories} "
            "--threads {threads} --saar {params.saar} > {log} 2>&1"

    use rule eval_sft as eval_sft_saar with:
        output:
            summary=f"{RES}/sft/eval_saar/{{split}}.json",
            trajectories=f"{RES}/sft/eval_saar/{{split}}.trajectories.jsonl",
        log:
            f"{RES}/logs/eval/sft_saar_{{split}}.log",
        benchmark:
            f"{RES}/benchmarks/eval/sft_saar_{{split}}.tsv"
        params:
            cli=CLI,
            cfg=CONFIGFILE,
            experiment=EXPERIMENTS[0],
            k=lambda wc: eval_k(EXPERIMENTS[0], wc.split),
            saar="on",

    use rule eval as eval_saar with:
        output:
            summary=f"{RES}/{{exp}}/seed{{seed}}/eval_saar/{{split}}.json",
            trajectories=f"{RES}/{{exp}}/seed{{seed}}/eval_saar/{{split}}.trajectories.jsonl",
        log:
            f"{RES}/logs/eval/{{exp}}_seed{{seed}}_saar_{{split}}.log",
        benchmark:
            f"{RES}/benchmarks/eval/{{exp}}_seed{{seed}}_saar_{{split}}.tsv"
        params:
            cli=CLI,
            cfg=CONFIGFILE,
            k=lambda wc: eval_k(wc.exp, wc.split),
            saar="on",

    use rule eval_sft as eval_sft_regime with:
        input:
            model=f"{RES}/regimes/{{regime}}/sft/final",
            data=f"{RES}/regimes/{{regime}}/data/{{split}}.parquet",
        output:
            summary=f"{RES}/regimes/{{regime}}/sft/eval/{{split}}.json",
            trajectories=f"{RES}/regimes/{{regime}}/sft/eval/{{split}}.trajectories.jsonl",
        log:
            f"{RES}/logs/eval/sft_{{regime}}_{{split}}.log",
        benchmark:
            f"{RES}/benchmarks/eval/sft_{{regime}}_{{split}}.tsv"

    use rule eval_sft_saar as eval_sft_saar_regime with:
        input:
            model=f"{RES}/regimes/{{regime}}/sft/final",
            data=f"{RES}/regimes/{{regime}}/data/{{split}}.parquet",
        output:
            summary=f"{RES}/regimes/{{regime}}/sft/eval_saar/{{split}}.json",
            trajectories=f"{RES}/regimes/{{regime}}/sft/eval_saar/{{split}}.trajectories.jsonl",
        log:
            f"{RES}/logs/eval/sft_saar_{{regime}}_{{split}}.log",
        benchmark:
            f"{RES}/benchmarks/eval/sft_saar_{{regime}}_{{split}}.tsv"

else:

    rule eval_sft:
        input:
            model=rl_init_model_input(),
            data=f"{RES}/data/{{split}}.parquet",
        output:
            summary=report(f"{RES}/sft/eval/{{split}}.json", caption="report/eval_sft.rst", category="3. Evaluation",
                           subcategory="sft (start)", labels={"experiment": "sft (start)", "split": "{split}"}),
            trajectories=f"{RES}/sft/eval/{{split}}.trajectories.jsonl",
            overrides=f"{RES}/sft/eval/{{split}}_run/overrides.txt",
        log:
            f"{RES}/logs/eval/sft_{{split}}.log",
        benchmark:
            f"{RES}/benchmarks/eval/sft_{{split}}.tsv"
        threads: 16
        resources:
            mem_mb=256000,
            runtime=12 * 60,
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
            k=lambda wc: eval_k(EXPERIMENTS[0], wc.split),
            model=lambda wc, input: rl_init_model_path(input),
            run=lambda wc, output: str(Path(output.overrides).parent),
            saar="off",
        shell:
            "({params.cli} verl overrides --config {params.cfg} --stage eval --experiment {params.experiment} "
            "--output-dir {params.run} --val-files {input.data} --model-path {params.model} "
            "--n-samples {params.k} --saar {params.saar} --out {output.overrides} && "
            "{params.cli} verl train --overrides {output.overrides} --stage eval && "
            "{params.cli} verl eval-summary --generations {params.run}/generations --k {params.k} "
            "--saar {params.saar} --out {output.summary} --trajectories {output.trajectories}) > {log} 2>&1"

    rule eval:
        input:
            model=f"{RES}/{{exp}}/seed{{seed}}/rl/final",
            data=f"{RES}/data/{{split}}.parquet",
        output:
            summary=report(f"{RES}/{{exp}}/seed{{seed}}/eval/{{split}}.json", caption="report/eval.rst",
                           category="3. Evaluation", subcategory="{exp}",
                           labels={"experiment": "{exp}", "seed": "{seed}", "split": "{split}"}),
            trajectories=f"{RES}/{{exp}}/seed{{seed}}/eval/{{split}}.trajectories.jsonl",
            overrides=f"{RES}/{{exp}}/seed{{seed}}/eval/{{split}}_run/overrides.txt",
        log:
            f"{RES}/logs/eval/{{exp}}_seed{{seed}}_{{split}}.log",
        benchmark:
            f"{RES}/benchmarks/eval/{{exp}}_seed{{seed}}_{{split}}.tsv"
        threads: 16
        resources:
            mem_mb=256000,
            runtime=12 * 60,
            gpu=lambda wc: config["verl"]["n_gpus_per_node"],
            gpu_model="h200",
        conda:
            "../envs/verl.yaml"
        container:
            GPU_CONTAINER
        params:
            cli=GPU_CLI,
            cfg=CONFIGFILE,
            k=lambda wc: eval_k(wc.exp, wc.split),
            run=lambda wc, output: str(Path(output.overrides).parent),
            saar="off",
        shell:
            "({params.cli} verl overrides --config {params.cfg} --stage eval --experiment {wildcards.exp} "
            "--seed {wildcards.seed} --output-dir {params.run} --val-files {input.data} "
            "--model-path {input.model} --n-samples {params.k} --saar {params.saar} --out {output.overrides} && "
            "{params.cli} verl train --overrides {output.overrides} --stage eval && "
            "{params.cli} verl eval-summary --generations {params.run}/generations --k {params.k} "
            "--saar {params.saar} --out {output.summary} --trajectories {output.trajectories}) > {log} 2>&1"

    use rule eval_sft as eval_sft_saar with:
        output:
            summary=f"{RES}/sft/eval_saar/{{split}}.json",
            trajectories=f"{RES}/sft/eval_saar/{{split}}.trajectories.jsonl",
            overrides=f"{RES}/sft/eval_saar/{{split}}_run/overrides.txt",
        log:
            f"{RES}/logs/eval/sft_saar_{{split}}.log",
        benchmark:
            f"{RES}/benchmarks/eval/sft_saar_{{split}}.tsv"
        params:
            cli=GPU_CLI,
            cfg=CONFIGFILE,
            experiment=EXPERIMENTS[0],
            k=lambda wc: eval_k(EXPERIMENTS[0], wc.split),
            model=lambda wc, input: rl_init_model_path(input),
            run=lambda wc, output: str(Path(output.overrides).parent),
            saar="on",

    use rule eval as eval_saar with:
        output:
            summary=f"{RES}/{{exp}}/seed{{seed}}/eval_saar/{{split}}.json",
            trajectories=f"{RES}/{{exp}}/seed{{seed}}/eval_saar/{{split}}.trajectories.jsonl",
            overrides=f"{RES}/{{exp}}/seed{{seed}}/eval_saar/{{split}}_run/overrides.txt",
        log:
            f"{RES}/logs/eval/{{exp}}_seed{{seed}}_saar_{{split}}.log",
        benchmark:
            f"{RES}/benchmarks/eval/{{exp}}_seed{{seed}}_saar_{{split}}.tsv"
        params:
            cli=GPU_CLI,
            cfg=CONFIGFILE,
            k=lambda wc: eval_k(wc.exp, wc.split),
            run=lambda wc, output: str(Path(output.overrides).parent),
            saar="on",


rule eval_summary:
    input:
        lambda wc: [f"{RES}/{wc.exp}/seed{wc.seed}/eval/{s}.json" for s in eval_splits()],
    output:
        f"{RES}/{{exp}}/seed{{seed}}/eval.json",
    log:
        f"{RES}/logs/eval/{{exp}}_seed{{seed}}_summary.log",
    benchmark:
        f"{RES}/benchmarks/eval/{{exp}}_seed{{seed}}_summary.tsv"
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/cpu.yaml"
    params:
        cli=CLI,
    shell:
        "{params.cli} report merge-eval --out {output} {input} > {log} 2>&1"


rule eval_saar_summary:
    input:
        lambda wc: [f"{RES}/{wc.exp}/seed{wc.seed}/eval_saar/{s}.json" for s in eval_splits()],
    output:
        f"{RES}/{{exp}}/seed{{seed}}/eval_saar.json",
    log:
        f"{RES}/logs/eval/{{exp}}_seed{{seed}}_saar_summary.log",
    benchmark:
        f"{RES}/benchmarks/eval/{{exp}}_seed{{seed}}_saar_summary.tsv"
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/cpu.yaml"
    params:
        cli=CLI,
    shell:
        "{params.cli} report merge-eval --out {output} {input} > {log} 2>&1"
