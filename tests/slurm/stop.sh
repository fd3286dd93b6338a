#!/usr/bin/env bash
# Stop the test SLURM started by start.sh: cancel its jobs, then the daemons by their pid files
# (munged too, unless --keep-munge: start.sh restarting with another process tracking).
set -uo pipefail
RUN=/run/slurm
command -v scancel >/dev/null && scancel --user="$(id -un)" 2>/dev/null
for pidfile in "$RUN/slurmd.pid" "$RUN/slurmctld.pid"; do
  if [ -s "$pidfile" ]; then
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
    rm -f "$pidfile"
  fi
done
if [ "${1:-}" != --keep-munge ] && [ -s /run/munge/munged.pid ]; then
  kill "$(cat /run/munge/munged.pid)" 2>/dev/null
fi
exit 0
