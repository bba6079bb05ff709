#!/usr/bin/env bash
# A one-node Slurm cluster on this machine for the job-array test (tests/slurm.rs), as root:
#   tools/slurm-cluster.sh up     install slurm-wlm + munge if missing, write the config, start
#                                 munged, slurmctld and slurmd, wait until the node is idle
#   tools/slurm-cluster.sh down   stop the daemons this script started
# Debian bookworm's slurm-wlm 22.05. Process tracking by /proc (no cgroups: containers often
# lack them), no accounting.
set -euo pipefail

RUN=/run/ddim-slurm
CONF=/etc/slurm/slurm.conf

up() {
  [ "$(id -u)" -eq 0 ] || { echo "slurm-cluster.sh: run as root" >&2; exit 1; }
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "== installing slurm-wlm and munge"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      slurm-wlm munge >/dev/null
  fi
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ { print int($2 / 1024 * 0.9) }' /proc/meminfo)
  mkdir -p /etc/slurm /var/spool/slurmd /var/spool/slurmctld /var/log/slurm "$RUN"
  cat > "$CONF" <<EOF
ClusterName=ddim-ci
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  # munge: a key (the package makes one; make sure), its run directory, the daemon as munge.
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge
  if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged
    touch "$RUN/started-munged"
  fi
  pgrep -x slurmctld >/dev/null || slurmctld
  pgrep -x slurmd >/dev/null || slurmd
  for _ in $(seq 60); do
    if sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "== slurm up: $(sinfo -h -N -o '%N %c CPUs %T')"
      return 0
    fi
    sleep 1
  done
  echo "slurm-cluster.sh: the node did not become idle in 60 s" >&2
  sinfo -N -l >&2 || true
  tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
  exit 1
}

down() {
  for pid in "$RUN/slurmd.pid" "$RUN/slurmctld.pid"; do
    [ -s "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done
  for _ in $(seq 20); do
    pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break
    sleep 0.5
  done
  if [ -e "$RUN/started-munged" ]; then
    pkill -x munged || true
    rm -f "$RUN/started-munged"
  fi
  echo "== slurm down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
