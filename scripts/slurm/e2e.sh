#!/usr/bin/env bash
# End to end on a real SLURM (CI: .ci/run, bounded by `timeout -k`; needs root):
#   1. install slurm-wlm + munge (once, quietly) and start a single-node cluster with 4 fake H200 GPUs;
#   2. run the smoke config with `--profile slurm` (every job its own sbatch job; all must land in `cpu`);
#   3. ask slurmctld (sbatch --test-only) whether the verl fixture's paper-scale GPU requests are schedulable;
#   4. restart as a 2-node cluster and run scripts/slurm/gpu-check/Snakefile: a GPU job lands in `gpu` with
#      4 GPUs, and ray_on_slurm.sh brings up Ray on 1 and on 2 nodes;
#   5. stop every daemon it started (also on failure or interruption).
#
#   scripts/slurm/e2e.sh [WORKDIR]
#
# Results go to WORKDIR (default: a fresh directory under /var/tmp), never to the checkout's results/.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
SNAKEMAKE=$ROOT/.venv/bin/snakemake
WORK=${1:-$(mktemp -d /var/tmp/cleaner-slurm-e2e.XXXXXX)}
mkdir -p "$WORK"
# Absolute: slurm-partition-config is resolved against the profile path, and -d moves the working directory.
PROFILES=(--profile "$ROOT/slurm" --profile "$ROOT/scripts/slurm/ci-profile")
CTLD_LOG=${CLEANER_SLURM_DIR:-/var/tmp/cleaner-slurm}/log/slurmctld.log

log() { echo "e2e.sh: $*" >&2; }
t0=$(date +%s)

scripts/slurm/install.sh
trap 'scripts/slurm/cluster.sh stop' EXIT
scripts/slurm/cluster.sh stop >/dev/null 2>&1 || true
scripts/slurm/cluster.sh start 1
t_up=$(date +%s)

log "smoke pipeline with --profile slurm in $WORK/smoke"
"$SNAKEMAKE" "${PROFILES[@]}" --configfile "$ROOT/config/smoke.yaml" -d "$WORK/smoke"
t_smoke=$(date +%s)

for f in report/final_metrics.csv report/final_metrics.md report/training_curves.png \
    baseline/seed0/eval.json cleaner/seed0/eval.json notool/seed0/eval.json sft/eval/test.json; do
    [[ -s $WORK/smoke/results/smoke/$f ]] || { log "missing output results/smoke/$f"; exit 1; }
done
# Every rule with a shell command ran as its own SLURM job and left its log (ci-profile keeps them) ...
n_logs=$(find "$WORK/smoke/.snakemake/slurm_logs" -name '*.log' | wc -l)
if ((n_logs < 14)); then
    log "expected >= 14 SLURM job logs for the 14 smoke jobs, found $n_logs"
    exit 1
fi
# ... and, asking for no GPU, every one went to the CPU partition (slurm/partitions.yaml auto-selection).
n_cpu=$(grep -c "sched: Allocate .* Partition=cpu" "$CTLD_LOG" || true)
n_gpu=$(grep -c "sched: Allocate .* Partition=gpu" "$CTLD_LOG" || true)
if ((n_cpu < n_logs || n_gpu != 0)); then
    log "expected all $n_logs smoke jobs in partition cpu; slurmctld allocated cpu: $n_cpu, gpu: $n_gpu"
    exit 1
fi
log "smoke: $n_logs SLURM jobs, all in partition cpu"

log "paper-scale GPU requests of the verl fixture, checked by slurmctld (sbatch --test-only)"
"$PY" scripts/slurm/plan_sbatch.py --configfile tests/fixtures/slurm/verl-1node.yaml --test-only |
    grep -E '^(ok|REJECTED) '

log "GPU + Ray checks on a 2-node cluster (scripts/slurm/gpu-check/Snakefile)"
scripts/slurm/cluster.sh stop
scripts/slurm/cluster.sh start 2
t_up2=$(date +%s)
"$SNAKEMAKE" "${PROFILES[@]}" -s scripts/slurm/gpu-check/Snakefile -d "$WORK/gpu-check"
grep -qx "partition=gpu cuda=0,1,2,3" "$WORK/gpu-check/gpu_job.txt" || {
    log "GPU job saw: $(cat "$WORK/gpu-check/gpu_job.txt")"
    exit 1
}
"$PY" - "$WORK/gpu-check" <<'EOF'
import json, sys
from pathlib import Path

for name, nodes in (("ray_1node.json", 1), ("ray_2node.json", 2)):
    info = json.loads(Path(sys.argv[1], name).read_text().strip().splitlines()[-1])
    assert info["nodes"] == nodes and info["resources"].get("GPU") == 4.0 * nodes, (name, info)
    # gpu-check binds Ray to 127.0.0.2: head and every node on the loopback interface, none on the network
    assert info["address"].startswith("127.0.0.2:") and info["node_ips"] == ["127.0.0.2"], (name, info)
    print(f"e2e.sh: {name}: Ray at {info['address']}, {info['nodes']} node(s), {info['resources']['GPU']:.0f} GPUs",
          file=sys.stderr)
EOF
t_gpu=$(date +%s)
log "timings (s): install + cluster up $((t_up - t0)), smoke $((t_smoke - t_up)), gpu/ray checks $((t_gpu - t_up2)), total $((t_gpu - t0))"
