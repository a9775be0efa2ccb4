#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (Debian, as root) so the SLURM launcher
# can be tested for real: `.ci/local-slurm.sh && MNIST_PIPELINE_SLURM_TEST=1 pytest -k slurm`.
# Installs slurm-wlm if missing. Refuses to touch a slurm.conf it did not write.
set -euo pipefail
MARK="# written by mnist-pipeline .ci/local-slurm.sh"
CONF=/etc/slurm/slurm.conf

if [ "$(id -u)" -ne 0 ]; then echo "local-slurm: needs root" >&2; exit 1; fi
if ! command -v slurmctld >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm >/dev/null
fi
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    echo "local-slurm: $CONF exists and is not ours; leaving this machine's SLURM alone" >&2
    exit 1
fi

HOST=$(hostname -s)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat >"$CONF" <<CONF
$MARK
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$(slurmd -C | head -n 1) State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

[ -f /etc/munge/munge.key ] || mungekey --create
chown -R munge:munge /etc/munge /run/munge
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        sinfo
        exit 0
    fi
    sleep 1
done
echo "local-slurm: the node did not come up; see /var/log/slurm/" >&2
exit 1
