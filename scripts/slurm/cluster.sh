#!/usr/bin/env bash
# A real SLURM cluster on this one machine, for CI and for trying `--profile slurm` locally.
#
#   scripts/slurm/cluster.sh start [NODES]   write the config, start munged + slurmctld + one slurmd per node,
#                                            wait until every node is idle (NODES: default 1)
#   scripts/slurm/cluster.sh stop            stop the daemons this script started (by their pid files) and
#                                            remove the config it wrote
#
# The cluster mirrors what slurm/partitions.yaml expects: partitions `cpu` (default) and `gpu` over all nodes,
# each node with 4 fake H200 GPUs as GRES (`gpu:h200:4`) backed by character devices (SLURM only accepts
# character devices as GRES files; `mknod c 1 3` makes /dev/null twins). With NODES=1 the node is this host;
# with NODES>1 each node is its own slurmd (`slurmd -N <name>`, one port each) on this host, enough to run
# multi-node allocations such as the Ray-on-SLURM start of scripts/slurm/ray_on_slurm.sh.
# No slurmdbd: accounting is off, so job state must be read with squeue (ci-profile/config.yaml sets
# slurm-status-command: squeue; MinJobAge=300 keeps finished jobs visible to squeue long enough).
#
# The config goes to /etc/slurm/slurm.conf + gres.conf, the default path every client reads: SLURM_CONF would
# not reach the job's own `srun` (the executor plugin's jobstep drops SLURM_* variables). An existing
# slurm.conf that this script did not write is never overwritten. State, logs and the fake devices live under
# $CLEANER_SLURM_DIR (default /var/tmp/cleaner-slurm). Needs root (CI runs as root); install the packages
# first with scripts/slurm/install.sh.
set -euo pipefail

DIR=${CLEANER_SLURM_DIR:-/var/tmp/cleaner-slurm}
ETC=${CLEANER_SLURM_ETC:-/etc/slurm}
CONF=$ETC/slurm.conf
MARKER="# Written by scripts/slurm/cluster.sh"
GPUS=${CLEANER_SLURM_FAKE_GPUS:-4}
GPU_TYPE=${CLEANER_SLURM_GPU_TYPE:-h200}
# Each node advertises a GPU node's CPUs and memory (SlurmdParameters=config_overrides: slurmd does not drain it
# for having fewer), so the paper-scale requests (--gpus=h200:4 --cpus-per-gpu=4 --mem 512000) are schedulable.
# Nothing is enforced (no cgroups): jobs share the real cores.
NODE_CPUS=${CLEANER_SLURM_NODE_CPUS:-16}
NODE_MEM_MB=${CLEANER_SLURM_NODE_MEM_MB:-600000}
START_TIMEOUT_S=${CLEANER_SLURM_START_TIMEOUT_S:-60}
HOST=$(hostname -s)

log() { echo "cluster.sh: $*" >&2; }

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_names() {  # node_names <count>: this host for one node, <host>1..<host>N for several
    local n=$1 i
    if ((n == 1)); then
        echo "$HOST"
    else
        for ((i = 1; i <= n; i++)); do echo "$HOST$i"; done
    fi
}

write_config() {
    local nodes=$1 names node_lines="" port=17001 name
    if ! getent hosts "$HOST" >/dev/null; then
        # slurmd and slurmctld resolve the node name; a container hostname often does not resolve.
        echo "127.0.0.1 $HOST" >>/etc/hosts
        log "added $HOST to /etc/hosts"
    fi
    mkdir -p "$DIR"/{log,run,ctld,spool,dev} "$ETC"
    if [[ -e $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
        log "$CONF exists and was not written by this script: not overwriting a real cluster's config"
        exit 1
    fi

    local files=() i
    for ((i = 0; i < GPUS; i++)); do
        [[ -c $DIR/dev/fakegpu$i ]] || mknod "$DIR/dev/fakegpu$i" c 1 3
        files+=("$DIR/dev/fakegpu$i")
    done
    local file_spec
    file_spec=$(IFS=,; echo "${files[*]}")

    mapfile -t names < <(node_names "$nodes")
    for name in "${names[@]}"; do
        if ((nodes == 1)); then
            node_lines+="NodeName=$name"
        else
            node_lines+="NodeName=$name NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$port"
            port=$((port + 1))
        fi
        node_lines+=" CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB Gres=gpu:$GPU_TYPE:$GPUS State=UNKNOWN"$'\n'
    done
    local all
    all=$(IFS=,; echo "${names[*]}")

    cat >"$CONF" <<EOF
$MARKER: $nodes-node test cluster on $HOST (partitions cpu + gpu, fake GPUs).
ClusterName=cleanerci
SlurmctldHost=$HOST
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
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
${node_lines}PartitionName=cpu Nodes=$all Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$all Default=NO MaxTime=INFINITE State=UP
EOF
    cat >"$ETC/gres.conf" <<EOF
$MARKER
NodeName=$all Name=gpu Type=$GPU_TYPE File=$file_spec
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

all_idle() {  # all_idle <count>: that many nodes, all idle
    local states
    states=$(sinfo -h -N -p cpu -o %t)
    [[ $(grep -c . <<<"$states") == "$1" && -z $(grep -v '^idle$' <<<"$states") ]]
}

start() {
    local nodes=${1:-1} name
    if [[ $(id -u) != 0 ]]; then
        log "start needs root (the daemons run as root)"
        exit 1
    fi
    command -v slurmctld >/dev/null || { log "slurmctld not found: run scripts/slurm/install.sh"; exit 1; }
    if pid_alive "$DIR/run/slurmctld.pid"; then
        log "already running ($DIR); stop it first to change the node count"
        return
    fi
    rm -rf "$DIR/ctld" "$DIR/spool" "$DIR/log"
    mkdir -p "$DIR/log"
    mkdir -p "$DIR/spool"
    write_config "$nodes"
    start_munge
    wait_for "munge" munge -n
    slurmctld -c -f "$CONF"
    wait_for "slurmctld" scontrol ping
    for name in $(node_names "$nodes"); do
        mkdir -p "$DIR/spool/$name"
        if ((nodes == 1)); then slurmd -f "$CONF"; else slurmd -f "$CONF" -N "$name"; fi
    done
    wait_for "$nodes node(s) to become idle" all_idle "$nodes"
    log "up: $(sinfo -h -o '%P %a %D %t %G' | tr '\n' ';')"
}

stop() {
    local pidfiles=("$DIR"/run/slurmd*.pid "$DIR/run/slurmctld.pid") pidfile t conf
    for pidfile in "${pidfiles[@]}"; do
        if pid_alive "$pidfile"; then
            kill "$(cat "$pidfile")"
        fi
    done
    for pidfile in "${pidfiles[@]}"; do
        t=0
        while pid_alive "$pidfile" && ((t < 30)); do
            sleep 1
            t=$((t + 1))
        done
        if pid_alive "$pidfile"; then
            kill -9 "$(cat "$pidfile")"
        fi
        rm -f "$pidfile"
    done
    # Without a controller, a left-behind config makes every SLURM client (and every `snakemake` run, whose
    # SLURM plugin calls `scontrol show config` at import) wait for a timeout; without a config they fail fast.
    for conf in "$CONF" "$ETC/gres.conf"; do
        if [[ -e $conf ]] && grep -qF "$MARKER" "$conf"; then
            rm -f "$conf"
        fi
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
    start) start "${2:-1}" ;;
    stop) stop ;;
    *)
        echo "usage: $0 start [NODES] | stop" >&2
        exit 2
        ;;
esac
