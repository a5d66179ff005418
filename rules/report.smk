# Report: final metrics table (CSV + markdown, mean and spread over seeds), training curves, and (real data)
# lm-evaluation-harness scores of the no-tool arms.


rule lm_eval:
    input:
        model=f"{RES}/{{exp}}/seed{{seed}}/rl/final",
        data=expand(f"{RES}/data/lm_eval/{{task}}.jsonl", task=LM_EVAL_TASKS),
    output:
        f"{RES}/{{exp}}/seed{{seed}}/lm_eval.json",
    log:
        f"{RES}/logs/lm_eval/{{exp}}_seed{{seed}}.log",
    benchmark:
        f"{RES}/benchmarks/lm_eval/{{exp}}_seed{{seed}}.tsv"
    threads: 8
    resources:
        mem_mb=64000,
        runtime=12 * 60,
        gpu=1,
        gpu_model="h200",
    conda:
        "../envs/eval.yaml"
    params:
        cli=CLI,
        cfg=CONFIGFILE,
        tasks=",".join(LM_EVAL_TASKS),
        files=lambda wc, input: " ".join(f"--data-file {t}={f}" for t, f in zip(LM_EVAL_TASKS, input.data)),
    shell:
        "{params.cli} data lm-eval --config {params.cfg} --model {input.model} --tasks {params.tasks} "
        "{params.files} --out {output} > {log} 2>&1"


rule report:
    input:
        **report_inputs(),
    output:
        csv=f"{RES}/report/final_metrics.csv",
        md=f"{RES}/report/final_metrics.md",
        fig=f"{RES}/report/training_curves.png",
    log:
        f"{RES}/logs/report/report.log",
    benchmark:
        f"{RES}/benchmarks/report/report.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/cpu.yaml"
    params:
        cli=CLI,
        cfg=CONFIGFILE,
        res=lambda wildcards, input: str(Path(input.sft_evals[0]).parents[2]),
    shell:
        "{params.cli} report build --config {params.cfg} --results {params.res} --out-dir $(dirname {output.csv}) > {log} 2>&1"
