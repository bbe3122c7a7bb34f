#!/usr/bin/env bash
# Get an installable model onto a machine that cannot reach the package registry and takes files only
# in pieces (a lent GPU machine: at most 64 MiB per transfer with the working tree; files kept while warm).
#
#   here:   bash experiments/device/carry_model.sh prepare NAME
#           → .carry/NAME/NAME.part001 ... (56 MiB each, the verified file) and .carry/wheels/gguf-*.whl
#   there:  carry .carry/wheels and one or more parts per call, running after each
#           bash experiments/device/carry_model.sh receive NAME      (copies what arrived to ~/carry/NAME)
#   there:  bash experiments/device/carry_model.sh install NAME
#           → joins the parts, checks the SHA-256 in routealign's table, converts into $ROUTEALIGN_CACHE
#
# The machine there needs torch and transformers; the GGUF reader (`gguf`, pure Python) travels as a wheel.
set -euo pipefail
action=${1:?prepare, receive or install}
name=${2:?an installable model name, see routealign models}
case "$action" in
  prepare)
    routealign models split "$name" --to ".carry/$name" --part-mb 56
    gguf=$(grep '^gguf==' constraints-tested.txt)
    pip download --quiet --no-deps --only-binary=:all: -d .carry/wheels "$gguf"
    ls -l ".carry/$name" .carry/wheels ;;
  receive)
    mkdir -p "$HOME/carry/$name" "$HOME/carry/wheels"
    if [ -d .carry/wheels ]; then cp -n .carry/wheels/* "$HOME/carry/wheels/"; fi
    if [ -d ".carry/$name" ]; then cp -n ".carry/$name"/* "$HOME/carry/$name/"; fi
    ls -l "$HOME/carry/$name" ;;
  install)
    python -c "import gguf" 2>/dev/null || pip install --quiet --no-deps --no-index "$HOME"/carry/wheels/gguf-*.whl
    PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" python -m routealign models pull "$name" --from "$HOME/carry/$name" ;;
  *) echo "unknown action $action (prepare, receive or install)" >&2; exit 2 ;;
esac
