#!/usr/bin/env bash
# The dead-layer ablations of issue 31 (item 2) on a CPU, in one command:
#
#     bash scripts/dead_layers_ablations.sh OUT CIFAR [JOBS]
#
# CIFAR is the CIFAR-10 JPEG copy: its folder (train/ and test/ class folders) or the
# cifar10-jpeg.tar.gz itself (unpacked under $TMPDIR). JOBS (default
# scripts/studies/dead-layers-ablations.jobs) holds one run a line: NAME and its options of
# scripts/dead_layers.py (`common` gives every run's first options). OUT gets NAME.json and
# NAME.log per run and summary.txt.
#
# Runs go DEAD_LAYERS_LANES at a time (default 2), each on one thread (OMP_NUM_THREADS=1 and
# the script's own torch.set_num_threads(1)) under `nice -n 10`. Stopped and started again,
# the runner skips every run whose JSON is finished (it holds test_acc) and the script
# resumes an unfinished one from its checkpoint (OUT/NAME.json.ckpt, written every epoch),
# so at most an epoch is lost. About an hour a run on this project's 2-core CPU.
#
# DEAD_LAYERS_CPU=1 is a dry run of the plumbing: every run on a 200-image subset for 2
# epochs (OUT should then be a scratch folder). The python is $PYTHON (default python3,
# with the project's environment active); the repo is imported from its tree.

set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "error: $*" >&2; exit 2; }
[ $# -ge 2 ] && [ $# -le 3 ] \
    || die "usage: bash scripts/dead_layers_ablations.sh OUT CIFAR [JOBS]  (CIFAR: the JPEG copy's folder or its .tar.gz)"
OUT=$1 CIFAR=$2 JOBS=${3:-scripts/studies/dead-layers-ablations.jobs}
PY=${PYTHON:-python3}
LANES=${DEAD_LAYERS_LANES:-2}
[[ $LANES =~ ^[1-9][0-9]*$ ]] || die "DEAD_LAYERS_LANES = '$LANES' is not allowed: a whole number >= 1"
[ -f "$JOBS" ] || die "jobs file $JOBS not found: give a file of 'NAME --option ...' lines"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1

if [ -f "$CIFAR" ]; then
    unpacked=${TMPDIR:-/tmp}/gradattn-cifar10-jpeg
    mkdir -p "$unpacked"
    [ -d "$unpacked/train" ] || tar xzf "$CIFAR" -C "$unpacked"
    CIFAR=$unpacked
fi
[ -d "$CIFAR/train" ] && [ -d "$CIFAR/test" ] \
    || die "$CIFAR has no train/ and test/ folders: give the CIFAR-10 JPEG copy (folder or .tar.gz)"

mkdir -p "$OUT"
exec 9> "$OUT/.runner.lock"
flock -n 9 || die "another runner is using $OUT: wait for it, or give another folder"

jobs_lines() { grep -v '^[[:space:]]*\(#\|$\)' "$JOBS"; }
read -r -a common <<< "$(jobs_lines | awk '$1 == "common" {$1 = ""; print}')"
dry=()  # after each run's own options: the last of a repeated option counts
if [ "${DEAD_LAYERS_CPU:-0}" = 1 ]; then
    dry=(--n-train 200 --n-val 100 --n-test 100 --probe-size 100 --probe-batches 1 --epochs 2)
fi
mapfile -t names < <(jobs_lines | awk '$1 != "common" {print $1}')
dup=$(printf '%s\n' "${names[@]}" | sort | uniq -d | head -1)
[ -z "$dup" ] || die "run name '$dup' appears twice in $JOBS: names must be unique"

finished() { [ -s "$1" ] && "$PY" -c 'import json, sys; sys.exit(0 if "test_acc" in json.load(open(sys.argv[1])) else 1)' "$1"; }
options_of() { read -r -a extra <<< "$(jobs_lines | awk -v n="$1" '$1 == n {$1 = ""; print}')"; }

# Decode the JPEGs once per subset, so the runs below do not race to write the cache.
for name in "${names[@]}"; do
    finished "$OUT/$name.json" && continue
    options_of "$name"
    "$PY" scripts/dead_layers.py --cifar "$CIFAR" "${common[@]}" "${extra[@]}" "${dry[@]}" \
        --decode-only
done

declare -A pid_of=()
failed=0
reap() {  # wait for one run to end; note a failure
    local done_pid rc=0 name
    wait -n -p done_pid || rc=$?
    for name in "${!pid_of[@]}"; do
        if [ "${pid_of[$name]}" = "$done_pid" ]; then
            unset "pid_of[$name]"
            if [ "$rc" = 0 ]; then
                echo "$(date -u +%FT%TZ) $name finished"
            else
                echo "$(date -u +%FT%TZ) $name FAILED (exit $rc): see $OUT/$name.log" >&2
                failed=1
            fi
        fi
    done
}
for name in "${names[@]}"; do
    if finished "$OUT/$name.json"; then
        echo "$name: done already ($OUT/$name.json)"
        continue
    fi
    while [ "${#pid_of[@]}" -ge "$LANES" ]; do reap; done
    options_of "$name"
    resume=""; [ -e "$OUT/$name.json.ckpt" ] && resume=" (resuming from its checkpoint)"
    echo "$(date -u +%FT%TZ) $name started$resume: log $OUT/$name.log"
    nice -n 10 "$PY" scripts/dead_layers.py --cifar "$CIFAR" "${common[@]}" "${extra[@]}" \
        "${dry[@]}" --out "$OUT/$name.json" >> "$OUT/$name.log" 2>&1 &
    pid_of[$name]=$!
done
while [ "${#pid_of[@]}" -gt 0 ]; do reap; done

done_json=()
for name in "${names[@]}"; do [ -s "$OUT/$name.json" ] && done_json+=("$OUT/$name.json"); done
[ "${#done_json[@]}" -eq 0 ] || "$PY" scripts/dead_layers.py --summary "${done_json[@]}" | tee "$OUT/summary.txt"
exit "$failed"
