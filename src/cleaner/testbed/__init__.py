"""The embedded testbed ("toolcalc"): problems a tiny model must solve with the Python tool, SFT trajectories with
real errors and self-corrections, a locally trained tokenizer and a tiny Qwen3 model -- the whole CLEANER method
on a laptop CPU."""
