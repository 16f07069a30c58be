"""One intervention pass of the unlearning eval against this machine's floor, part by part.

    python -m bench.eval_floor [--config pipeline.toml] [--contexts 16] [--repeats 3] [--quick]

An intervention pass is what the eval runs for every clamp setting and corpus
(`eval.unlearning._ce_per_context` with a clamp spliced in at the layer and blocks 0..L served by
the prefix cache). It has four parts, timed here one by one on the same contexts and then whole:
the blocks after the layer, the SAE edit (a clamp of the config's first run's SAE, random weights),
the LM head's GEMM in the model's dtype, and the loss (float32 logits, soft-capping where the model
has it, cross-entropy).

The floor of a part is its work at this machine's best measured rate for that kind of work:
GEMM FLOPs at the rate of a large square `torch.mm` in the part's dtype (float32 and bfloat16 both
measured), and for the loss one read of the head's logits at the measured copy bandwidth (a fused
kernel must read every logit once). Each part prints "×N the floor"; so does the whole pass.
The contexts are random token ids (timing does not depend on the text), BOS first.
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from orthosae.common.config import load_config
from orthosae.common.model import decoder_layers, load_model
from orthosae.eval.downstream import CE_ROWS_BUDGET, _chunk_len, final_hidden, softcap, splice
from orthosae.eval.prefix import PrefixCache
from orthosae.eval.unlearning import _ce_per_context, clamp_features
from orthosae.train.sae import make_sae

FULL = dict(contexts=16, repeats=3, gemm=2048, copy_mib=512)
QUICK = dict(contexts=4, repeats=1, gemm=256, copy_mib=16)
N_FEATURES = 20  # clamped features: the edit's cost barely depends on how many


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first calls pay for allocation and kernel selection
    return min(_time(fn) for _ in range(repeats))


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def gemm_rate(dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """FLOP/s of one n×n×n `torch.mm` in `dtype` (float32 accumulation for bfloat16), best of repeats."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    return 2 * n**3 / best_seconds(lambda: torch.mm(a, b), repeats)


