#!/usr/bin/env bash
# Installs the CPU env's packages into the env Snakemake just created from envs/cpu.yaml (copied to
# .snakemake/conda/<hash>.post-deploy.sh and run inside the env from Snakemake's working directory), exactly as
# `make install` fills .venv: torch 2.13.0's CPU build first, then requirements.lock hash-checked without
# resolution, then this package, editable, from CLEANER_WORKFLOW_DIR (rules/common.smk exports it; else the
# working directory). LOCK_SHA256 (envs/lock.sh writes it) ties the env's hash to requirements.lock.
set -euo pipefail
LOCK_SHA256=b3c2d42a95420b118da044cf9d7086fa5110ff693c5a39f3504628c6bbca5c53
TORCH=torch==2.13.0
TORCH_INDEX=${CLEANER_TORCH_INDEX-https://download.pytorch.org/whl/cpu}   # empty: pip's configured indexes
root=${CLEANER_WORKFLOW_DIR:-$PWD}
if ! grep -qs '^name = "cleaner"' "$root/pyproject.toml"; then
    echo "post-deploy: $root is not the cleaner workflow directory (no pyproject.toml of 'cleaner'); set" \
         "CLEANER_WORKFLOW_DIR to the repository root" >&2
    exit 1
fi
lock=$root/requirements.lock
if [ "$(sha256sum "$lock" | cut -d' ' -f1)" != "$LOCK_SHA256" ]; then
    echo "post-deploy: $lock does not match this script's LOCK_SHA256; run envs/lock.sh stamp" >&2
    exit 1
fi
python -m pip install --quiet ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH"
python -m pip install --quiet --require-hashes --no-deps -r "$lock"
python -m pip install --quiet --no-deps --no-build-isolation -e "$root"
python -m pip check
