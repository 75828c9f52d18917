#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for the tests and for trying dispatch by hand.
#   slurm/local_cluster.sh up      install (Debian packages) if needed, configure, start; idempotent
#   slurm/local_cluster.sh down    stop slurmd, slurmctld and munged
#   slurm/local_cluster.sh status  exit 0 and print sinfo when the node accepts jobs
set -euo pipefail
STATE=${SLURM_LOCAL_STATE:-/var/lib/ddpm-slurm}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf

die() { echo "local_cluster: $*" >&2; exit 1; }

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
     && command -v munged >/dev/null; then return; fi
  [ "$(id -u)" = 0 ] || die "SLURM is not installed and installing it needs root (apt-get)"
  command -v apt-get >/dev/null || die "SLURM is not installed and there is no apt-get to install it"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

configure() {
  local cpus mem host tmp
  cpus=$(nproc --all)  # --all: plain nproc obeys OMP_NUM_THREADS, which would rewrite the node as 1 CPU
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  host=$(hostname)
  mkdir -p "$STATE/state" "$STATE/spool" "$CONF_DIR"
  tmp=$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")
  cat > "$tmp" <<CONF
# Written by slurm/local_cluster.sh for this machine ($host).
ClusterName=local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=10
# A requeued job may start again only after cred_expire s (default 120): 5 s lets the requeue tests take
# seconds per requeue, not minutes. The scheduler's loops every 2 s (defaults 60 and 30) start a job as soon
# as it may start, here where the queue holds a few jobs.
AuthInfo=cred_expire=5
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=300
JobAcctGatherType=jobacct_gather/none
NodeName=localhost NodeHostname=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  if ! cmp -s "$tmp" "$CONF"; then mv "$tmp" "$CONF"; echo changed; else rm -f "$tmp"; fi
}

ready() { sinfo -h -o "%t" 2>/dev/null | grep -qE "^(idle|mix|alloc)"; }

up() {
  [ "$(id -u)" = 0 ] || die "starting munged/slurmctld/slurmd needs root"
  install
  local changed; changed=$(configure)
  if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    [ -f /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key -f; chown munge:munge /etc/munge/munge.key; }
    su -s /bin/sh munge -c /usr/sbin/munged
  fi
  if [ -n "$changed" ] && pgrep -x slurmctld >/dev/null; then
    pkill -x slurmd || true; pkill -x slurmctld || true
    for _ in $(seq 30); do  # each saves its state before it exits
      pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break; sleep 1
    done
  fi
  pgrep -x slurmctld >/dev/null || slurmctld
  pgrep -x slurmd >/dev/null || slurmd -N localhost
  for _ in $(seq 60); do
    if ready; then sinfo; return 0; fi
    scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  die "the node did not become idle in 60 s; see $STATE/slurmctld.log and $STATE/slurmd.log"
}

down() {
  pkill -x slurmd || true
  pkill -x slurmctld || true
  pkill -x munged || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) ready && sinfo ;;
  *) die "usage: $0 up|down|status" ;;
esac
