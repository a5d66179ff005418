# RL per experiment x seed: GRPO/DAPO with (cleaner) or without (baseline) SAAR-purified rollouts.
# Embedded: outputs are final/ and summary.json only; checkpoints/ and metrics.jsonl beside them are not
# declared, so an interrupted job (kill -9) keeps its checkpoints and the rerun resumes from the newest one.
# verl: trainer.resume_mode=auto resumes from run/checkpoints the same way; an RL job killed at its walltime
# is resubmitted by Snakemake (retries) and resumes, so a run longer than one allocation needs no person.

if ENGINE == "embedded":

    rule rl:
        input:
            model=lambda wc: exp_sft_model(wc.exp),
            train=lambda wc: exp_rl_train_data(wc.exp),
            val=lambda wc: exp_data(wc.exp, "val"),
        output:
            model=directory(f"{RES}/{{exp}}/seed{{seed}}/rl/final"),
            summary=report(f"{RES}/{{exp}}/seed{{seed}}/rl/summary.json", caption="report/rl.rst", category="2. RL",
                           labels={"experiment": "{exp}", "seed": "{seed}"}),
        log:
            f"{RES}/logs/rl/{{exp}}_seed{{seed}}.log",
        benchmark:
            f"{RES}/benchmarks/rl/{{exp}}_seed{{seed}}.tsv"
        # One thread per job: on a 2-core machine two RL jobs side by side train faster than one with two threads
        # (a ~1M-parameter model cannot keep two threads busy; rollouts and tool calls interleave).
        threads: 1
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
            "--model {input.model} --data {input.train} --val {input.val} --out $(dirname {output.model}) "
            "--threads {threads} "
            "> {log} 2>&1"

else:

    rule rl:
        input:
            model=rl_init_model_input(),
            train=rl_train_data(),
            val=rl_val_data(),
        output:
            model=directory(f"{RES}/{{exp}}/seed{{seed}}/rl/final"),
            overrides=report(f"{RES}/{{exp}}/seed{{seed}}/rl/run/overrides.txt", caption="report/rl_verl.rst",
                             category="2. RL", labels={"experiment": "{exp}", "seed": "{seed}"}),
        log:
            f"{RES}/logs/rl/{{exp}}_seed{{seed}}.log",
        benchmark:
            f"{RES}/benchmarks/rl/{{exp}}_seed{{seed}}.tsv"
        threads: 16
        # A job that hits its walltime (verl.rl_job_hours) fails; Snakemake resubmits it up to verl.rl_job_retries
        # times and verl resumes from the newest checkpoint in run/checkpoints (trainer.resume_mode=auto).
        retries: config["verl"]["rl_job_retries"]
        resources:
            mem_mb=512000,
            runtime=int(config["verl"]["rl_job_hours"] * 60),
            **rl_gpu_resources(),
        conda:
            "../envs/verl.yaml"
        container:
            GPU_CONTAINER
        params:
            cli=GPU_CLI,
            cfg=CONFIGFILE,
            model=lambda wc, input: rl_init_model_path(input),
            run=lambda wc, output: str(Path(output.overrides).parent),
            launch=ray_launcher(),
        shell:
            "({params.cli} verl overrides --config {params.cfg} --stage rl --experiment {wildcards.exp} "
            "--seed {wildcards.seed} --output-dir {params.run} --model-path {params.model} "
            "--train-files {input.train} --val-files {input.val} --out {output.overrides} && "
            "{params.launch} {params.cli} verl train --overrides {output.overrides} --stage rl && "
            "{params.cli} verl convert {params.run}/checkpoints {output.model}) > {log} 2>&1"
