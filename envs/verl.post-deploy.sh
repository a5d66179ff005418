#!/usr/bin/env bash
# Installs the GPU env's packages into the env Snakemake just created from envs/verl.yaml (Snakemake copies this
# script to .snakemake/conda/<hash>.post-deploy.sh and runs it inside the env; the working directory is
# Snakemake's). The Apptainer recipe runs the same script (envs/apptainer/verl.def).
#   1. envs/verl.lock, hash-checked and without resolution (--no-deps): the lock is resolved with verl's own
#      overrides (envs/verl.overrides.txt), which pip's resolver cannot express;
#   2. flash-attn 2.8.3 prebuilt for CUDA 13.0 / torch 2.11 / CPython 3.12 from verl's wheelhouse, never built
#      from source (--only-binary);
#   3. this package, editable, from the workflow directory: CLEANER_WORKFLOW_DIR (rules/common.smk exports it),
#      else the working directory.
# LOCK_SHA256 is envs/verl.lock's digest (envs/lock.sh writes it): a new lock changes this script, and with it the
# env's hash, so Snakemake builds a new env instead of reusing the old one.
set -euo pipefail
LOCK_SHA256=981c0e258447050cfd36a378e40b061c2a8d9e3ee7ba300a7e4918fdecad0d97
FLASH_ATTN=flash-attn==2.8.3
WHEELHOUSE=${CLEANER_FLASH_ATTN_INDEX:-https://verl-project.github.io/verl-wheelhouse/simple/}
root=${CLEANER_WORKFLOW_DIR:-$PWD}
if ! grep -qs '^name = "cleaner"' "$root/pyproject.toml"; then
    echo "post-deploy: $root is not the cleaner workflow directory (no pyproject.toml of 'cleaner'); set" \
         "CLEANER_WORKFLOW_DIR to the repository root" >&2
    exit 1
fi
lock=$root/envs/verl.lock
if [ "$(sha256sum "$lock" | cut -d' ' -f1)" != "$LOCK_SHA256" ]; then
    echo "post-deploy: $lock does not match this script's LOCK_SHA256; run envs/lock.sh" >&2
    exit 1
fi
python -m pip install --quiet --require-hashes --no-deps -r "$lock"
python -m pip install --quiet --no-deps --only-binary flash-attn --extra-index-url "$WHEELHOUSE" "$FLASH_ATTN"
python -m pip install --quiet --no-deps --no-build-isolation -e "$root"
python -c "import torch, verl, sglang, flash_attn, cleaner.engines.verl.agent_loop"
