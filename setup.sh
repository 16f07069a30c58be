#!/usr/bin/env bash
# Fresh-machine setup: a .venv with CPU torch and orthosae (`pipe`). `--test` adds the test peers,
# `--bench` the libraries the benchmarks race against (both: `--test --bench`; --test includes them).
set -euo pipefail
cd "$(dirname "$0")"
test=0 bench=0
for arg in "$@"; do
  case $arg in
    --test) test=1 bench=1 ;;  # the tests run every benchmark's --quick mode, peers included
    --bench) bench=1 ;;
    *) echo "setup: unknown option $arg (expected --test or --bench)" >&2; exit 2 ;;
  esac
done
# Each step's own output (pip's deprecation notices about editable installs, "Location ... is
# ignored" and the like) goes to a log: a clean run prints one line per step, a failed step prints
# its log in full.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
step() {  # step "what it installs" command...
  local what=$1
  shift
  if "$@" >"$log" 2>&1; then
    echo "setup: $what"
  else
    cat "$log" >&2
    echo "setup: failed: $what ($*)" >&2
    exit 1
  fi
}
[ -x .venv/bin/python ] || step "created .venv" python3 -m venv .venv
. .venv/bin/activate
step "pip upgraded" python -m pip install --upgrade pip
# torch first and pinned: an unpinned torch pulls gigabytes of CUDA wheels (on a GPU box, install
# the CUDA build of your choice before running this script; pip then keeps it).
if python -c "import torch" 2>/dev/null; then
  echo "setup: torch $(python -c 'import torch; print(torch.__version__)') already installed, kept"
else
  step "torch 2.13.0 (CPU)" python -m pip install torch==2.13.0
fi
step "orthosae and its dependencies (editable; the pipe command, pytest)" python -m pip install -e ".[test]"
if [ $bench = 1 ]; then
  step "sae-lens 6.54.12 (benchmark and test peer)" python -m pip install sae-lens==6.54.12
  # dictionary_learning would pull torch 2.15 + CUDA: without its dependencies (bench/peers.py stubs
  # the one it imports for code no benchmark runs, nnsight)
  step "dictionary-learning 0.1.0 without its dependencies (benchmark peer)" \
    python -m pip install --no-deps dictionary-learning==0.1.0
fi
if [ $test = 1 ]; then
  # Peers the tests cross-check against. sae-lens installs cleanly beside torch 2.13; sae-bench
  # would pull torch 2.15 + CUDA and pin numpy 1.26, so it goes in without its dependencies.
  step "sae-bench 0.6.0 without its dependencies (test peer)" python -m pip install --no-deps sae-bench==0.6.0
  # the one module sae-bench's core and unlearning evals import that we lack
  step "tabulate (for sae-bench)" python -m pip install tabulate
  # EleutherAI sparsify's loader reads our sparsify-layout exports in a test; its own pins would pull
  # CUDA torch, so it goes in without dependencies, with the two small modules its import needs
  step "eai-sparsify 1.3.3 without its dependencies (test peer)" \
    python -m pip install --no-deps eai-sparsify==1.3.3 natsort==8.4.0 schedulefree==1.4.1
  # the optional run trackers, so the tests read back what each one logged (offline)
  step "run trackers: orthosae[wandb,trackio]" python -m pip install -e ".[wandb,trackio]"
fi
echo "setup: done, .venv is ready"
