#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine (munge + slurmctld + slurmd on localhost, no systemd,
# no cgroups, no accounting database), for the SLURM tests (tests/test_slurm.py) and for trying the
# slurm profile by hand. Run as root:
#
#   scripts/slurm_up.sh                  # start, or reuse the cluster already running
#   scripts/slurm_up.sh --no-fake-gpu    # without the fake GPU
#   scripts/slurm_down.sh                # stop it
#
# Installs slurm-wlm and munge with apt-get when they are missing (Debian/Ubuntu, about 15 s).
# Idempotent: a running cluster with a usable node (and the fake GPU, unless --no-fake-gpu) is reused
# as it is; one in a bad state (node down, GPU missing) is stopped through its PID files and restarted.
#
# The node is this machine under its real hostname (SLURM needs a resolvable name), with all its CPUs
# and memory, in partition `debug`. By default it declares one fake GPU (gres gpu:1 backed by
# /dev/null) so that GPU rules (caption_shard with gpus >= 1) are scheduled rather than refused.
# Finished jobs stay visible to `scontrol show job` for MinJobAge=300 s (there is no sacct here;
# use `slurm-status-command: squeue` in profiles).
set -euo pipefail

FAKE_GPU=1
for arg in "$@"; do
  case $arg in
    --no-fake-gpu) FAKE_GPU=0 ;;
    --fake-gpu) FAKE_GPU=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "slurm_up.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
HERE=$(cd "$(dirname "$0")" && pwd)

usable() {
  # a responding controller with at least one node ready for jobs (and a GPU when asked for)
  local info
  info=$(timeout 10 sinfo -h -o '%T %G' 2>/dev/null) || return 1
  echo "$info" | grep -Eq '^(idle|mixed|allocated|completing)[*~#]? ' || return 1
  if (( FAKE_GPU )); then echo "$info" | grep -q 'gpu' || return 1; fi
  return 0
}

if command -v sinfo >/dev/null && usable; then
  echo "slurm_up.sh: reusing the running cluster"
  sinfo
  exit 0
fi

if (( EUID != 0 )); then
  echo "slurm_up.sh: no usable SLURM cluster here and starting one needs root (apt-get, daemons)" >&2
  exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  echo "slurm_up.sh: installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; }
fi

# a half-started or differently configured cluster: stop what its PID files name, then start afresh
if [[ -s /run/slurmctld.pid || -s /run/slurmd.pid ]]; then
  bash "$HERE/slurm_down.sh" --keep-munge
fi

H=$(hostname)
MEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
CPUS=$(nproc)
GRES_NODE=""; GRES_TYPES=""
mkdir -p /etc/slurm
if (( FAKE_GPU )); then
  GRES_NODE=" Gres=gpu:1"; GRES_TYPES="GresTypes=gpu"
  echo "NodeName=$H Name=gpu File=/dev/null" > /etc/slurm/gres.conf
else
  rm -f /etc/slurm/gres.conf
fi
cat > /etc/slurm/slurm.conf <<CONF
# written by trsllava scripts/slurm_up.sh: a one-node test cluster
ClusterName=trsllava-test
SlurmctldHost=$H
SlurmUser=slurm
AuthType=auth/munge
$GRES_TYPES
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=300
KillWait=5
NodeName=$H CPUs=$CPUS RealMemory=$MEM$GRES_NODE State=UNKNOWN
PartitionName=debug Default=YES Nodes=ALL MaxTime=INFINITE State=UP
CONF
mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
chown slurm:slurm /var/spool/slurmctld /var/log/slurm
chown munge:munge /run/munge
[[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 1 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.25; done
fi
# -c: start with no saved jobs. A test cluster stopped with jobs still queued or running (a killed
# test run, a restarted machine) would otherwise bring them back as RUNNING on a slurmd that knows
# nothing of them, holding the node until their time limit while new jobs wait (Reason=Resources).
slurmctld -c   # daemonizes, drops to SlurmUser, PID in /run/slurmctld.pid
slurmd      # daemonizes as root, PID in /run/slurmd.pid
for _ in $(seq 1 60); do
  if usable; then echo "slurm_up.sh: started"; sinfo; exit 0; fi
  sleep 0.5
done
echo "slurm_up.sh: the cluster did not become ready; see /var/log/slurm/" >&2
sinfo >&2 || true
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
