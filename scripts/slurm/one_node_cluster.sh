#!/bin/bash
# A real SLURM on this machine: munged, slurmctld and slurmd as a one-node cluster on
# localhost, the study's array job (scripts/slurm/grid.sbatch) over a small grid, and the
# table built from what the tasks pushed. Needs root and Debian's slurmctld, slurmd,
# slurm-client and munge (apt-get install -y slurmctld slurmd slurm-client munge); no GPU
# (the cells run on the CPU), no systemd.
#
#   scripts/slurm/one_node_cluster.sh [OUTPUT_DIR]
#   scripts/slurm/one_node_cluster.sh --start DIR   # only the cluster, left running: then
#                                                   # SLURM_CONF=DIR/slurm.conf sbatch ...
#   scripts/slurm/one_node_cluster.sh --stop DIR    # stop what --start started
#
# tests/test_remotes.py starts and stops the cluster this way and runs one cell through
# scripts/slurm/submit.sh; the whole demo below is run by hand (docs/scale.md).
#
# The grid: bundled fashionmnist-mini, ResNet-18 + GradAttn (no PE), seeds 1 and 2, one
# epoch, a narrow encoder: 4 tasks, 2 at a time (this node has 2 CPUs, one per task).
set -euo pipefail

mode=demo
case "${1:-}" in
    --start|--stop) mode=${1#--}; shift
        [ $# -eq 1 ] || { echo "usage: $0 --$mode DIR" >&2; exit 2; } ;;
esac
stop_daemons() {  # only the daemons started here (their pids in $dir/daemons.pids)
    [ -f "$dir/daemons.pids" ] || return 0
    while read -r pid; do
        kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true  # munged: its session
    done < "$dir/daemons.pids"
    rm -f "$dir/daemons.pids"
}
if [ "$mode" = stop ]; then
    dir=$1
    stop_daemons
    exit 0
fi

dir=${1:-$(mktemp -d /tmp/gradattn-slurm.XXXXXX)}
dir=$(realpath -m "$dir")
# Its project/, work/ and analyst/ are removed below: reuse only a folder this script made.
if [ -n "$(ls -A "$dir" 2>/dev/null)" ] && [ ! -e "$dir/.gradattn-slurm" ]; then
    echo "error: $dir exists and is not a folder this script made (no .gradattn-slurm in it): give a new or empty folder" >&2
    exit 2
fi
mkdir -p "$dir" && touch "$dir/.gradattn-slurm"
venv_bin=$(dirname "$(command -v python)")
host=$(hostname)
cpus=$(nproc)
export PATH="$venv_bin:$PATH" DVC_NO_ANALYTICS=1
export GIT_AUTHOR_NAME=grid GIT_AUTHOR_EMAIL=grid@localhost
export GIT_COMMITTER_NAME=grid GIT_COMMITTER_EMAIL=grid@localhost
started() { echo "$1" >> "$dir/daemons.pids"; }
[ "$mode" = start ] || trap stop_daemons EXIT

echo "== a one-node SLURM cluster on $host ($cpus CPUs), state in $dir"
mkdir -p "$dir/state" "$dir/spool"
cat > "$dir/slurm.conf" <<CONF
ClusterName=gradattn
SlurmctldHost=$host
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$dir/slurm.conf"

if ! munge -n >/dev/null 2>&1; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    # Its own session: stopping runuser signals its whole process group, not this script.
    setsid runuser -u munge -- /usr/sbin/munged --foreground >"$dir/munged.log" 2>&1 &
    started $!
    for _ in $(seq 20); do munge -n >/dev/null 2>&1 && break; sleep 0.5; done
fi
munge -n | unmunge >/dev/null && echo "munge: credentials work"
/usr/sbin/slurmctld -D -f "$SLURM_CONF" >"$dir/slurmctld.out" 2>&1 & started $!
/usr/sbin/slurmd -D -f "$SLURM_CONF" >"$dir/slurmd.out" 2>&1 & started $!
for _ in $(seq 60); do
    [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && break
    sleep 1
done
sinfo
if [ "$mode" = start ]; then
    if [ "$(sinfo -h -o %T 2>/dev/null)" != idle ]; then
        echo "error: the node did not come up idle in 60 s (logs: $dir/slurmctld.log, $dir/slurmd.log)" >&2
        stop_daemons
        exit 1
    fi
    echo "SLURM_CONF=$SLURM_CONF"
    exit 0
fi

echo "== the project, a bare git origin and a folder DVC remote"
project=$(git -C "$(dirname "$0")/../.." rev-parse --show-toplevel)
git init -q --bare "$dir/origin.git"
rm -rf "$dir/project" "$dir/work" "$dir/analyst"
mkdir "$dir/project"
git -C "$project" archive HEAD | tar -x -C "$dir/project"
cd "$dir/project"
export PYTHONPATH="$dir/project"  # this snapshot's gradattn, whatever is installed
python - <<'PY'
import yaml
p = yaml.safe_load(open("params.yaml"))
p["data"]["datasets"] = ["fashionmnist-mini"]
p["models"] = ["resnet18", "gradattn"]
p["model"].update(dim=16, heads=2, ff_dim=32, depth=1)
p["train"]["max_epochs"] = 1
p["gradients"]["batches"] = 1
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
m = yaml.safe_load(open("machine.yaml"))
m["grid"] = {"seeds": [1, 2], "pe": ["none"]}
yaml.safe_dump(m, open("machine.yaml", "w"), sort_keys=False)
PY
# A fresh study: without the committed results of the default one, whose params differ.
rm -rf dvc.lock metrics plotdata plots
git init -q && git add -A && git commit -qm "study at $(git -C "$project" rev-parse --short HEAD), small grid"
git remote add origin "$dir/origin.git"
dvc remote add -d storage "$dir/dvc-store"
git commit -qam "remotes"
git push -q origin HEAD
gradattn grid --list

echo "== sbatch: the array job, $(gradattn grid --count) tasks, 2 at a time"
# No GPU on this node: --gres=none replaces the script's gpu:1; one CPU per task.
export GRADATTN_WORK="$dir/work" GRADATTN_STAGES=evaluate
start=$(date +%s)
MAX_PARALLEL=2 scripts/slurm/submit.sh --gres=none --cpus-per-task=1 --wait \
    --output="$dir/slurm-%A_%a.out"
echo "array job finished in $(( $(date +%s) - start )) s"
for out in "$dir"/slurm-*_*.out; do
    echo "--- $(basename "$out"): $(head -1 "$out")"
    grep -E "^grid:|best val accuracy|Pushing experiment|pushed" "$out" || true
done

echo "== the analyst: clone, dvc exp pull, gradattn table"
git clone -q "$dir/origin.git" "$dir/analyst"
cd "$dir/analyst"
export PYTHONPATH="$dir/analyst"
dvc exp pull origin
dvc exp list --name-only
gradattn table --no-workspace --table 1
