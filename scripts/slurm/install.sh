#!/usr/bin/env bash
# Install a local SLURM (controller + compute daemon + clients) and munge from Debian packages.
# Idempotent and quiet: does nothing when the binaries are already there. Needs root (CI runs as root).
# Usage: scripts/slurm/install.sh
set -euo pipefail

need=(slurmctld slurmd sbatch squeue munged)
missing=0
for bin in "${need[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || [[ -x /usr/sbin/$bin ]] || missing=1
done
if [[ $missing == 0 ]]; then
    echo "install.sh: slurm-wlm and munge already installed"
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    echo "install.sh: installing slurm-wlm needs root (apt-get)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# slurm-wlm pulls slurmctld, slurmd and slurm-client (sbatch, squeue, sacct, scontrol).
# --no-install-recommends keeps it to the daemons: no slurmdbd/MariaDB (status is queried with squeue).
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
echo "install.sh: installed $(sinfo --version 2>/dev/null || echo slurm) and munge"
