"""Dead features against λ2: the prototype's L_ortho form vs the principled one, on a real store.

    python -m bench.dead_features [--config pipeline.toml] [--steps 500] [--quick]

Trains in one pass over the config's (already harvested) store, with its [train] settings: a
baseline, the adaptive SAE with the prototype's choices (alpha_mode = "seed", τ = 0, no regroup
guards) at λ2_max = 0 / 0.3 / 1.0, and the adaptive SAE as configured now (alpha_mode = "rms")
at α below and at the random level and two λ2_max. Dead = never active on the held-out rows; reported overall and per learned group
(group 1 = forget-leaning), beside L0, EV and the RMS cross-group cosine of the decoder. Runs go to
a temporary folder; the config's own runs are left alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import torch

from orthosae.common.config import RunConfig, load_config
from orthosae.common.store import open_store_for
from orthosae.eval.conditioning import conditioning_report
from orthosae.eval.core import reconstruction_metrics
from orthosae.train import load_sae, train
from orthosae.train.sae import is_grouped

PROTOTYPE = dict(alpha_mode="seed", tau=0.0, regroup_margin=0.0, regroup_min_mass=0.0, alpha=0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="pipeline.toml")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--rms-lambda2", type=float, nargs="+", default=[3.0, 30.0])
    ap.add_argument(
        "--rms-alpha",
        type=float,
        nargs="+",
        default=[0.0, 0.04],
        help="α of the rms runs: below and at the random level 1/√d_model",
    )
    ap.add_argument("--rms-weighting", nargs="+", default=["uniform", "activity"], choices=["uniform", "activity"])
    ap.add_argument("--no-prototype", action="store_true", help="leave out the seed-form runs")
    ap.add_argument("--quick", action="store_true", help="smoke check: 5 steps, one rms run")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rms_lambda2, args.rms_alpha, args.rms_weighting = 5, [30.0], [0.0], ["activity"]
    cfg = load_config(args.config)
    base = dict(train=cfg.train, ortho=cfg.ortho)
    runs = [RunConfig.of("baseline", **base)]
    if not args.no_prototype:
        runs += [
            RunConfig.of("adaptive", f"seed-form-l{lam}", lambda2_max=lam, **PROTOTYPE, **base)
            for lam in (0.0, 0.3, 1.0)
        ]
    runs += [
        RunConfig.of(
            "adaptive", f"rms-{wt}-a{a:g}-l{lam:g}", lambda2_max=lam, alpha_mode="rms", alpha=a, weighting=wt, **base
        )
        for wt in args.rms_weighting
        for a in args.rms_alpha
        for lam in args.rms_lambda2
    ]
    reader = open_store_for(cfg)
    heldout = [n for n, c in cfg.corpora.items() if c.split == "heldout"]
    with tempfile.TemporaryDirectory(prefix="dead_features-") as tmp:
        tr = dataclasses.replace(cfg.train, runs_dir=tmp, tokens=args.steps * cfg.train.batch_size)
        train(dataclasses.replace(cfg, runs=runs, train=tr))
        print(
            f"\ncommand: python -m bench.dead_features --config {args.config} --steps {args.steps} "
            f"--rms-lambda2 {' '.join(map(str, args.rms_lambda2))} --rms-alpha {' '.join(map(str, args.rms_alpha))} "
            f"--rms-weighting {' '.join(args.rms_weighting)}" + (" --no-prototype" if args.no_prototype else "")
        )
        print(f"random RMS cosine 1/√d_model = {reader.d_model**-0.5:.4f}\n")
        print(
            "| run | λ2_max | dead (all) | dead, group 0 / 1 (retain / forget-leaning) | group sizes | L0 | EV | RMS cross cos |"
        )
        print("|---|---:|---:|---|---|---:|---:|---:|")
        for run in runs:
            sae, _ = load_sae(Path(tmp) / run.name)
            active = torch.zeros(sae.d_sae, dtype=torch.bool)
            batches = [
                reader.read_rows(n, s, min(s + 4096, reader.corpora()[n].n_rows))
                for n in heldout
                for s in range(0, reader.corpora()[n].n_rows, 4096)
            ]
            with torch.no_grad():
                for x in batches:
                    active |= (sae.encode(x) > 0).any(0)
            rec = reconstruction_metrics(sae, batches)
            if is_grouped(sae):
                per = [f"{(~active[sae.groups == g]).float().mean().item():.1%}" for g in range(sae.n_groups)]
                sizes = " / ".join(str(int((sae.groups == g).sum())) for g in range(sae.n_groups))
                cos = conditioning_report(sae)["pairs"][0]["decoder_rms_cross_cos"]
            else:
                per, sizes, cos = ["–"], "–", float("nan")
            lam = f"{run.ortho.lambda2_max:g}" if run.has_ortho else "–"
            print(
                f"| {run.name} | {lam} | {(~active).float().mean().item():.1%} | "
                f"{' / '.join(per)} | {sizes} | {rec['l0']:.1f} | {rec['explained_variance']:.3f} | {cos:.4f} |"
            )


if __name__ == "__main__":
    main()
