# Helpers shared by all rules: config validation (JSON schema with defaults), paths, wildcard constraints.
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The package's validation first: one line per bad field ("rl.clip_ratio_c: 0.5 is less than ..."), and every
# experiment checked again after its overrides are merged. Then Snakemake's own, against the same schema file.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))
# envs/*.post-deploy.sh install this package (and read the env locks) from here when Snakemake builds a conda env.
# (A write for the jobs, not a read of the user's environment, so no `envvars:` assertion.)
os.environ.update(CLEANER_WORKFLOW_DIR=str(Path(workflow.basedir).resolve()))
from cleaner.config import resolve_experiment, validate_config  # noqa: E402

validate_config(config)
validate(config, "../config/schema.yaml")
if config["engine"] == "embedded" and config["data"]["source"] != "testbed":
    raise ValueError("config: engine 'embedded' trains the testbed model; use engine 'verl' for data.source 'real'")

NAME = config["name"]
# Apptainer image for the GPU rules (used with --sdm apptainer; envs/apptainer/verl.def builds one).
GPU_CONTAINER = (config.get("verl") or {}).get("container")
RES = f"results/{NAME}"
EXPERIMENTS = list(config["experiments"])
ENGINE = config["engine"]

DEPLOYMENT = {str(m).lower().rsplit(".", 1)[-1] for m in workflow.deployment_settings.deployment_method}


def _cli(*, gpu=False):
    """How rules call the package: the interpreter running Snakemake, or the job's own env (--sdm conda; GPU rules
    also under --sdm apptainer, inside verl.container)."""
    own_env = "conda" in DEPLOYMENT or (gpu and "apptainer" in DEPLOYMENT and GPU_CONTAINER)
    return "python -m cleaner" if own_env else f"{sys.executable} -m cleaner"


CLI = _cli()
GPU_CLI = _cli(gpu=True)
GPU_RULES = {"sft", "rl", "eval", "eval_sft", "eval_saar", "eval_sft_saar", "difficulty_rollouts", "smoke_sft",
             "smoke_rl", "smoke_eval", "smoke_difficulty"}


def gpu_env_problem(planned_rules):
    """Why the planned verl GPU jobs would fail at once (None when they can run): without --sdm conda / apptainer
    they run `cleaner verl train` in the interpreter running Snakemake, which needs the rollout engine."""
    from importlib.util import find_spec

    gpu = sorted(set(planned_rules) & GPU_RULES)
    if ENGINE != "verl" or not gpu:
        return None
    if "apptainer" in DEPLOYMENT and not GPU_CONTAINER:
        return "--sdm apptainer needs verl.container (an image built from envs/apptainer/verl.def) in the config"
    if "conda" in DEPLOYMENT or "apptainer" in DEPLOYMENT:
        return None
    engine = config["verl"]["rollout_name"]
    if find_spec(engine) is None or find_spec("verl") is None:
        return (f"the GPU jobs {gpu} would run `cleaner verl train` with {sys.executable}, whose environment "
                f"lacks {engine!r} (or verl), and exit 2 inside each job. Add --sdm conda (envs/verl.yaml) or "
                "--sdm apptainer (with verl.container set), or run Snakemake from an environment with verl and "
                f"{engine} installed")
    return None


# Checked after the DAG is built and before any job is submitted (onstart does not run for dry runs).
onstart:
    problem = gpu_env_problem(job.rule.name for job in workflow.dag.needrun_jobs())
    if problem:
        raise WorkflowError(f"config {CONFIGFILE}: {problem}")
    if ENGINE == "embedded":  # the expected wall time of what this invocation will run (resumed runs: what is left)
        from cleaner.estimate import plan_seconds

        _plan = plan_seconds([(j.rule.name, dict(j.wildcards)) for j in workflow.dag.needrun_jobs()], config,
                             cores=max(1, workflow.cores or 1))
        print(f"expected wall time on {workflow.cores} cores (2-core measurements, cleaner.estimate): "
              f"{_plan['total'] / 3600:.2f} h (" + ", ".join(f"{k} {v / 60:.0f} min" for k, v in _plan.items()
              if k != "total" and v) + ")", file=sys.stderr)
