# Report: final metrics (CSV + markdown, mean and 95% CI over seeds), training curves, the html page index.html
# (everything, self-contained) and, with real data, lm-evaluation-harness scores of the no-tool arms.
# Outputs marked report(...) appear in `snakemake --report report.zip` (captions: rules/report/*.rst).


rule lm_eval:
    input:
        model=f"{RES}/{{exp}}/seed{{seed}}/rl/final",
        data=expand(f"{RES}/data/lm_eval/{{task}}.jsonl", task=LM_EVAL_TASKS),
    output:
        report(f"{RES}/{{exp}}/seed{{seed}}/lm_eval.json", caption="report/lm_eval.rst", category="3. Evaluation",
               subcategory="lm-evaluation-harness", labels={"experiment": "{exp}", "seed": "{seed}"}),
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
        csv=report(f"{RES}/report/final_metrics.csv", caption="report/final_metrics.rst", category="1. Report"),
        md=f"{RES}/report/final_metrics.md",
        fig=report(f"{RES}/report/training_curves.png", caption="report/training_curves.rst", category="1. Report"),
        html=report(f"{RES}/report/index.html", caption="report/index.rst", category="1. Report"),
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
        "{params.cli} report build --config {params.cfg} --results {params.res} --out-dir $(dirname {output.csv}) "
        "> {log} 2>&1"
