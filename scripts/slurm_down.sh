#!/usr/bin/env bash
# Stop the one-node SLURM cluster of scripts/slurm_up.sh, by its PID files (never by process name).
# Usage: scripts/slurm_down.sh [--keep-munge]
set -u
FILES=(/run/slurmd.pid /run/slurmctld.pid)
[[ "${1:-}" == "--keep-munge" ]] || FILES+=(/run/munge/munged.pid)
for f in "${FILES[@]}"; do
  [[ -s $f ]] || continue
  pid=$(cat "$f")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    echo "slurm_down.sh: stopped $(basename "$f" .pid) ($pid)"
  fi
  rm -f "$f"
done
exit 0
