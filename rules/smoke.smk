# paper_smoke (verl engine): every GPU stage of the config on a handful of rows with the real model, on one node:
# SFT (one step + conversion), the 7B difficulty rollouts, one RL step per arm (+ conversion) and one evaluation
# per benchmark (SAAR at test time on when the config evaluates with it). What a user runs first on a new site: a
# broken driver, template or memory budget shows up in minutes. `cleaner verl overrides --smoke` shrinks each stage
# (engines/verl/overrides.py: smoke_overrides).

if ENGINE == "verl":

    rule smoke_sft:
        input:
            data=sft_data(),
        output:
            model=directory(f"{SMOKE}/sft/final"),
            overrides=f"{SMOKE}/sft/run/overrides.txt",
        log:
            f"{RES}/logs/paper_smoke/sft.log",
        benchmark:
            f"{RES}/benchmarks/paper_smoke/sft.tsv"
        threads: 16
        resources:
            mem_mb=256000,
            runtime=60,
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
            "({params.cli} verl overrides --config {params.cfg} --stage sft --smoke --output-dir {params.run} "
            "--train-files {input.data} --out {output.overrides} && "
            "{params.cli} verl train --overrides {output.overrides} --stage sft && "
            "{params.cli} verl convert {params.run}/checkpoints {output.model}) > {log} 2>&1"

    rule smoke_difficulty:
        input:
            model=smoke_init_model(),
            train=f"{RES}/data/train.parquet",
        output:
            counts=f"{SMOKE}/difficulty/pass_counts.json",
            overrides=f"{SMOKE}/difficulty/run/overrides.txt",
        log:
            f"{RES}/logs/paper_smoke/difficulty.log",
        benchmark:
            f"{RES}/benchmarks/paper_smoke/difficulty.tsv"
        threads: 16
        resources:
            mem_mb=256000,
            runtime=60,
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
            model=lambda wc, input: smoke_init_path(input),
            run=lambda wc, output: str(Path(output.overrides).parent),
            saar="off",  # as difficulty_rollouts
        shell:
            "({params.cli} verl overrides --config {params.cfg} --stage eval --smoke --experiment {params.experiment} "
            "--n-samples 2 --drop-overlong-prompts --output-dir {params.run} --val-files {input.train} "
            "--model-path {params.model} --saar {params.saar} --out {output.overrides} && "
            "{params.cli} verl train --overrides {output.overrides} --stage eval && "
            "{params.cli} verl pass-counts --generations {params.run}/generations --data {input.train} "
            "--model {params.model} --out {output.counts}) > {log} 2>&1"

    rule smoke_rl:
        input:
            model=smoke_init_model(),
            train=f"{RES}/data/train.parquet",
            val=rl_val_data(),
        output:
            model=directory(f"{SMOKE}/{{exp}}/rl/final"),
            overrides=f"{SMOKE}/{{exp}}/rl/run/overrides.txt",
        log:
            f"{RES}/logs/paper_smoke/rl_{{exp}}.log",
        benchmark:
            f"{RES}/benchmarks/paper_smoke/rl_{{exp}}.tsv"
        threads: 16
        resources:
            mem_mb=512000,
            runtime=60,
            gpu=lambda wc: config["verl"]["n_gpus_per_node"],
            gpu_model="h200",
        conda:
            "../envs/verl.yaml"
        container:
            GPU_CONTAINER
        params:
            cli=GPU_CLI,
            cfg=CONFIGFILE,
            model=lambda wc, input: smoke_init_path(input),
            run=lambda wc, output: str(Path(output.overrides).parent),
        shell:
            "({params.cli} verl overrides --config {params.cfg} --stage rl --smoke --experiment {wildcards.exp} "
            "--output-dir {params.run} --model-path {params.model} --train-files {input.train} "
            "--val-files {input.val} --out {output.overrides} && "
            "{params.cli} verl train --overrides {output.overrides} --stage rl && "
            "{params.cli} verl convert {params.run}/checkpoints {output.model}) > {log} 2>&1"

    rule smoke_eval:
        input:
            model=smoke_eval_model(),
            data=f"{RES}/data/{{split}}.parquet",
        output:
            summary=f"{SMOKE}/eval/{{split}}.json",
            trajectories=f"{SMOKE}/eval/{{split}}.trajectories.jsonl",
            overrides=f"{SMOKE}/eval/{{split}}_run/overrides.txt",
        log:
            f"{RES}/logs/paper_smoke/eval_{{split}}.log",
        benchmark:
            f"{RES}/benchmarks/paper_smoke/eval_{{split}}.tsv"
        threads: 16
        resources:
            mem_mb=256000,
            runtime=60,
            gpu=lambda wc: config["verl"]["n_gpus_per_node"],
            gpu_model="h200",
        conda:
            "../envs/verl.yaml"
        container:
            GPU_CONTAINER
        params:
            cli=GPU_CLI,
            cfg=CONFIGFILE,
            experiment=smoke_eval_model().split("/")[-3],
            run=lambda wc, output: str(Path(output.overrides).parent),
            # SAAR on when the config evaluates with it: rollback at test time is the path the RL smoke runs skip.
            saar="on" if saar_eval_experiments() else "off",
        shell:
            "({params.cli} verl overrides --config {params.cfg} --stage eval --smoke "
            "--experiment {params.experiment} --output-dir {params.run} --val-files {input.data} "
            "--model-path {input.model} --n-samples 1 --saar {params.saar} --out {output.overrides} && "
            "{params.cli} verl train --overrides {output.overrides} --stage eval && "
            "{params.cli} verl eval-summary --generations {params.run}/generations --k 1 "
            "--saar {params.saar} --out {output.summary} --trajectories {output.trajectories}) > {log} 2>&1"
