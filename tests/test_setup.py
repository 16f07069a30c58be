"""setup.sh with a stand-in venv whose pip prints what real pip prints: cheap, offline, no installs."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Answers `python -m pip ...` with pip's wall of notices (and an error for a package named in
# FAIL_ON), `python -c "import torch"` with success; records every call.
FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/calls"
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "DEPRECATION: Legacy editable install of orthosae==0.1.0 is deprecated. !!"
  echo "        !!" >&2
  echo "WARNING: Location '/usr/local/lib/python3/site-packages' is ignored" >&2
  if [ -n "${FAIL_ON:-}" ]; then
    case "$*" in *"$FAIL_ON"*) echo "ERROR: No matching distribution found for $FAIL_ON" >&2; exit 1;; esac
  fi
  exit 0
fi
[ "$1" = "-c" ] && [ "$2" != "import torch" ] && echo "2.13.0"
exit 0
"""


def run_setup(tmp_path: Path, *args: str, fail_on: str = "") -> subprocess.CompletedProcess:
    (tmp_path / "setup.sh").write_text((ROOT / "setup.sh").read_text())
    bin_dir = tmp_path / ".venv/bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    return subprocess.run(
        ["bash", str(tmp_path / "setup.sh"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "FAIL_ON": fail_on},
        timeout=60,
    )


def test_clean_setup_says_what_it_installed_and_nothing_alarming(tmp_path):
    out = run_setup(tmp_path, "--test")
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    for alarming in ("DEPRECATION", "!!", "is ignored", "WARNING"):
        assert alarming not in text, text
    assert "setup: torch 2.13.0 already installed, kept" in text
    assert "setup: orthosae and its dependencies" in text and "setup: sae-lens 6.54.12" in text
    calls = (tmp_path / ".venv/bin/calls").read_text().splitlines()
    assert [c for c in calls if "install" in c] == [
        "-m pip install --upgrade pip",
        "-m pip install -e .[test]",
        "-m pip install sae-lens==6.54.12",
        "-m pip install --no-deps dictionary-learning==0.1.0",
        "-m pip install --no-deps sae-bench==0.6.0",
        "-m pip install tabulate",
        "-m pip install --no-deps eai-sparsify==1.3.3 natsort==8.4.0 schedulefree==1.4.1",
        "-m pip install -e .[wandb,trackio]",
    ]


def test_bench_installs_the_benchmark_peers_only(tmp_path):
    out = run_setup(tmp_path, "--bench")
    assert out.returncode == 0, out.stderr
    calls = (tmp_path / ".venv/bin/calls").read_text().splitlines()
    assert [c for c in calls if "install" in c] == [
        "-m pip install --upgrade pip",
        "-m pip install -e .[test]",
        "-m pip install sae-lens==6.54.12",
        "-m pip install --no-deps dictionary-learning==0.1.0",
    ]


def test_an_unknown_option_stops_before_installing_anything(tmp_path):
    out = run_setup(tmp_path, "--tests")
    assert out.returncode == 2
    assert out.stderr.strip() == "setup: unknown option --tests (expected --test or --bench)"
    assert not (tmp_path / ".venv/bin/calls").exists()


@pytest.mark.parametrize("args", [(), ("--test",)])
def test_failed_setup_shows_pips_output_in_full(tmp_path, args):
    out = run_setup(tmp_path, *args, fail_on="-e .[test]")
    assert out.returncode == 1
    assert "ERROR: No matching distribution found for -e .[test]" in out.stderr
    assert "DEPRECATION" in out.stdout + out.stderr and "is ignored" in out.stderr  # the whole log
    assert "setup: failed: orthosae" in out.stderr and "sae-lens" not in out.stdout + out.stderr
