#!/usr/bin/env bash
# Start a single-node SLURM on localhost for the integration test (idempotent).
#   bash tests/slurm/start.sh [linuxproc|cgroup]      (process tracking; default linuxproc)
# Installs Debian's munge and SLURM daemons when they are missing (needs root and the Debian
# package registry), writes a slurm.conf for this machine's CPUs and memory, starts munged,
# slurmctld and slurmd, and waits until the node is idle. tests/slurm/stop.sh undoes it.
# cgroup: ProctrackType=proctrack/cgroup with a cgroup.conf for the v1 hierarchies this machine
# mounts (the usual production setting: a job step's processes die with the step). Daemons
# already running with the other tracking are stopped and started again.
# Exit status 77 means "cannot run here" (not root, or no apt-get, or no cgroup v1 freezer for
# cgroup): the test skips.
set -euo pipefail
TRACKING=${1:-linuxproc}
STATE=${SLURM_TEST_STATE:-/var/lib/slurm}
LOGS=/var/log/slurm
RUN=/run/slurm
HERE=$(cd "$(dirname "$0")" && pwd)
case "$TRACKING" in
  linuxproc) ;;
  cgroup) [ -d /sys/fs/cgroup/freezer ] || { echo "start.sh: no cgroup v1 freezer hierarchy for proctrack/cgroup" >&2; exit 77; } ;;
  *) echo "start.sh: process tracking must be linuxproc or cgroup, not '$TRACKING'" >&2; exit 2 ;;
esac

if [ "$(id -u)" != 0 ]; then echo "start.sh: needs root to run the SLURM daemons" >&2; exit 77; fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  command -v apt-get >/dev/null || { echo "start.sh: no apt-get to install SLURM" >&2; exit 77; }
  # Keep the packages' own init scripts from starting daemons with their default config.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# munge: one key, owned by munge.
mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
chmod 0600 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

mkdir -p "$STATE" "$LOGS" "$RUN" /etc/slurm
# Running with the other tracking: stop, so the daemons read the new configuration.
if [ -s "$RUN/slurmctld.pid" ] && kill -0 "$(cat "$RUN/slurmctld.pid")" 2>/dev/null \
   && ! grep -qx "ProctrackType=proctrack/$TRACKING" /etc/slurm/slurm.conf 2>/dev/null; then
  bash "$HERE/stop.sh" --keep-munge
fi
chown slurm:slurm "$STATE" "$LOGS" "$RUN" 2>/dev/null || true
cpus=$(nproc)
FAKE_GPUS=2
mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=spectral-edit-test
SlurmctldHost=localhost
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
MailProg=/bin/true
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/$TRACKING
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1000
EnforcePartLimits=ALL
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.log
MinJobAge=300
ReturnToService=2
GresTypes=gpu
NodeName=localhost CPUs=$cpus RealMemory=$mem_mb Gres=gpu:$FAKE_GPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
if [ "$TRACKING" = cgroup ]; then
  # The v1 hierarchies are mounted already; constrain nothing (the placeholder GPUs below are
  # plain files, not devices, so ConstrainDevices could not be tested here).
  cat > /etc/slurm/cgroup.conf <<CGROUP
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
CGROUP
fi
# Placeholder GPUs, so that rules asking for GPUs are scheduled on this CPU-only node (their
# code then finds no CUDA device and runs on the CPU, the same path as a laptop run).
mkdir -p "$STATE/fakegpu"
for i in $(seq 0 $((FAKE_GPUS - 1))); do touch "$STATE/fakegpu/gpu$i"; done
echo "NodeName=localhost Name=gpu File=$STATE/fakegpu/gpu[0-$((FAKE_GPUS - 1))]" > /etc/slurm/gres.conf
mkdir -p "$STATE/ctld" "$STATE/d" && chown slurm:slurm "$STATE/ctld"

if ! scontrol ping 2>/dev/null | grep -q UP; then
  slurmctld -c
  for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
fi
if [ ! -s "$RUN/slurmd.pid" ] || ! kill -0 "$(cat "$RUN/slurmd.pid")" 2>/dev/null; then
  slurmd -N localhost
fi
for _ in $(seq 150); do
  state=$(sinfo -h -N -n localhost -o %T 2>/dev/null || true)
  case "$state" in
    idle*|mixed*|allocated*) echo "start.sh: SLURM up ($cpus CPUs, $mem_mb MB, proctrack/$TRACKING)"; exit 0 ;;
    down*|drain*) scontrol update NodeName=localhost State=RESUME 2>/dev/null || true ;;
  esac
  sleep 0.2
done
echo "start.sh: the node did not become idle (state: ${state:-none}); see $LOGS" >&2
exit 1
