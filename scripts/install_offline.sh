#!/usr/bin/env bash
# Install the project on a node without network, from a wheelhouse made by wheelhouse.sh:
#   scripts/install_offline.sh DIR [EXTRAS]  (with the node's venv active, or PYTHON=...)
# EXTRAS: the ones the wheelhouse was made with (--extra s3 --extra ssh: s3,ssh).
# It is `pip install --no-index --find-links DIR -e '.[EXTRAS]'` after one check that pip cannot make
# clearly: a wheelhouse made without --with-torch needs torch and torchvision already
# installed (GPU images ship them); without them pip only says "No matching distribution".
set -euo pipefail
die() { echo "error: $*" >&2; exit 2; }
[ $# -eq 1 ] || [ $# -eq 2 ] || die "usage: scripts/install_offline.sh DIR [EXTRAS] (a folder made by scripts/wheelhouse.sh; EXTRAS e.g. s3,ssh)"
house=$1
target=.${2:+[$2]}
python=${PYTHON:-python}
[ -d "$house" ] || die "wheelhouse $house not found: make it with scripts/wheelhouse.sh $house where there is network"
compgen -G "$house/*.whl" >/dev/null || die "$house holds no wheels: make it with scripts/wheelhouse.sh $house where there is network"
for pkg in torch torchvision; do
  if ! "$python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$pkg') is None)" 2>/dev/null \
     && ! compgen -G "$house/$pkg-[0-9]*.whl" >/dev/null; then
    die "$pkg is neither installed for $python nor in $house: install the node's $pkg build first (pip install torch torchvision from the node's CUDA wheels), or make the wheelhouse with --with-torch"
  fi
done
cd "$(dirname "$0")/.."
exec "$python" -m pip install --no-index --find-links "$house" -e "$target"
