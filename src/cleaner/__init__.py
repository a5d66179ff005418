"""CLEANER reproduction: self-purified trajectories for agentic RL (arXiv 2601.15141)."""

__version__ = "0.1.0"
