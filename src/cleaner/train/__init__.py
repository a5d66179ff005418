"""Embedded trainers: cold-start SFT (:mod:`cleaner.train.sft`) and GRPO/DAPO RL (:mod:`cleaner.train.rl`)."""
