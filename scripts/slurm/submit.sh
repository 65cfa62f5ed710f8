#!/bin/bash
# Submit the whole study as one SLURM array job: one task per `gradattn grid` cell, at most
# $MAX_PARALLEL at a time (default 8). Run from the project root, after pushing HEAD to
# origin; extra arguments go to sbatch (e.g. --partition=gpu).
set -euo pipefail
count=$(gradattn grid --count)
exec sbatch --array="0-$((count - 1))%${MAX_PARALLEL:-8}" "$@" scripts/slurm/grid.sbatch
