#!/usr/bin/env bash
# The one-GPU check of the paper config's actor memory and speed (scripts/device/h200_check.py; docs/gpu.md).
# Run on the device machine from the repo root:  bash scripts/device/h200_check.sh [--quick] [h200_check.py args]
# Writes $OUT/h200_check.json and $OUT/h200_check.log (OUT defaults to ./out). The Python script keeps to its own
# --budget-s (330 s); the timeout below is the backstop that still leaves the JSON written after each step.
set -uo pipefail
OUT=${OUT:-out}; export OUT; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then   # wheels carried for packages the machine lacks (docstring of the .py)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "h200_check.sh: installing .whl/*.whl failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not available"
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}  # as verl trains
timeout -k 10 390 python3 scripts/device/h200_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/h200_check.log"
exit "${PIPESTATUS[0]}"
