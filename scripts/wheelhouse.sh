#!/usr/bin/env bash
# Wheels of every dependency in one folder, for a node without network:
#   scripts/wheelhouse.sh DIR [--python 3.12] [--platform manylinux_2_28_x86_64 ...] [--with-torch]
#                         [--extra s3] [--extra ssh]   # DVC remotes on S3 / over ssh
#   scripts/install_offline.sh DIR [s3,ssh]            # on the offline node
# Runs with the Python that has pip and packaging (the project's venv; PYTHON=... to choose).
# What it does and why: scripts/wheelhouse.py.
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/wheelhouse.py" "$@"
