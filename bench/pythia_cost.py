"""What configs/pythia-70m.toml costs on this machine, without the download: random weights of
Pythia-70M's shape (PYTHIA_70M), the config's own sizes.

    python -m bench.pythia_cost [--seconds 15] [--device cpu] [--quick]

Prints the harvest's tokens/s to the config's block (`residual_after_block`, the harvest's
capture, batch × context as configured, compute dtype as configured), the seconds of one SAE
training step per run type at the config's d_sae, batch and activation, and the whole config's
time at those rates (harvest of every corpus's budget; every run's steps; eval not counted).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from orthosae.common.capture import residual_after_block
from orthosae.common.config import load_config
from orthosae.common.model import pick_device, torch_dtype
from orthosae.train.sae import make_sae
from orthosae.train.trainer import Trainer

CONFIG = Path(__file__).resolve().parents[1] / "configs/pythia-70m.toml"
# EleutherAI/pythia-70m-deduped's config.json, the fields that shape the model
PYTHIA_70M = dict(
    vocab_size=50304,
    hidden_size=512,
    num_hidden_layers=6,
    num_attention_heads=8,
    intermediate_size=2048,
    rotary_pct=0.25,
    max_position_embeddings=2048,
)


def _rate(step, seconds: float) -> float:
    """Calls per second of ``step`` over ``seconds`` (after one warm-up call)."""
    step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke check: 0.2 s per rate, batch 64 and d_sae 512 (not the config's cost)",
    )
    args = ap.parse_args()
    if args.quick:
        args.seconds = 0.2
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg, dev = load_config(CONFIG), pick_device(args.device)
    if args.quick:
        train = dataclasses.replace(cfg.train, batch_size=64, d_sae=512)
        cfg = dataclasses.replace(
            cfg,
            train=train,
            runs=[dataclasses.replace(r, train=train) for r in cfg.runs],
            harvest=dataclasses.replace(cfg.harvest, batch_size=2, context_length=64),
        )
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**PYTHIA_70M)).to(dev, torch_dtype(cfg.model.dtype)).eval()
    ids = torch.randint(0, 50000, (cfg.harvest.batch_size, cfg.harvest.context_length), device=dev)
    tok_s = _rate(lambda: residual_after_block(model, cfg.harvest.layer, ids), args.seconds) * ids.numel()
    harvest_tokens = sum(c.tokens for c in cfg.corpora.values())
    print(
        f"harvest to block {cfg.harvest.layer} ({cfg.model.dtype}, {dev}): {tok_s:,.0f} tok/s -> "
        f"{harvest_tokens:,} tokens in {harvest_tokens / tok_s / 60:.1f} min"
    )
    total = 0.0
    x = torch.randn(cfg.train.batch_size, PYTHIA_70M["hidden_size"], device=dev)
    forget = torch.arange(cfg.train.batch_size, device=dev) < cfg.train.batch_size // 3
    for run in cfg.runs:
        steps = cfg.train.tokens // cfg.train.batch_size
        trainer = Trainer(run, make_sae(run, PYTHIA_70M["hidden_size"], device=dev), steps)
        sec = 1 / _rate(lambda: trainer.train_step(x, forget), args.seconds)
        total += sec * steps
        print(f"train {run.name}: {sec:.3f} s/step x {steps} steps = {sec * steps / 60:.1f} min")
    print(f"training, all {len(cfg.runs)} runs: {total / 60:.1f} min")


if __name__ == "__main__":
    main()
