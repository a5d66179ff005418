#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for CI and for trying `--profile slurm` locally.
#
#   scripts/slurm/cluster.sh start    write the config, start munged + slurmctld + slurmd, wait for the node
#   scripts/slurm/cluster.sh stop     stop the daemons this script started (by their pid files)
#
# The cluster mirrors what slurm/partitions.yaml expects: partitions `cpu` (default) and `gpu` on one node,
# and 4 fake H200 GPUs as GRES (`gpu:h200:4`) backed by character devices (SLURM only accepts character
# devices as GRES files; `mknod c 1 3` makes /dev/null twins). No slurmdbd: accounting is off, so job state
# must be read with squeue (ci-profile/config.yaml sets slurm-status-command: squeue; MinJobAge=300 keeps
# finished jobs visible to squeue long enough).
# The config goes to /etc/slurm/slurm.conf + gres.conf, the default path every client reads: SLURM_CONF would
# not reach the job's own `srun` (the executor plugin's jobstep drops SLURM_* variables). An existing
# slurm.conf that this script did not write is never overwritten. State, logs and the fake devices live under
# $CLEANER_SLURM_DIR (default /var/tmp/cleaner-slurm).
# Needs root (the daemons run as root; CI runs as root). Install the packages first: scripts/slurm/install.sh.
set -euo pipefail

DIR=${CLEANER_SLURM_DIR:-/var/tmp/cleaner-slurm}
ETC=${CLEANER_SLURM_ETC:-/etc/slurm}
CONF=$ETC/slurm.conf
MARKER="# Written by scripts/slurm/cluster.sh"
GPUS=${CLEANER_SLURM_FAKE_GPUS:-4}
GPU_TYPE=${CLEANER_SLURM_GPU_TYPE:-h200}
# The node advertises a GPU node's CPUs and memory (SlurmdParameters=config_overrides: slurmd does not drain it
# for having fewer), so the paper-scale requests (--gpus=h200:4 --cpus-per-gpu=4 --mem 512000) are schedulable.
# Nothing is enforced (no cgroups): jobs share the real cores.
NODE_CPUS=${CLEANER_SLURM_NODE_CPUS:-16}
NODE_MEM_MB=${CLEANER_SLURM_NODE_MEM_MB:-600000}
START_TIMEOUT_S=${CLEANER_SLURM_START_TIMEOUT_S:-60}

log() { echo "cluster.sh: $*" >&2; }

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_config() {
    local host
    host=$(hostname -s)
    if ! getent hosts "$host" >/dev/null; then
        # slurmd and slurmctld resolve the node name; a container hostname often does not resolve.
        echo "127.0.0.1 $host" >>/etc/hosts
        log "added $host to /etc/hosts"
    fi
    mkdir -p "$DIR"/{log,run,ctld,spool,dev} "$ETC"
    if [[ -e $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
        log "$CONF exists and was not written by this script: not overwriting a real cluster's config"
        exit 1
    fi

    local files=()
    for ((i = 0; i < GPUS; i++)); do
        [[ -c $DIR/dev/fakegpu$i ]] || mknod "$DIR/dev/fakegpu$i" c 1 3
        files+=("$DIR/dev/fakegpu$i")
    done
    local file_spec
    file_spec=$(IFS=,; echo "${files[*]}")

    cat >"$CONF" <<EOF
$MARKER: single-node test cluster (partitions cpu + gpu, fake GPUs).
ClusterName=cleanerci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
NodeName=$host CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB Gres=gpu:$GPU_TYPE:$GPUS State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host Default=NO MaxTime=INFINITE State=UP
EOF
    cat >"$ETC/gres.conf" <<EOF
$MARKER
NodeName=$host Name=gpu Type=$GPU_TYPE File=$file_spec
EOF
}

start_munge() {
    if munge -n >/dev/null 2>&1; then
        return  # a munged is already serving /run/munge (e.g. the system's): use it, leave it running
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    runuser -u munge -- /usr/sbin/munged
    touch "$DIR/run/munged.ours"
}

wait_for() {  # wait_for <description> <command...>: poll once a second up to START_TIMEOUT_S
    local what=$1
    shift
    local t=0
    until "$@" >/dev/null 2>&1; do
        if ((t >= START_TIMEOUT_S)); then
            log "timed out after ${START_TIMEOUT_S}s waiting for $what"
            tail -n 30 "$DIR"/log/*.log >&2 || true
            return 1
        fi
        sleep 1
        t=$((t + 1))
    done
}

node_idle() {
    [[ $(sinfo -h -N -p cpu -o %t | head -1) == idle ]]
}

start() {
    if [[ $(id -u) != 0 ]]; then
        log "start needs root (the daemons run as root)"
        exit 1
    fi
    command -v slurmctld >/dev/null || { log "slurmctld not found: run scripts/slurm/install.sh"; exit 1; }
    if pid_alive "$DIR/run/slurmctld.pid"; then
        log "already running ($DIR)"
        return
    fi
    write_config
    start_munge
    wait_for "munge" munge -n
    slurmctld -c -f "$CONF"
    wait_for "slurmctld" scontrol ping
    slurmd -f "$CONF"
    wait_for "node $(hostname -s) to become idle" node_idle
    log "up: $(sinfo -h -o '%P %a %D %t %G' | tr '\n' ';')"
}

stop() {
    local pidfile
    for pidfile in "$DIR/run/slurmd.pid" "$DIR/run/slurmctld.pid"; do
        if pid_alive "$pidfile"; then
            kill "$(cat "$pidfile")"
        fi
    done
    for pidfile in "$DIR/run/slurmd.pid" "$DIR/run/slurmctld.pid"; do
        local t=0
        while pid_alive "$pidfile" && ((t < 30)); do
            sleep 1
            t=$((t + 1))
        done
        if pid_alive "$pidfile"; then
            kill -9 "$(cat "$pidfile")"
        fi
        rm -f "$pidfile"
    done
    if [[ -e $DIR/run/munged.ours ]]; then
        if [[ -s /run/munge/munged.pid ]] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; then
            kill "$(cat /run/munge/munged.pid)"
        fi
        rm -f "$DIR/run/munged.ours"
    fi
    log "stopped"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    *)
        echo "usage: $0 start|stop" >&2
        exit 2
        ;;
esac
