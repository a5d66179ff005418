#!/usr/bin/env bash
# End to end on a real SLURM: install slurm-wlm + munge (once), start the single-node cluster, run the smoke
# config with `--profile slurm` (every job an sbatch job), run the GPU/Ray check workflow, tear the cluster down.
#
#   scripts/slurm/e2e.sh [WORKDIR]      (root; CI runs it from .ci/run, bounded by `timeout -k`)
#
# Results go to WORKDIR (default: a fresh directory under /var/tmp), never to the checkout's results/.
# Exits non-zero when a job fails or an expected output or SLURM property is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
SNAKEMAKE=$ROOT/.venv/bin/snakemake
WORK=${1:-$(mktemp -d /var/tmp/cleaner-slurm-e2e.XXXXXX)}
mkdir -p "$WORK"
# Absolute: slurm-partition-config is resolved against the profile path, and -d moves the working directory.
PROFILES=(--profile "$ROOT/slurm" --profile "$ROOT/scripts/slurm/ci-profile")

log() { echo "e2e.sh: $*" >&2; }
t0=$(date +%s)

scripts/slurm/install.sh
trap 'scripts/slurm/cluster.sh stop' EXIT
scripts/slurm/cluster.sh start
t_up=$(date +%s)

log "smoke pipeline with --profile slurm in $WORK/smoke"
"$SNAKEMAKE" "${PROFILES[@]}" --configfile "$ROOT/config/smoke.yaml" -d "$WORK/smoke"
t_smoke=$(date +%s)

for f in report/final_metrics.csv report/final_metrics.md report/training_curves.png \
    baseline/seed0/eval.json cleaner/seed0/eval.json notool/seed0/eval.json sft/eval/test.json; do
    [[ -s $WORK/smoke/results/smoke/$f ]] || { log "missing output results/smoke/$f"; exit 1; }
done
# Every rule with a shell command ran as its own SLURM job and left its log (ci-profile keeps them).
n_logs=$(find "$WORK/smoke/.snakemake/slurm_logs" -name '*.log' | wc -l)
if ((n_logs < 14)); then
    log "expected >= 14 SLURM job logs for the 14 smoke jobs, found $n_logs"
    exit 1
fi
# ... and, having no GPUs, every one went to the CPU partition (slurm/partitions.yaml auto-selection).
ctld_log=${CLEANER_SLURM_DIR:-/var/tmp/cleaner-slurm}/log/slurmctld.log
n_cpu=$(grep -c "sched: Allocate .* Partition=cpu" "$ctld_log" || true)
n_gpu=$(grep -c "sched: Allocate .* Partition=gpu" "$ctld_log" || true)
if ((n_cpu < n_logs || n_gpu != 0)); then
    log "expected all $n_logs smoke jobs in partition cpu; slurmctld allocated cpu: $n_cpu, gpu: $n_gpu"
    exit 1
fi
log "smoke: $n_logs SLURM jobs, all in partition cpu"

log "GPU + Ray check (gpu=4, gpu_model=h200 -> partition gpu, 4 fake GPUs)"
"$SNAKEMAKE" "${PROFILES[@]}" -s scripts/slurm/gpu-check/Snakefile -d "$WORK/gpu-check"
grep -qx "partition=gpu cuda=0,1,2,3" "$WORK/gpu-check/gpu_job.txt" || {
    log "GPU job saw: $(cat "$WORK/gpu-check/gpu_job.txt")"
    exit 1
}
"$PY" - "$WORK/gpu-check/ray_job.json" <<'EOF'
import json, sys
info = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
assert info["nodes"] == 1 and info["resources"].get("GPU") == 4.0, info
EOF
t_gpu=$(date +%s)
log "timings (s): cluster up $((t_up - t0)), smoke $((t_smoke - t_up)), gpu+ray check $((t_gpu - t_smoke)), total $((t_gpu - t0))"
