# Report: final metrics table (CSV + markdown, mean and spread over seeds) and training curves.


rule report:
    input:
        evals=lambda wc: [f"{RES}/{e}/seed{s}/eval.json" for e in EXPERIMENTS for s in exp_seeds(e)],
        sft_evals=[f"{RES}/sft/eval/{s}.json" for s in eval_splits()],
        rl=rl_outputs(),
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
