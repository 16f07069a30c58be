"""One unlearning setting's CE pass with and without the prefix cache, same process, same contexts.

    python -m bench.eval_prefix_bench [--contexts 16] [--repeats 3] [--config pipeline.toml] [--quick]

Loads the embedded default's model (pipeline.toml's [model] and [harvest] layer), takes
held-out-like contexts from the store, and alternates, ``repeats`` times, (a) a full forward of
every context with a clamp spliced in at the layer (what each setting cost before) and (b) the same
with ``eval.prefix.PrefixCache`` serving blocks 0..L (recorded once, outside the timing), then
prints the median seconds of each and their ratio, and the largest CE difference between the two.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from orthosae.common.config import load_config
from orthosae.common.model import load_configured
from orthosae.common.store import StoreReader
from orthosae.eval.downstream import splice
from orthosae.eval.prefix import PrefixCache
from orthosae.eval.unlearning import _ce_per_context


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--config", default="pipeline.toml")
    ap.add_argument("--quick", action="store_true", help="smoke check: 2 contexts, one repeat")
    args = ap.parse_args()
    if args.quick:
        args.contexts, args.repeats = 2, 1
    cfg = load_config(args.config)
    lm = load_configured(cfg.model, "cpu")
    reader = StoreReader(cfg.harvest.store)
    ctx = reader.contexts("forget_heldout", 0, args.contexts, lm.tokenizer.bos_token_id)
    layer, bs = cfg.harvest.layer, cfg.eval.batch_size
    d = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    d = d / d.norm()

    def edit(r):  # a cheap stand-in for a clamp: the cost under test is the model's, not the SAE's
        x = r.float()
        return (x - (x @ d)[..., None] * d).to(r.dtype)

    prefix = PrefixCache(lm.model, layer)
    with torch.no_grad():
        _ce_per_context(lm.model, ctx, bs, prefix=prefix)  # records block L's output
        full, cached, diff = [], [], 0.0
        for _ in range(args.repeats):
            with splice(lm.model, layer, edit):
                t = time.perf_counter()
                a = _ce_per_context(lm.model, ctx, bs)
                full.append(time.perf_counter() - t)
                t = time.perf_counter()
                b = _ce_per_context(lm.model, ctx, bs, prefix=prefix)
                cached.append(time.perf_counter() - t)
            diff = max(diff, float(abs(a["sum_all"] / a["n_all"] - b["sum_all"] / b["n_all"]).max()))
    f, c = statistics.median(full), statistics.median(cached)
    print(
        f"{args.contexts} contexts x {ctx.shape[1]} tokens, layer {layer} of {lm.n_layers}, {cfg.model.dtype}, "
        f"batch {bs}: full forward {f:.2f} s, prefix cache {c:.2f} s, ratio {f / c:.2f}x; "
        f"max |ΔCE per context| {diff:.2e} nats"
    )


if __name__ == "__main__":
    main()
