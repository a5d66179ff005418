#!/usr/bin/env bash
# GPU check of the embedded engine (run on a CUDA machine from the repo root, see docs/gpu.md):
#   1. `cleaner eval` of the testbed SFT model on CUDA, same config/seeds as the CPU run -> compare trajectories;
#   2. HFGenerator throughput: the testbed model (fp32) and random weights in Qwen3-0.6B's shapes (bf16).
# About 5 minutes on one H100 once the machine is up (docs/gpu.md has the numbers it gave).
# Inputs: .devcarry/{sft,test.parquet} (a copy of results/testbed/sft/final and data/test.parquet) and, where the
# machine lacks them, pure-Python packages in .devcarry/site and wheels in .devcarry/whl. Writes to ${OUT:-out}.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi -L; python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
if ls .devcarry/whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devcarry/whl/*.whl || exit 1
fi
export PYTHONPATH=$PWD/src:/tmp/site:$PWD/.devcarry/site PYTHONUNBUFFERED=1
python3 -c 'from cleaner.sandbox import run_python; r = run_python("print(6*7)", timeout_s=5, memory_mb=512); print("sandbox:", r.status, r.stdout.strip(), getattr(r, "isolation", ""))'
/usr/bin/time -v python3 -m cleaner eval --config config/config.yaml --experiment baseline --model .devcarry/sft \
  --data .devcarry/test.parquet --out "$OUT/sft_test_cuda.json" --trajectories "$OUT/sft_test_cuda.trajectories.jsonl" \
  --device cuda --threads 4 2>&1 | grep -vE "^\s+(Page|Volun|Invol|Swaps|File|Socket|Signals|Average|Exit|Minor|Major|Percent|System|User)" | tail -15
python3 benchmarks/bench_hf_generator.py --model .devcarry/sft --device cuda --batch 1,16,64,256 --json "$OUT/gen_testbed.json"
python3 benchmarks/bench_hf_generator.py --random qwen3-0.6b --device cuda --dtype bfloat16 --batch 1,256 --json "$OUT/gen_qwen3_0.6b.json"
