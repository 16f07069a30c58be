"""Every benchmark runs: each `bench/*.py` in its `--quick` mode finishes and prints its table.

Timings are not checked (the machine is noisy); what is checked is that the script still works
with today's code, prints the header of its table and a row for each contender, and that a
benchmark peer that is not installed is skipped with a line saying how to install it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCHES = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in ("__init__", "peers"))


def run_bench(name: str, *args: str, env: dict | None = None) -> str:
    out = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def args_of(name: str, config: Path, tmp: Path, model: Path) -> list:
    """The quick command line of each benchmark against the tiny finished pipeline."""
    return {
        "checkpoint_bench": ["--quick", "--dir", tmp],
        "dead_features": ["--quick", "--config", config],
        "eval_floor": ["--quick", "--config", config],
        "eval_prefix_bench": ["--quick", "--config", config],
        "gpu": ["--quick"],  # no GPU here: it says so and measures the CPU only
        "harvest_bench": ["--quick", "--model", model],
        "lazy_ortho": ["--quick", "--config", config],
        "mutation": ["--quick"],  # checks its plan only: a measurement takes minutes per module
        "pythia_cost": ["--quick"],
        "report_table": ["--quick", tmp / "reports/tiny/report.json"],
        "sketch_noise": ["--quick", tmp / "runs/adaptive"],
        "train_bench": ["--quick"],
    }[name]


# what each table must hold: its header and one row per contender (the smoke check of its output)
EXPECTED = {
    "checkpoint_bench": ["plain s", "digests s", "\nsave ", "\nload "],
    "dead_features": ["| run | λ2_max | dead (all)", "| baseline |", "| seed-form-l0.3 |", "| rms-activity-a0-l30 |"],
    "eval_floor": [
        "| part | seconds | GFLOP | floor s | × the floor |",
        "| blocks |",
        "| sae |",
        "| head |",
        "| head, as before |",
        "| loss |",
        "| loss, as before |",
        "| pass |",
        "| pass, as before |",
        "the pass is ×",
        "nats (bit-identical)",
    ],
    "eval_prefix_bench": ["full forward", "prefix cache", "max |ΔCE per context| 0.00e+00 nats"],
    "gpu": [
        "no CUDA GPU here",
        "the GPU rows are not measured",
        "| device | measurement |",
        "| cpu | 1. harvest tok/s",
        "| cpu | 1. harvest fraction of measured bf16",
        "| cpu | 2. baseline step",
        "| cpu | 2. adaptive step",
        "| cpu | 2. regroup cost",
        "| cpu | 3. ActivationStream rows/s",
    ],
    "harvest_bench": [
        "| compute dtype | full forward tok/s",
        "| float32 |",
        "| bfloat16 |",
        "peak RSS",
        "| layers harvested | tok/s |",
        "| 0 |",
        "| 1 |",
        "| 0, 1 |",
    ],
    "lazy_ortho": [
        "| run | L_ortho",
        "| baseline |",
        "| fixed-every1 |",
        "| fixed-every4 |",
        "| adaptive-every1 |",
        "| adaptive-every4 |",
    ],
    "mutation": ["| module | mutants | killed |", "| eval/matched_damage.py |", "| common/overrides.py |"],
    "pythia_cost": ["harvest to block", "train baseline:", "training, all 4 runs:"],
    "report_table": ["| run | dead | L0 | EV |", "| baseline |", "| adaptive |"],
    "sketch_noise": [
        "| directions | k |",
        "| adaptive (trained, 64×64) | 8 |",
        "| random unit rows (64×64) | 32 |",
        "| bf16 Grams |",
    ],
    "train_bench": [
        "| measurement | size |",
        "1. zarr store → train vs in-memory",
        "2. L_ortho: adaptive (exact",
        "3. ours vs dictionary_learning",
        "3. ours vs sae_lens",
        "4. L_ortho sketched",
    ],
}


def test_every_benchmark_is_in_the_table():
    assert sorted(EXPECTED) == BENCHES


@pytest.mark.parametrize("name", BENCHES)
def test_quick_mode_runs_and_prints_its_table(name, finished_pipeline, tiny_model_dir):
    config, tmp = finished_pipeline
    stdout = run_bench(name, *args_of(name, config, tmp, tiny_model_dir))
    gpu = name == "gpu" and torch.cuda.is_available()  # then the GPU rows come first, and no "no CUDA" line
    missing = [line for line in EXPECTED[name] if line not in stdout and not (gpu and "GPU" in line)]
    assert not missing, f"{name} --quick printed no {missing}:\n{stdout[-3000:]}"
    if name == "gpu":  # nine CPU rows; GPU rows only where there is one
        rows = [line for line in stdout.splitlines() if line.startswith("| ")]
        assert sum(r.startswith("| cpu |") for r in rows) == 9
        assert any(r.startswith("| cuda |") for r in rows) == torch.cuda.is_available()


def test_a_missing_peer_is_skipped_with_how_to_install_it(tmp_path):
    """With dictionary_learning and sae_lens hidden, the library comparison measures ours alone
    and says which peers it skipped and how to install them."""
    hide = tmp_path / "hide"
    hide.mkdir()
    for peer in ("dictionary_learning", "sae_lens"):  # a package that raises ImportError when imported
        (hide / peer).mkdir()
        (hide / peer / "__init__.py").write_text(f"raise ImportError('{peer} hidden by the test')\n")
    env = {**__import__("os").environ, "PYTHONPATH": f"{hide}:{ROOT}"}
    stdout = run_bench("train_bench", "--quick", "--only", "libraries", env=env)
    for peer in ("dictionary_learning", "sae_lens"):
        assert (
            f"skipped: {peer} is not installed ({peer} hidden by the test); install the benchmark peers "
            f"with `bash setup.sh --bench`"
        ) in stdout
        assert f"3. ours vs {peer}" not in stdout
    assert "| measurement | size |" in stdout
