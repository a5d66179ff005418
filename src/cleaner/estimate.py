"""Expected wall time of an embedded (testbed) run before it starts, from per-stage times measured on 2 cores.

Used by ``scripts/estimate_wall_time.py`` (a whole config from scratch) and by the Snakefile's ``onstart`` (the jobs
this invocation will actually run, so a resumed grid prints only what is left).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

__all__ = ["DEFAULTS", "plan_seconds", "rl_run_seconds"]

# Measured on the 2-core machine (README: SFT 7-9 min alone, data about 1 min, an eval of 200 x 4 about 2.5 min;
# RL steps about 8-9 s with two RL jobs side by side, validation included).
DEFAULTS = {"data_s": 60.0, "sft_s": 7 * 60.0, "eval_s": 150.0, "step_s": 9.0, "update_share": 0.45}


def rl_run_seconds(resolved: Mapping[str, Any], *, step_s: float = DEFAULTS["step_s"],
                   update_share: float = DEFAULTS["update_share"]) -> float:
    """One RL run of a resolved experiment: steps x seconds per step; arms with several optimiser updates per step
    add one no-grad log-prob pass (a third of an update)."""
    rl = resolved["rl"]
    updates = rl["ppo_epochs"] * max(1, rl["batch_prompts"] // rl["mini_batch_prompts"])
    return rl["steps"] * step_s * (1 + (update_share / 3 if updates > 1 else 0.0))


def plan_seconds(jobs: Iterable[tuple[str, Mapping[str, str]]], config: Mapping[str, Any], *, cores: int,
                 step_s: float = DEFAULTS["step_s"]) -> dict[str, float]:
    """Seconds per stage of the given (rule name, wildcards) jobs; RL and eval jobs take one core each, so they run
    ``cores`` at a time; data and SFT take all cores. Rules that cost seconds (summaries, report) count 0."""
    from cleaner.config import resolve_experiment

    stages = {"data": 0.0, "sft": 0.0, "rl": 0.0, "eval": 0.0}
    for rule, wc in jobs:
        if rule.startswith("testbed_data"):
            stages["data"] += DEFAULTS["data_s"]
        elif rule in ("sft", "sft_regime"):
            stages["sft"] += DEFAULTS["sft_s"]
        elif rule == "rl":
            stages["rl"] += rl_run_seconds(resolve_experiment(config, wc["exp"]), step_s=step_s) / cores
        elif rule.startswith("eval") and not rule.endswith("summary"):
            stages["eval"] += DEFAULTS["eval_s"] / cores
    stages["total"] = sum(stages.values())
    return stages