def copy_bandwidth(mib: int, repeats: int = 5) -> float:
    """Bytes/s moved by a large float32 copy (each element read once and written once)."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / best_seconds(lambda: dst.copy_(src), repeats)


def block_flops_per_token(model, first: int, T: int) -> float:
    """Multiply-adds ×2 of every Linear in blocks first.. plus causal attention (QKᵀ and AV:
    4·heads·head_dim per token and attended position, (T + 1) / 2 positions on average)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    blocks = decoder_layers(model)[first:]
    linear = sum(m.in_features * m.out_features for b in blocks for m in b.modules()
                 if isinstance(m, torch.nn.Linear))
    return 2 * linear + len(blocks) * 4 * heads * head_dim * (T + 1) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="pipeline.toml")
    ap.add_argument("--contexts", type=int, help="contexts in the pass (default 16; --quick 4)")
    ap.add_argument("--repeats", type=int, help="timings per part, the best kept (default 3; --quick 1)")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke check in seconds")
    args = ap.parse_args()
    c = {**(QUICK if args.quick else FULL)}
    c["contexts"] = args.contexts or c["contexts"]
    c["repeats"] = args.repeats or c["repeats"]
    print(f"command: python -m bench.eval_floor {shlex.join(sys.argv[1:])}".rstrip())
    cfg = load_config(args.config)
    lm = load_model(cfg.model.id, revision=cfg.model.revision, dtype=cfg.model.dtype, device="cpu")
    model, layer, bs, T = lm.model, cfg.harvest.layer, cfg.eval.batch_size, cfg.harvest.context_length
    dtype = next(model.parameters()).dtype
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0]
    g = torch.Generator().manual_seed(0)
    ctx = torch.randint(4, vocab, (c["contexts"], T), generator=g)
    ctx[:, 0] = lm.tokenizer.bos_token_id
    run = cfg.runs[0]
    sae = make_sae(run, lm.d_model)
    edit = clamp_features(sae, torch.arange(N_FEATURES), -10.0)
    prefix = PrefixCache(model, layer)
    batches = [ctx[i:i + bs] for i in range(0, len(ctx), bs)]
    step = _chunk_len(model, bs)
    ce_rows = max(1, CE_ROWS_BUDGET // vocab)

    rates = {torch.float32: gemm_rate(torch.float32, c["gemm"]), torch.bfloat16: gemm_rate(torch.bfloat16, c["gemm"])}
    bandwidth = copy_bandwidth(c["copy_mib"])
    with torch.no_grad():
        for ids in batches:  # record blocks 0..L once, as the eval's baseline pass does
            final_hidden(model, ids, prefix=prefix)
        with splice(model, layer, edit):
            hidden = [final_hidden(model, ids, prefix=prefix) for ids in batches]
        resid = [torch.randn(len(ids), T - 1, lm.d_model, generator=g).to(dtype) for ids in batches]

        def blocks():
            with splice(model, layer, edit):
                for ids in batches:
                    final_hidden(model, ids, prefix=prefix)

        def sae_edit():
            for r in resid:
                edit(r)

        def chunks():
            for h, ids in zip(hidden, batches):
                for s in range(0, T - 1, step):
                    yield h[:, s:min(s + step, T - 1)].contiguous(), ids[:, s + 1:min(s + step, T - 1) + 1]

        logits = [head(h) for h, _ in chunks()]

        def head_gemm():
            for h, _ in chunks():
                head(h)

        def loss(rows: int | None = None):  # rows: logit rows per loss call (None: the whole chunk)
            for z, (_, tgt) in zip(logits, chunks()):
                z, tgt = z.flatten(0, 1), tgt.flatten()
                n = rows or len(z)
                for r in range(0, len(z), n):
                    F.cross_entropy(softcap(model, z[r:r + n].float()), tgt[r:r + n], reduction="none")

        def whole():
            with splice(model, layer, edit):
                _ce_per_context(model, ctx, bs, prefix=prefix)

        sec = {name: best_seconds(fn, c["repeats"]) for name, fn in
               (("blocks", blocks), ("sae", sae_edit), ("head", head_gemm), ("loss", lambda: loss(ce_rows)),
                ("loss, whole chunk", loss), ("pass", whole))}

    n_tok = c["contexts"] * T  # the model runs every position; the loss reads T - 1 of them
    n_pred = c["contexts"] * (T - 1)
    sae_dtype = sae.W_dec.dtype
    flops = {"blocks": n_tok * block_flops_per_token(model, layer + 1, T),
             "sae": n_pred * 3 * 2 * lm.d_model * sae.d_sae,  # encode, decode f, decode the clamped f
             "head": n_pred * 2 * lm.d_model * vocab}
    floor = {"blocks": flops["blocks"] / rates[dtype], "sae": flops["sae"] / rates[sae_dtype],
             "head": flops["head"] / rates[dtype], "loss": n_pred * vocab * dtype.itemsize / bandwidth}
    floor["pass"] = sum(floor.values())
    floor["loss, whole chunk"] = floor["loss"]
    notes = {"blocks": f"{len(decoder_layers(model)) - layer - 1} blocks after layer {layer}, {dtype_name(dtype)}",
             "sae": f"{run.type} SAE {lm.d_model}×{sae.d_sae}, {dtype_name(sae_dtype)}, clamp of {N_FEATURES} features",
             "head": f"{lm.d_model}×{vocab:,}, {dtype_name(dtype)}, {min(step, T - 1)} positions a call",
             "loss": f"logits to float32, soft-cap, cross-entropy, {ce_rows} rows a call (`token_ce`); "
                     "floor: one read of the logits",
             "loss, whole chunk": f"the same, {bs * min(step, T - 1)} rows a call (the eval before CE_ROWS_BUDGET)",
             "pass": "`_ce_per_context` under the clamp, prefix cache warm"}
    print(f"{c['contexts']} contexts × {T} tokens, batch {bs}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU\n"
          f"measured rates: GEMM {c['gemm']}³ float32 {rates[torch.float32] / 1e9:,.1f} GFLOP/s, bfloat16 "
          f"{rates[torch.bfloat16] / 1e9:,.1f} GFLOP/s; copy {bandwidth / 1e9:,.1f} GB/s\n")
    print("| part | seconds | GFLOP | floor s | × the floor | what |")
    print("|---|---:|---:|---:|---:|---|")
    for part in ("blocks", "sae", "head", "loss", "loss, whole chunk", "pass"):
        gf = f"{sum(flops.values()) / 1e9:,.1f}" if part == "pass" else f"{flops.get(part, 0) / 1e9:,.1f}"
        print(f"| {part} | {sec[part]:.3f} | {gf} | {floor[part]:.3f} | ×{sec[part] / floor[part]:.2f} | "
              f"{notes[part]} |")
    parts = sum(sec[p] for p in ("blocks", "sae", "head", "loss"))
    print(f"\nthe parts sum to {parts:.3f} s of the pass's {sec['pass']:.3f} s; "
          f"the pass is ×{sec['pass'] / floor['pass']:.2f} the floor")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


if __name__ == "__main__":
    main()
