#!/usr/bin/env bash
# Regenerates the GPU envs' locks (envs/verl.lock, envs/eval.lock) from envs/<env>.in + pyproject.toml: every
# package at an exact version with its hashes, for CPython 3.12 on x86-64 Linux with glibc >= 2.34 (sglang 0.5.12
# ships manylinux_2_34 wheels only), then writes each lock's sha256 into envs/<env>.post-deploy.sh so Snakemake,
# which hashes the env file and its post-deploy script, builds a new env when a lock changes.
#   envs/lock.sh            (needs uv and PyPI; about 30 s per env)
#   envs/lock.sh stamp      (only the digests: after `make lock` changed requirements.lock, the CPU env's lock)
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
command -v "$UV" >/dev/null || UV=uv
stamp() {  # stamp <env> <lock file>
    sed -i "s/^LOCK_SHA256=.*/LOCK_SHA256=$(sha256sum "$2" | cut -d' ' -f1)/" "envs/$1.post-deploy.sh"
}
lock() {  # lock <env> [uv args...]
    local env=$1; shift
    # uv keeps an existing lock's versions where they still fit; a new lock starts from the CPU env's versions, so
    # the envs differ only where the GPU pins demand it.
    [ -f "envs/$env.lock" ] || cp requirements.lock "envs/$env.lock"
    "$UV" pip compile pyproject.toml "envs/$env.in" --generate-hashes --quiet \
        --python-version 3.12 --python-platform x86_64-manylinux_2_34 \
        --custom-compile-command "envs/lock.sh" "$@" -o "envs/$env.lock"
    stamp "$env" "envs/$env.lock"
    echo "envs/$env.lock: $(grep -c '^[a-z0-9].*==' "envs/$env.lock") packages pinned with hashes"
}
stamp cpu requirements.lock
if [ "${1:-}" != stamp ]; then
    lock verl --override envs/verl.overrides.txt
    lock eval
fi
