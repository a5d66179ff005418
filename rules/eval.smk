# Agentic evaluation (with the tool) of the SFT model and of every RL run on every eval split.


rule eval_sft:
    input:
        model=sft_model(),
        data=f"{RES}/data/{{split}}.parquet",
    output:
        summary=f"{RES}/sft/eval/{{split}}.json",
        trajectories=f"{RES}/sft/eval/{{split}}.trajectories.jsonl",
    log:
        f"{RES}/logs/eval/sft_{{split}}.log",
    benchmark:
        f"{RES}/benchmarks/eval/sft_{{split}}.tsv"
    threads: 1 if ENGINE == "embedded" else 16
    resources:
        mem_mb=3000,
        runtime=60,
        gpu=0 if ENGINE == "embedded" else 4,
    conda:
        "../envs/cpu.yaml" if ENGINE == "embedded" else "../envs/verl.yaml"
    params:
        cmd=EVAL_CMD,
        cfg=CONFIGFILE,
        experiment=EXPERIMENTS[0],
    shell:
        "{params.cmd} --config {params.cfg} --experiment {params.experiment} --model {input.model} "
        "--data {input.data} --out {output.summary} --trajectories {output.trajectories} --threads {threads} "
        "> {log} 2>&1"


rule eval:
    input:
        model=f"{RES}/{{exp}}/seed{{seed}}/rl/final",
        data=f"{RES}/data/{{split}}.parquet",
    output:
        summary=f"{RES}/{{exp}}/seed{{seed}}/eval/{{split}}.json",
        trajectories=f"{RES}/{{exp}}/seed{{seed}}/eval/{{split}}.trajectories.jsonl",
    log:
        f"{RES}/logs/eval/{{exp}}_seed{{seed}}_{{split}}.log",
    benchmark:
        f"{RES}/benchmarks/eval/{{exp}}_seed{{seed}}_{{split}}.tsv"
    threads: 1 if ENGINE == "embedded" else 16
    resources:
        mem_mb=3000,
        runtime=60,
        gpu=0 if ENGINE == "embedded" else 4,
    conda:
        "../envs/cpu.yaml" if ENGINE == "embedded" else "../envs/verl.yaml"
    params:
        cmd=EVAL_CMD,
        cfg=CONFIGFILE,
    shell:
        "{params.cmd} --config {params.cfg} --experiment {wildcards.exp} --model {input.model} "
        "--data {input.data} --out {output.summary} --trajectories {output.trajectories} --threads {threads} "
        "> {log} 2>&1"


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
