#!/usr/bin/env bash
# Fails when requirements.lock was generated from another pyproject.toml than the one checked out.
set -euo pipefail
cd "$(dirname "$0")/../.."
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
have=$(sed -n 's/^# pyproject-sha256: //p' requirements.lock 2>/dev/null | tail -1)
if [ "$want" != "$have" ]; then
    echo "requirements.lock is out of date with pyproject.toml (lock: ${have:-none}, pyproject.toml: $want)." >&2
    echo "Run 'make lock' to regenerate it, then commit both files." >&2
    exit 1
fi
