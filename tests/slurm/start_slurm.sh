#!/usr/bin/env bash
# Install and start a one-node Slurm (slurmctld + slurmd on localhost, munge) for the `slurm` tests.
# Idempotent; run as root (CI runs as root). No accounting database: job status comes from squeue,
# so MinJobAge keeps finished jobs visible for an hour. Addresses are 127.0.0.1, so the host name
# need not resolve (CI containers often lack it in /etc/hosts).
set -euo pipefail
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
# Two partitions, as the profile expects (slurm/config.yaml): debug stands for the CPU one, gpu for the GPU one
# (the same node, without GPUs: the tests strip the GPU requests, not the partitions).
if scontrol ping 2>/dev/null | grep -q "UP" && grep -q "^PartitionName=gpu" /etc/slurm/slurm.conf 2>/dev/null; then
  sinfo -h -o "%T" | grep -qE "idle|mix|alloc" && exit 0
fi
HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
[ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
chmod 0400 /etc/munge/munge.key
chown -R root:root /etc/munge /run/munge /var/lib/munge /var/log/munge
pgrep -x munged >/dev/null || munged --force
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=lorabench
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
PartitionName=gpu Nodes=${HOST} Default=NO MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
if pgrep -x slurmctld >/dev/null; then scontrol reconfigure || { pkill -x slurmctld; sleep 1; slurmctld; }; fi
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
  if sinfo -h -o "%T" 2>/dev/null | grep -qE "^(idle|mix|alloc)"; then echo "slurm up: $(sinfo -h)"; exit 0; fi
  scontrol update NodeName="${HOST}" State=RESUME >/dev/null 2>&1 || true
  sleep 1
done
echo "slurm did not come up; see /var/log/slurm/*.log" >&2
tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
