"""What digests cost a checkpoint: the checkpoint write and read with sha256 digests (as
`train/checkpoint.py` does) vs the same files written and read with none, same process, same sizes.

    python -m bench.checkpoint_bench [--d-model 2304] [--d-sae 4096] [--repeats 3] [--dir /tmp] [--quick]

The state is a baseline SAE's checkpoint (W_enc, W_dec, biases and both Adam moments: about
6·d_model·d_sae float32 values). Prints the median seconds of each and their ratio; the figures go
into BENCHMARKS.md with this command. The Gemma-2-2B sweep is 2304 × 16384 (about 0.9 GB a run).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from orthosae.train.checkpoint import _flatten, load_latest, save_checkpoint


def _state(d_model: int, d_sae: int) -> dict:
    g = torch.Generator().manual_seed(0)
    params = {"W_enc": (d_model, d_sae), "W_dec": (d_sae, d_model), "b_enc": (d_sae,), "b_dec": (d_model,)}
    sae = {k: torch.randn(*s, generator=g) for k, s in params.items()}
    moments = {
        k: {"exp_avg": torch.randn(*s, generator=g), "exp_avg_sq": torch.rand(*s, generator=g)}
        for k, s in params.items()
    }
    return {"fingerprint": "bench", "trainer": {"step": 1, "sae": sae, "opt": {"state": moments}}}


def _plain_save(run_dir: Path, state: dict) -> None:
    """The files of a checkpoint and nothing else: no digests, no rotation."""
    folder = run_dir / "plain"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tensors: dict = {}
    meta = _flatten("state", state, tensors)
    save_file(tensors, str(folder / "state.safetensors"))
    (folder / "state.json").write_text(json.dumps(meta))


def _plain_load(run_dir: Path) -> None:
    _copy(load_file(str(run_dir / "plain/state.safetensors")))
    json.loads((run_dir / "plain/state.json").read_text())


def _copy(tensors: dict) -> None:
    """What a resume does with the tensors (``load_state_dict`` copies them); load_file alone only
    maps the file."""
    for t in _tensors(tensors):
        t.clone()


def _load_checked(run_dir: Path) -> None:
    _copy(load_latest(run_dir).state)


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=2304)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: the system temp dir)")
    ap.add_argument("--quick", action="store_true", help="smoke check: 64 × 256, one repeat")
    args = ap.parse_args()
    if args.quick:
        args.d_model, args.d_sae, args.repeats = 64, 256, 1
    state = _state(args.d_model, args.d_sae)
    n_bytes = sum(t.numel() * 4 for t in _tensors(state))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        run_dir = Path(tmp)
        rows = {"save": ([], []), "load": ([], [])}
        for _ in range(args.repeats):  # alternated, so drift in disk or page cache hits both alike
            rows["save"][0].append(_time(lambda: _plain_save(run_dir, state)))
            rows["save"][1].append(_time(lambda: save_checkpoint(run_dir, state)))
            rows["load"][0].append(_time(lambda: _plain_load(run_dir)))
            rows["load"][1].append(_time(lambda: _load_checked(run_dir)))
    print(f"command: python -m bench.checkpoint_bench {shlex.join(sys.argv[1:])}".rstrip())
    print(
        f"checkpoint of {n_bytes / 2**20:,.0f} MiB ({args.d_model} x {args.d_sae}, SAE + Adam), "
        f"median of {args.repeats}; load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)"
    )
    print(f"{'':6} {'plain s':>9} {'digests s':>10} {'ratio':>6}")
    for what, (plain, digested) in rows.items():
        p, d = statistics.median(plain), statistics.median(digested)
        print(f"{what:6} {p:9.3f} {d:10.3f} {d / p:6.2f}")


def _tensors(state: dict) -> list[torch.Tensor]:
    tensors: dict = {}
    _flatten("state", state, tensors)
    return list(tensors.values())


if __name__ == "__main__":
    main()
