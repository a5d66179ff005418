"""verl 0.9.1 adapter: CLEANER's agent loop, tool, reward hook and Hydra-override builder (docs/verl.md).

Modules (import the one you need; this package itself imports neither verl nor torch):

- :mod:`.agent_loop` -- ``cleaner_tool_agent``: verl ``AgentLoopBase`` running :func:`cleaner.agent.run_agent`.
- :mod:`.tool` -- ``CodeInterpreterTool``: verl ``BaseTool`` over :mod:`cleaner.sandbox` (both arms use it).
- :mod:`.reward` -- ``compute_score`` (verl ``custom_reward_function``) and ``CleanerRewardManager`` (DAPO
  overlong penalty + the agent's SAAR statistics in the reward's extra info).
- :mod:`.overrides` -- experiment of our config -> Hydra overrides for ``verl.trainer.main_ppo`` (RL, eval) and
  ``verl.trainer.sft_trainer`` (SFT); composition against verl's own config.
- :mod:`.convert` -- FSDP checkpoint -> Hugging Face directory (verl's model merger).
- :mod:`.cli` -- ``cleaner verl overrides|train|convert``.

``agent_loops.yaml`` (for ``actor_rollout_ref.rollout.agent.agent_loop_config_path``) and ``tool_config.yaml``
(for ``multi_turn.tool_config_path``, paper settings) ship with the package; :func:`package_file` finds them.
"""

from __future__ import annotations

from pathlib import Path

AGENT_NAME = "cleaner_tool_agent"
"""Name of CLEANER's agent loop in verl's registry and in ``agent_loops.yaml``."""
TOOL_NAME = "code_interpreter"
STAT_PREFIX = "cleaner/"
"""Prefix of the agent's per-trajectory statistics in verl's extra fields and reward extra info."""

__all__ = ["AGENT_NAME", "STAT_PREFIX", "TOOL_NAME", "package_file"]


def package_file(name: str) -> Path:
    """Absolute path of a file shipped in this package (``agent_loops.yaml``, ``tool_config.yaml``)."""
    path = Path(__file__).resolve().parent / name
    if not path.is_file():
        raise FileNotFoundError(f"cleaner.engines.verl has no file {name!r}")
    return path
