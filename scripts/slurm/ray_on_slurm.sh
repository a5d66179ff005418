#!/usr/bin/env bash
# Run a command against a Ray cluster spanning this SLURM allocation (multi-node verl RL).
# Ray's own output goes to stderr; COMMAND's stdout stays clean.
#
#   scripts/slurm/ray_on_slurm.sh [--] COMMAND [ARGS...]
#
# On one node (no SLURM job, or a one-node allocation) it runs COMMAND directly: verl starts its own local Ray
# (with the job's CPUs: `cleaner verl overrides` sets ray_kwargs.ray_init.num_cpus from SLURM_CPUS_PER_TASK /
# SLURM_CPUS_ON_NODE).
# On N > 1 nodes it follows verl's multi-node SLURM recipe (docs "Multinode training", examples/slurm/
# ray_on_slurm.slurm): `ray start --head` on the first node of the allocation and `ray start --address` on
# the others, each through `srun --overlap` so the steps share the allocation with the job's own step; it
# polls `ray status` until all N nodes have joined (never a fixed sleep), exports RAY_ADDRESS, runs COMMAND
# on this node (the first one) and stops the Ray steps on exit, whatever COMMAND's outcome.
#
# Environment:
#   CLEANER_RAY_ON_SLURM=force    start the Ray cluster even on one node (tests the multi-node path locally)
#   CLEANER_RAY_PORT              head port (default 6379)
#   CLEANER_RAY_TIMEOUT_S         how long to wait for all nodes to join (default 300)
#   CLEANER_RAY_GPUS_PER_NODE     GPUs each node gives Ray (default: the count in CUDA_VISIBLE_DEVICES, else 0)
#   CLEANER_RAY_CPUS_PER_NODE     CPUs each node gives Ray (default: SLURM_CPUS_PER_TASK, else SLURM_CPUS_ON_NODE,
#                                 else nproc); without a count Ray takes every core of the machine, not the job's
#   CLEANER_RAY_NODE_IP           the address every Ray node registers with and the head is reached at
#                                 (default: the head's first `hostname -I` address). A loopback address keeps a
#                                 cluster whose nodes all run on this one host (CI: scripts/slurm/gpu-check) off
#                                 the network: 127.0.0.2, not 127.0.0.1 or localhost, which Ray rewrites to the
#                                 machine's routable address (ray._private.services.resolve_ip_for_localhost)
#   RAY                           the `ray` CLI (default: `ray` beside COMMAND's interpreter, else on PATH)
set -euo pipefail

log() { echo "ray_on_slurm: $*" >&2; }

[[ ${1:-} == -- ]] && shift
if [[ $# == 0 ]]; then
    echo "usage: $0 [--] COMMAND [ARGS...]" >&2
    exit 2
fi

# The allocation's nodes as slurmctld sees them: inside the job step that Snakemake's jobstep executor starts
# (`srun -n1`), SLURM_JOB_NUM_NODES and SLURM_NNODES describe that one-node step, not the allocation.
nodes=1
nodelist=
if [[ -n ${SLURM_JOB_ID:-} ]]; then
    read -r nodes nodelist < <(squeue -h -j "$SLURM_JOB_ID" -o "%D %N")
fi
if [[ $nodes -le 1 && ${CLEANER_RAY_ON_SLURM:-} != force ]]; then
    exec "$@"
fi
if [[ -z $nodelist ]]; then
    log "CLEANER_RAY_ON_SLURM=force needs a SLURM allocation (SLURM_JOB_ID unset or unknown to squeue)"
    exit 2
fi

if [[ -z ${RAY:-} ]]; then
    if [[ -x $(dirname -- "$1")/ray ]]; then
        RAY=$(dirname -- "$1")/ray
    else
        RAY=$(command -v ray) || { log "no ray CLI found (set RAY=/path/to/ray)"; exit 2; }
    fi
fi
case ${CLEANER_RAY_NODE_IP:-} in
    127.0.0.1 | localhost | ::1)
        log "CLEANER_RAY_NODE_IP=$CLEANER_RAY_NODE_IP: Ray replaces it by the machine's routable address; use" \
            "another loopback address such as 127.0.0.2"
        exit 2 ;;
esac
port=${CLEANER_RAY_PORT:-6379}
timeout_s=${CLEANER_RAY_TIMEOUT_S:-300}
if [[ -n ${CLEANER_RAY_GPUS_PER_NODE:-} ]]; then
    gpus=$CLEANER_RAY_GPUS_PER_NODE
elif [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
    IFS=, read -r -a _devs <<<"$CUDA_VISIBLE_DEVICES"
    gpus=${#_devs[@]}
else
    gpus=0
fi
cpus=${CLEANER_RAY_CPUS_PER_NODE:-${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-$(nproc)}}}

# srun on the allocation rather than on the current step: drop the step's SLURM_* (node list, task and GPU
# counts) that would confine the new steps to this one node, as the jobstep executor does for its own srun.
# Called only in subshells (`$(...)`, `&`), it execs srun: the background job's pid is then srun's own, so the
# SIGTERM of cleanup() reaches srun (which forwards it to `ray start`), not a subshell that would leave it running.
job_srun() {
    local unset_args=() var
    for var in $(compgen -e); do
        case $var in
            SLURM_JOB_ID | SLURM_JOBID | SLURM_CONF | SLURM_CLUSTER_NAME) ;;
            SLURM_* | SRUN_* | SBATCH_*) unset_args+=(-u "$var") ;;
        esac
    done
    exec env "${unset_args[@]}" srun --jobid="$SLURM_JOB_ID" --overlap "$@"
}

