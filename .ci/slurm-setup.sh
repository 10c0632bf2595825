#!/usr/bin/env bash
# Single-node SLURM on localhost, for the real-SLURM test (tests/engine/test_cluster.py).
#
#   bash .ci/slurm-setup.sh          # install (if needed), configure, start; wait for an idle node
#   bash .ci/slurm-setup.sh --stop   # stop slurmd, slurmctld, then munged
#
# Needs root and no systemd (daemons are started directly). Idempotent: running it
# again with SLURM already up just checks that the node is idle. Without root it
# prints why and exits 0 doing nothing, and the SLURM test skips.
set -euo pipefail

if [[ "$(id -u)" != 0 ]]; then
    echo "slurm-setup: not root (uid $(id -u)); SLURM not set up, the SLURM test will skip" >&2
    exit 0
fi

HOST="$(hostname -s)"
CONF=/etc/slurm/slurm.conf

stop_daemon() {  # name pidfile
    local pid=""
    [[ -f "$2" ]] && pid="$(cat "$2" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        echo "slurm-setup: stopped $1 (pid $pid)"
    fi
}

if [[ "${1:-}" == "--stop" ]]; then
    scancel --user=root 2>/dev/null || true
    stop_daemon slurmd /run/slurmd.pid
    stop_daemon slurmctld /run/slurmctld.pid
    stop_daemon munged /run/munge/munged.pid
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
    || ! command -v sinfo >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

# munge first: slurm authenticates through it.
if [[ ! -f /etc/munge/munge.key ]]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 755 /run/munge
if ! pgrep -u munge -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged
fi

# slurm.conf: one node declaring 8 CPUs (config_overrides) so that small test jobs
# never wait for the few real cores; memory = total − 1 GiB.
total_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > "$CONF.new" <<CONF
# Written by operando .ci/slurm-setup.sh: single-node test cluster on localhost.
ClusterName=operando-ci
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/backfill
MpiDefault=none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=8 RealMemory=$((total_mb - 1024)) State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
if ! cmp -s "$CONF.new" "$CONF"; then
    mv "$CONF.new" "$CONF"
    changed=1
else
    rm -f "$CONF.new"
    changed=0
fi

if [[ "$changed" == 1 ]]; then  # a new config: restart whatever runs with the old one
    stop_daemon slurmd /run/slurmd.pid
    stop_daemon slurmctld /run/slurmctld.pid
fi
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 60); do
    if sinfo -h -o '%t' 2>/dev/null | grep -qx 'idle'; then
        echo "slurm-setup: SLURM up: $(sinfo -h -o '%P %D %t %c CPUs %m MB')"
        exit 0
    fi
    sleep 0.5
done
echo "slurm-setup: no idle node after 30 s; sinfo says:" >&2
sinfo >&2 || true
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
