"""CLEANER reproduction: self-purified trajectories for agentic RL (arXiv 2601.15141)."""

from cleaner.cpu_isa import pin_cpu_isa

pin_cpu_isa()  # before torch runs any kernel: the same numbers on every x86-64 machine (see cleaner.cpu_isa)

__version__ = "0.1.0"
