#!/usr/bin/env bash
# Fresh-machine setup: a .venv with CPU torch and orthosae (`pipe`). `--test` adds the test peers.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned torch pulls gigabytes of CUDA wheels (on a GPU box, install
# the CUDA build of your choice before running this script; pip then keeps it).
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
if [ "${1:-}" = "--test" ]; then
  # Peers the tests cross-check against. sae-lens installs cleanly beside torch 2.13; sae-bench
  # would pull torch 2.15 + CUDA and pin numpy 1.26, so it goes in without its dependencies.
  python -m pip install -q sae-lens==6.54.12
  python -m pip install -q --no-deps sae-bench==0.6.0
  python -m pip install -q tabulate  # the one module sae-bench's core and unlearning evals import that we lack
fi
