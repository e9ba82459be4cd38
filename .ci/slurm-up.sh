#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the `cluster` tests and the README's study commands:
# slurmctld and slurmd on this host, munge authentication, no cgroups and no accounting database.
# Run as root; installs Debian's slurm-wlm and munge with apt when they are missing (about 15 s).
# Does nothing where a cluster already answers, and never overwrites a slurm.conf it did not write.
set -euo pipefail
CONF=/etc/slurm/slurm.conf
MARK="# written by .ci/slurm-up.sh"

if sinfo --noheader >/dev/null 2>&1; then
  echo "slurm-up: a cluster already answers"; exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "slurm-up: needs root (it installs packages and starts daemons)" >&2; exit 1
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  echo "slurm-up: $CONF exists and is not ours; not touching it" >&2; exit 1
fi

# munge: a key, its run directory, and the daemon as the munge user (it refuses to run as root).
[ -s /etc/munge/munge.key ] || mungekey -c
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged

# One node with this machine's CPUs and most of its memory. Memory is not a consumable resource
# (CR_CPU), so jobs share it and run side by side on the CPUs they ask for.
HOST=$(hostname -s)
MEM_MB=$(( $(free -m | awk '/^Mem:/ {print $2}') * 9 / 10 ))
install -d /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > "$CONF" <<EOF
$MARK
ClusterName=ci
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$HOST CPUs=$(nproc) RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
  if sinfo --noheader --states=idle,mixed,allocated 2>/dev/null | grep -q .; then
    echo "slurm-up: node $HOST up ($(nproc) CPUs, ${MEM_MB} MB)"; exit 0
  fi
  sleep 0.5
done
echo "slurm-up: the node did not come up; see /var/log/slurm/" >&2; exit 1
