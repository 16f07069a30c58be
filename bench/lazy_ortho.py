"""What lazy L_ortho (`[train.ortho] every = k`) changes in the trained SAEs, on a real store.

    python -m bench.lazy_ortho [--config pipeline.toml] [--every 4] [--quick]

Trains, from the config's (already harvested) store and with its [train] / [train.ortho]
settings, a baseline and the fixed and adaptive SAEs with `every = 1` and `every = k`, all in one
pass (runs go to a temporary folder; the config's own runs are left alone). Prints L_ortho of each
final decoder at unit row norm, with the run's own groups (fixed contiguous blocks for baseline
and fixed runs), beside L0 and explained variance from the training log.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch

from orthosae.common.config import RunConfig, load_config
from orthosae.train import load_sae, train
from orthosae.train.sae import contiguous_groups, is_grouped, ortho_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="pipeline.toml")
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="smoke check: 8 steps of each run")
    args = ap.parse_args()
    cfg = load_config(args.config)
    if args.quick:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, tokens=8 * cfg.train.batch_size))
    k = args.every
    runs = [RunConfig.of("baseline", train=cfg.train, ortho=cfg.ortho)]
    runs += [
        RunConfig.of(kind, f"{kind}-every{e}", train=cfg.train, ortho=cfg.ortho, every=e)
        for kind in ("fixed", "adaptive")
        for e in (1, k)
    ]
    with tempfile.TemporaryDirectory(prefix="lazy_ortho-") as tmp:
        cfg = dataclasses.replace(cfg, runs=runs, train=dataclasses.replace(cfg.train, runs_dir=tmp))
        train(cfg)
        n_groups = cfg.ortho.groups
        print(
            f"\ncommand: python -m bench.lazy_ortho --config {args.config} --every {k}"
            + (" --quick" if args.quick else "")
        )
        print("| run | L_ortho (final W_dec, unit rows, own groups) | L0 | EV |")
        print("|---|---:|---:|---:|")
        for run in runs:
            sae, _ = load_sae(Path(tmp) / run.name)
            groups = sae.groups if is_grouped(sae) else contiguous_groups(sae.d_sae, n_groups)
            with torch.no_grad():
                W = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)  # the export folds the scale in
                lo = ortho_loss(W, groups, n_groups).item()
            last = json.loads((Path(tmp) / run.name / "log.jsonl").read_text().splitlines()[-1])
            print(f"| {run.name} | {lo:.1f} | {last['l0']:.1f} | {last['ev_batch']:.3f} |")


if __name__ == "__main__":
    main()