EVAL_CMD = f"{CLI} eval" if ENGINE == "embedded" else f"{CLI} verl eval"
if len(workflow.overwrite_configfiles) > 1:
    raise ValueError("pass one --configfile: the pipeline's CLI reads exactly the file Snakemake validated")
if workflow.config_settings.config:
    raise ValueError("--config KEY=VALUE overrides are not supported: the rules' CLI would not see them; "
                     "copy the config file and edit it instead")
CONFIGFILE = workflow.overwrite_configfiles[0] if workflow.overwrite_configfiles else "config/config.yaml"


REGIMES = list(config.get("regimes") or {})

wildcard_constraints:
    exp="|".join(EXPERIMENTS),
    regime="|".join(REGIMES) or "(?!)",  # no regimes: the regime rules match nothing
    seed=r"\d+",
    split=r"[A-Za-z0-9_.-]+",


def exp_seeds(exp):
    return resolve_experiment(config, exp)["seeds"]


def regime_of(exp):
    """The experiment's testbed data regime (None: the config's own testbed section)."""
    return (config["experiments"][exp] or {}).get("regime")


def branch(regime):
    """Where a regime's data, model init and SFT live: results/<name>/ itself, or results/<name>/regimes/<r>/."""
    return RES if regime is None else f"{RES}/regimes/{regime}"


def used_regimes():
    return sorted({r for e in EXPERIMENTS if (r := regime_of(e)) is not None})


def exp_sft_model(exp):
    return f"{branch(regime_of(exp))}/sft/final"


def exp_data(exp, split):
    return f"{branch(regime_of(exp))}/data/{split}.parquet"


def exp_rl_train_data(exp):
    return rl_train_data() if regime_of(exp) is None else exp_data(exp, "train")


def eval_splits():
    return config["eval"]["splits"]


def sft_data():
    return f"{RES}/data/sft.jsonl" if config["data"]["source"] == "testbed" else f"{RES}/data/sft.parquet"


def data_outputs():
    return [f"{RES}/data/train.parquet", sft_data()] + [
        f"{RES}/data/{s}.parquet" for s in eval_splits()
    ]


def sft_model():
    return f"{RES}/sft/final"


def rl_outputs():
    return [f"{RES}/{e}/seed{s}/rl/final" for e in EXPERIMENTS for s in exp_seeds(e)]


LM_EVAL_TASKS = ["aime24", "aime25", "gpqa_diamond_cot_zeroshot"]


def notool_runs():
    """(experiment, seed) of the no-tool arms: lm-evaluation-harness scores them on its own tasks."""
    return [(e, s) for e in EXPERIMENTS for s in exp_seeds(e)
            if not resolve_experiment(config, e)["rollout"]["tools_enabled"]]


def lm_eval_outputs():
    if config["data"]["source"] != "real":
        return []
    return [f"{RES}/{e}/seed{s}/lm_eval.json" for e, s in notool_runs()]


def eval_k(exp, split=None):
    """Samples per problem of one experiment on one split (eval.k_per_split, else eval.k)."""
    ev = resolve_experiment(config, exp)["eval"]
    return (ev.get("k_per_split") or {}).get(split, ev["k"])


def rl_val_data():
    """The RL run's validation sets: verl.val_splits (the reference: AIME25 + AIME24), else the first eval split."""
    splits = (config.get("verl") or {}).get("val_splits") or eval_splits()[:1]
    return [f"{RES}/data/{s}.parquet" for s in splits]


def rl_train_data():
    """The RL prompts: the mix, or its difficulty-filtered subset (Qwen2.5-7B recipe)."""
    if config["data"].get("apply_difficulty_filter"):
        return f"{RES}/data/train.filtered.parquet"
    return f"{RES}/data/train.parquet"


def rl_init_model_input():
    """RL starts from the SFT stage's output, or from verl.sft_model_path (an HF id or directory) when set."""
    return [] if (config.get("verl") or {}).get("sft_model_path") else [sft_model()]


def rl_init_model_path(input):
    return config["verl"]["sft_model_path"] or input.model


