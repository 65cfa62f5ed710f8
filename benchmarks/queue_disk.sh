#!/bin/bash
# Disk use of N queued experiments over the same prepared data: the project's link cache
# type against plain copies. Real Fashion-MNIST (Debian's dataset-fashion-mnist) is prepared
# once in the parent; N experiments (train.seed 1..N) are queued with that data as their
# only target, so each temporary workspace checks the data out and nothing trains; the
# peak disk use of the cache + workspace + queue folders is sampled while they run.
#
#   benchmarks/queue_disk.sh [N]      (default 4; needs /usr/share/datasets/fashion-mnist)
set -euo pipefail
n=${1:-4}
project=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
export DVC_NO_ANALYTICS=1 GIT_AUTHOR_NAME=b GIT_AUTHOR_EMAIL=b@localhost
export GIT_COMMITTER_NAME=b GIT_COMMITTER_EMAIL=b@localhost

kib() { du -sk "$@" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }

for type in "reflink,hardlink,symlink,copy" copy; do
    dir=$(mktemp -d /tmp/gradattn-disk.XXXXXX)
    git -C "$project" archive HEAD | tar -x -C "$dir"
    cd "$dir"
    export PYTHONPATH="$dir"
    python - <<'PY'
import yaml
p = yaml.safe_load(open("params.yaml"))
p["data"]["datasets"] = ["fashionmnist"]
p["data"]["sources"]["fashionmnist"] = "/usr/share/datasets/fashion-mnist"
p["models"] = ["resnet18"]
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
PY
    git init -q && dvc config cache.type "$type"
    dvc repro -q preprocess@fashionmnist
    git add -A && git commit -qm "fashionmnist prepared"
    for seed in $(seq "$n"); do
        dvc exp run -q --queue preprocess@fashionmnist -S "train.seed=$seed"
    done
    prepared=$(kib data/prepared/fashionmnist)
    raw=$(kib data/raw/fashionmnist)
    before=$(kib .dvc data)  # du counts a hard-linked file once per call
    dvc queue start -j "$n" >/dev/null
    peak=$before; peak_exps=0
    # (The status is read whole first: `grep -q` closing the pipe early would fail it.)
    while status=$(dvc queue status 2>/dev/null) && grep -qE "Queued|Running" <<<"$status"; do
        now=$(kib .dvc data)
        exps=$(ls -d .dvc/tmp/exps/tmp*/data/prepared 2>/dev/null | wc -l || true)
        if [ "$now" -gt "$peak" ]; then peak=$now; peak_exps=$exps; fi
        sleep 0.2
    done
    done_ok=$(dvc queue status | grep -c Success || true)
    echo "cache.type=$type: $n experiments ($done_ok succeeded); data per copy:" \
         "raw $((raw / 1024)) MiB + prepared $((prepared / 1024)) MiB;" \
         "disk before the queue $((before / 1024)) MiB, peak $((peak / 1024)) MiB" \
         "(+$(((peak - before) / 1024)) MiB with $peak_exps workspaces holding data/)"
    cd / && rm -rf "$dir"
done
