#!/usr/bin/env bash
# A study's experiments on a CPU machine, LANES at a time (one core each), resumable.
#
#   scripts/cpu_lanes.sh run    JOBS STUDY_DIR [LANES]   start, or resume after a stop
#   scripts/cpu_lanes.sh status JOBS STUDY_DIR           done / failed / claimed / waiting
#   scripts/cpu_lanes.sh gather JOBS STUDY_DIR           every finished experiment into lane-0
#
# JOBS: one experiment a line, `NAME -S key=value ...` (shell words; `$VAR`s are expanded;
# `#` starts a comment); a line `common -S ...` gives -S words that every job gets first. Each lane is a clone of this project's HEAD (STUDY_DIR/lane-K) that
# runs its own code (PYTHONPATH), with one DVC cache shared by all lanes (STUDY_DIR/cache).
# A lane takes the next job nobody has claimed, resets params.yaml (and machine.yaml) to HEAD's and runs
# `dvc exp run -n NAME <its -S>` in its workspace, so a killed job, run again by the same
# lane, resumes from its last checkpoint. Every run gets OMP_NUM_THREADS=1 (so all runs
# record one thread and pool) and `nice`. Logs: STUDY_DIR/logs/NAME.log.
# After `gather`, `cd STUDY_DIR/lane-0 && gradattn table --no-workspace --publish ...`.
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }
usage="usage: scripts/cpu_lanes.sh run|status|gather JOBS STUDY_DIR [LANES]"
[ $# -ge 3 ] || die "$usage"
action=$1 jobs=$2 study=$3 lanes=${4:-2}
[ -f "$jobs" ] || die "jobs file $jobs not found: give a file of 'NAME -S key=value ...' lines"
[[ $lanes =~ ^[1-9][0-9]*$ ]] || die "LANES = '$lanes' is not allowed: a whole number >= 1"
case $action in run|status|gather) ;; *) die "'$action' is not an action. $usage" ;; esac
[ "$action" = status ] || command -v dvc >/dev/null \
  || die "dvc not found: activate the project's environment first"
project=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
jobs=$(realpath "$jobs")
mkdir -p "$study/state" "$study/logs" "$study/cache"
study=$(realpath "$study")

names() { grep -v '^[[:space:]]*\(#\|$\)' "$jobs" | awk '$1 != "common" {print $1}'; }
words_of() {  # the rest of the line whose first word is $1
  grep -v '^[[:space:]]*#' "$jobs" | awk -v n="$1" '$1 == n {sub(/^[^[:space:]]+[[:space:]]*/, ""); print}'
}
args_of() {  # the -S words of job $1 (common ones first), expanded as the shell would
  eval "job_args=($(words_of common | tr '\n' ' ') $(words_of "$1"))"
}
dup=$(names | sort | uniq -d | head -1)
[ -z "$dup" ] || die "job name '$dup' appears twice in $jobs: names must be unique"

lane_dir() { echo "$study/lane-$1"; }

make_lane() {
  local dir
  dir=$(lane_dir "$1")
  [ -d "$dir/.git" ] && return
  [ -z "$(git -C "$project" status --porcelain --untracked-files=no)" ] \
    || die "$project has uncommitted changes: commit them (a study runs a commit) and rerun"
  git clone -q "$project" "$dir"
  (cd "$dir" && dvc cache dir --local "$study/cache" >/dev/null)
}

# A job is claimed by mkdir (atomic), and stays with its lane: a resumed lane finishes its
# own unfinished job first, from its checkpoint.
next_job() {
  local lane=$1 name
  for name in $(names); do
    [ -e "$study/state/$name.done" ] || [ -e "$study/state/$name.failed" ] && continue
    if [ -d "$study/state/$name.claim" ]; then
      [ "$(cat "$study/state/$name.claim/lane" 2>/dev/null)" = "$lane" ] && { echo "$name"; return; }
      continue
    fi
  done
  for name in $(names); do
    [ -e "$study/state/$name.done" ] || [ -e "$study/state/$name.failed" ] && continue
    if mkdir "$study/state/$name.claim" 2>/dev/null; then
      echo "$lane" > "$study/state/$name.claim/lane"
      echo "$name"; return
    fi
  done
  return 1
}

run_lane() {
  local lane=$1 dir name
  dir=$(lane_dir "$lane")
  while name=$(next_job "$lane"); do
    args_of "$name"
    echo "$(date -u +%FT%TZ) lane $lane: $name started"
    # Both settings files as committed (an earlier job's -S rewrote them); machine.yaml only
    # where the lane's code has one (older clones keep data.sources in params.yaml).
    git -C "$dir" checkout -q HEAD -- params.yaml $(git -C "$dir" ls-files machine.yaml)
    local rc=0
    (cd "$dir" && PYTHONPATH="$dir" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
       nice -n 10 dvc exp run -n "$name" "${job_args[@]}") >>"$study/logs/$name.log" 2>&1 || rc=$?
    if [ $rc -eq 0 ]; then
      touch "$study/state/$name.done"
      echo "$(date -u +%FT%TZ) lane $lane: $name done"
    elif [[ $rc =~ ^(130|137|143|252)$ ]]; then
      # stopped (INT, KILL, TERM; 252: DVC's own exit on Ctrl-C), not a failure; DVC's
      # failures exit 255, so "above 128" would not do
      echo "$(date -u +%FT%TZ) lane $lane: $name stopped; the same lane resumes it on the next run"
      return
    else
      touch "$study/state/$name.failed"
      echo "$(date -u +%FT%TZ) lane $lane: $name FAILED (log: $study/logs/$name.log)"
    fi
  done
}

case $action in
  run)
    for ((k = 0; k < lanes; k++)); do make_lane "$k"; done
    rm -f "$study"/state/*.failed  # a rerun tries failed jobs again
    pids=()
    for ((k = 0; k < lanes; k++)); do run_lane "$k" & pids+=($!); done
    trap 'kill "${pids[@]}" 2>/dev/null; echo "stopped: rerun the same command to resume" >&2; exit 130' INT TERM
    wait "${pids[@]}"
    ;;
  status)
    for name in $(names); do
      if [ -e "$study/state/$name.done" ]; then s=done
      elif [ -e "$study/state/$name.failed" ]; then s=failed
      elif [ -d "$study/state/$name.claim" ]; then s="claimed by lane $(cat "$study/state/$name.claim/lane")"
      else s=waiting; fi
      echo "$name: $s"
    done
    ;;
  gather)
    dest=$(lane_dir 0)
    [ -d "$dest/.git" ] || die "no lane-0 in $study: run the study first"
    for dir in "$study"/lane-*; do
      [ "$dir" = "$dest" ] && continue
      # Finished experiments only: a lane's refs/exps/exec/* belong to its run in progress,
      # and fetching them over lane-0's would break lane-0's own run.
      mapfile -t done_refs < <(git -C "$dir" for-each-ref --format='%(refname)' refs/exps \
        | grep -v '^refs/exps/\(exec\|celery\)/' || true)
      specs=()
      for ref in "${done_refs[@]}"; do specs+=("+$ref:$ref"); done
      [ ${#specs[@]} -eq 0 ] || git -C "$dest" fetch -q "$dir" "${specs[@]}"
    done
    echo "lane-0 holds $(git -C "$dest" for-each-ref refs/exps | grep -vc 'refs/exps/\(exec\|celery\)' ) experiment ref(s)"
    ;;
esac