def rl_gpu_resources():
    """GPUs of an RL job. One node: `gpu` + `gpu_model` (the plugin's --gpus). Several nodes: --gpus would count
    GPUs per job, not per node, so ask for generic resources per node instead (--gres=gpu:h200:N --nodes=M)."""
    n, nodes = config["verl"]["n_gpus_per_node"], config["verl"]["nnodes"]
    if nodes > 1:
        return {"gres": f"gpu:h200:{n}", "nodes": nodes}
    return {"gpu": n, "gpu_model": "h200", "nodes": 1}


def ray_launcher():
    """Multi-node RL starts a Ray cluster across the SLURM allocation first; single-node runs need none."""
    if (config.get("verl") or {}).get("nnodes", 1) > 1:
        return f"bash {workflow.basedir}/scripts/slurm/ray_on_slurm.sh --"
    return ""


def saar_eval_experiments():
    """Experiments also evaluated with SAAR on at test time (eval_saar/ beside eval/, either engine): the tool arms
    with eval.saar_at_test_time (without the tool a SAAR-on run would repeat the SAAR-off one)."""
    resolved = {e: resolve_experiment(config, e) for e in EXPERIMENTS}
    return [e for e, r in resolved.items() if r["eval"]["saar_at_test_time"] and r["rollout"]["tools_enabled"]]


def eval_saar_outputs():
    runs = [f"{RES}/{e}/seed{s}/eval_saar.json" for e in saar_eval_experiments() for s in exp_seeds(e)]
    sft = [f"{RES}/sft/eval_saar/{split}.json" for split in eval_splits()] if runs else []
    sft += [f"{branch(r)}/sft/eval_saar/{split}.json" for r in used_regimes() for split in eval_splits()
            if any(regime_of(e) == r for e in saar_eval_experiments())]
    return runs + sft


def regime_sft_evals():
    return [f"{branch(r)}/sft/eval/{split}.json" for r in used_regimes() for split in eval_splits()]


def eval_outputs():
    return [f"{RES}/{e}/seed{s}/eval.json" for e in EXPERIMENTS for s in exp_seeds(e)] + [
        f"{RES}/sft/eval/{split}.json" for split in eval_splits()
    ] + regime_sft_evals() + eval_saar_outputs()


def report_inputs():
    return {
        "evals": [f"{RES}/{e}/seed{s}/eval.json" for e in EXPERIMENTS for s in exp_seeds(e)],
        "sft_evals": [f"{RES}/sft/eval/{s}.json" for s in eval_splits()],
        "saar_evals": eval_saar_outputs(),
        "regime_sft_evals": regime_sft_evals(),
        "rl": rl_outputs(),
        "lm_eval": lm_eval_outputs(),
    }


def report_outputs():
    return [f"{RES}/report/final_metrics.csv", f"{RES}/report/final_metrics.md", f"{RES}/report/training_curves.png"]


# paper_smoke (rules/smoke.smk)
SMOKE = f"{RES}/paper_smoke"


def smoke_arms():
    """One experiment per arm of the comparison (the first of each: tools baseline, CLEANER, no tool)."""
    first = {}
    for exp in EXPERIMENTS:
        resolved = resolve_experiment(config, exp)
        arm = "notool" if not resolved["rollout"]["tools_enabled"] else (
            "cleaner" if resolved["saar"]["enabled"] else "tools")
        first.setdefault(arm, exp)
    return first


def smoke_init_model():
    return [] if config["verl"]["sft_model_path"] else [f"{SMOKE}/sft/final"]


def smoke_init_path(input):
    return config["verl"]["sft_model_path"] or input.model


def smoke_eval_model():
    arms = smoke_arms()
    return f"{SMOKE}/{arms.get('cleaner', next(iter(arms.values())))}/rl/final"


def smoke_outputs():
    out = [f"{SMOKE}/{exp}/rl/final" for exp in smoke_arms().values()]
    out += [f"{SMOKE}/eval/{split}.json" for split in eval_splits()]
    if config["data"].get("apply_difficulty_filter"):
        out.append(f"{SMOKE}/difficulty/pass_counts.json")
    return out
