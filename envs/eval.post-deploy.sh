#!/usr/bin/env bash
# Installs the lm-evaluation-harness env's packages into the env Snakemake just created from envs/eval.yaml
# (copied to .snakemake/conda/<hash>.post-deploy.sh and run inside the env from Snakemake's working directory):
# envs/eval.lock hash-checked, then this package, editable, from CLEANER_WORKFLOW_DIR (rules/common.smk exports
# it; else the working directory). LOCK_SHA256 (written by envs/lock.sh) ties the env's hash to the lock.
set -euo pipefail
LOCK_SHA256=ff610fc445a1ac4d98cef20b3cb9f9d64662eca663baf8481fd2b6a69141d881
root=${CLEANER_WORKFLOW_DIR:-$PWD}
if ! grep -qs '^name = "cleaner"' "$root/pyproject.toml"; then
    echo "post-deploy: $root is not the cleaner workflow directory (no pyproject.toml of 'cleaner'); set" \
         "CLEANER_WORKFLOW_DIR to the repository root" >&2
    exit 1
fi
lock=$root/envs/eval.lock
if [ "$(sha256sum "$lock" | cut -d' ' -f1)" != "$LOCK_SHA256" ]; then
    echo "post-deploy: $lock does not match this script's LOCK_SHA256; run envs/lock.sh" >&2
    exit 1
fi
python -m pip install --quiet --require-hashes --no-deps -r "$lock"
python -m pip install --quiet --no-deps --no-build-isolation -e "$root"
python -m pip check
