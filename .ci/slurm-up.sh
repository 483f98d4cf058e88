#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine (Debian's slurm-wlm + munge), for the tests of
# `sysid slurm` (tests/test_slurm_cluster.py). Idempotent: exits 0 at once when the node is up.
# Needs root. Installs the packages when they are missing (apt-get).
#
#   sudo .ci/slurm-up.sh        # then: sinfo   (node "$(hostname -s)" idle in partition debug)
set -euo pipefail

node="$(hostname -s)"

node_ready() {
    sinfo --noheader --nodes="$node" --format=%t 2>/dev/null | grep -Eq '^(idle|mix|alloc)'
}

if node_ready; then
    echo "slurm: node $node is up"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "slurm-up.sh must run as root (it writes /etc/slurm and starts munged, slurmctld, slurmd)" >&2
    exit 1
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# munge: the authentication daemon every SLURM daemon and client talks to
mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
if ! pgrep -x munged >/dev/null; then
    munged --force
fi

# slurm.conf for one node with every core of this machine
memory_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat >/etc/slurm/slurm.conf <<EOF
# written by visual-sysid .ci/slurm-up.sh: a single-node test cluster
ClusterName=local
SlurmctldHost=$node
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
MpiDefault=none
ReturnToService=2
# array tasks start within a second of a slot becoming free
SchedulerParameters=sched_interval=2
MinJobAge=30
NodeName=$node CPUs=$(nproc) RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 60); do
    if node_ready; then
        echo "slurm: node $node is up"
        exit 0
    fi
    # a node left "down" by an earlier run comes back once resumed
    scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
    sleep 1
done
echo "slurm: node $node did not become idle; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
sinfo >&2 || true
exit 1
