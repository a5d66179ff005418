#!/usr/bin/env bash
# Regenerates requirements.lock from pyproject.toml (`make lock`): every package of the CPU environment (the
# package's dependencies and its dev extra) at an exact version with its hashes, for CPython 3.11 on x86-64 Linux.
# torch is resolved (torch==2.13.0, the CPU build) but not written: the Makefile installs it first, pinned, from
# the CPU wheel; everything else is installed from this file with --require-hashes --no-deps.
# The last line records pyproject.toml's sha256, which scripts/env/check_lock.sh compares before every install.
set -euo pipefail
cd "$(dirname "$0")/../.."
UV=${UV:-.venv/bin/uv}
command -v "$UV" >/dev/null || UV=uv
find_links=()
[ -d /opt/wheels ] && find_links=(--find-links /opt/wheels)   # where this workplace keeps the torch CPU wheel
"$UV" pip compile pyproject.toml --extra dev --generate-hashes --quiet \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    "${find_links[@]}" --override <(echo "torch==2.13.0") --no-emit-package torch \
    --custom-compile-command "make lock" -o requirements.lock
echo "# pyproject-sha256: $(sha256sum pyproject.toml | cut -d' ' -f1)" >> requirements.lock
echo "requirements.lock: $(grep -c '^[a-z0-9].*==' requirements.lock) packages pinned with hashes (torch==2.13.0 installed first)"