mapfile -t hosts < <(scontrol show hostnames "$nodelist")
head=${hosts[0]}
# The head's address as the other nodes reach it (first address `hostname -I` lists on the head node).
head_ip=${CLEANER_RAY_NODE_IP:-$(job_srun --nodes=1 --ntasks=1 -w "$head" hostname -I | awk '{print $1}')}
address=$head_ip:$port
worker_ip=()
[[ -n ${CLEANER_RAY_NODE_IP:-} ]] && worker_ip=(--node-ip-address="$CLEANER_RAY_NODE_IP")

step_pids=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((${#step_pids[@]})); then
        log "stopping Ray (steps ${step_pids[*]})"
        # srun forwards SIGTERM to the `ray start --block` tasks, which stop their Ray processes.
        kill -TERM "${step_pids[@]}" 2>/dev/null || true
        wait "${step_pids[@]}" 2>/dev/null || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' INT TERM

log "head $head ($address), $nodes node(s), $cpus CPUs + $gpus GPUs each"
job_srun --nodes=1 --ntasks=1 -w "$head" \
    "$RAY" start --head --node-ip-address="$head_ip" --port="$port" \
    --num-cpus="$cpus" --num-gpus="$gpus" --disable-usage-stats --block >&2 &
step_pids+=($!)
if ((nodes > 1)); then
    job_srun --nodes=$((nodes - 1)) --ntasks=$((nodes - 1)) --ntasks-per-node=1 --exclude="$head" \
        "$RAY" start --address="$address" "${worker_ip[@]}" --num-cpus="$cpus" --num-gpus="$gpus" \
        --disable-usage-stats --block >&2 &
    step_pids+=($!)
fi

# `ray status` lists one " 1 node_<id>" line per live node under "Active:".
alive_nodes() {
    local status
    status=$("$RAY" status --address="$address" 2>/dev/null) || { echo 0; return; }
    awk '/^Active:/ {on = 1; next} /^(Pending|Recent failures):/ {on = 0} on && /node_/ {n++} END {print n + 0}' \
        <<<"$status"
}
waited=0
joined=0
while :; do
    joined=$(alive_nodes)
    ((joined >= nodes)) && break
    for pid in "${step_pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || { log "a Ray step exited before the cluster formed"; exit 1; }
    done
    if ((waited >= timeout_s)); then
        log "only $joined of $nodes nodes joined after ${timeout_s}s"
        exit 1
    fi
    sleep 5
    waited=$((waited + 5))
done
log "Ray cluster up: $joined node(s) after ${waited}s"

export RAY_ADDRESS=$address
set +e
"$@"
rc=$?
set -e
exit "$rc"
