"""One intervention pass of the unlearning eval against this machine's floor, part by part.

    python -m bench.eval_floor [--config pipeline.toml] [--contexts 16] [--repeats 3] [--threads N] [--quick]

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
import os
import shlex
import sys
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from orthosae.common.config import load_config
from orthosae.common.model import decoder_layers, load_configured
from orthosae.eval import downstream
from orthosae.eval.downstream import CE_ROWS_BUDGET, HEAD_ROWS, _chunk_len, final_hidden, softcap, splice, token_ce
from orthosae.eval.prefix import PrefixCache
from orthosae.eval.unlearning import _ce_per_context, clamp_features
from orthosae.train.sae import make_sae

FULL = dict(contexts=16, repeats=5, gemm=2048, copy_mib=512)
QUICK = dict(contexts=4, repeats=1, gemm=256, copy_mib=16)
N_FEATURES = 20  # clamped features: the edit's cost barely depends on how many


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def gemm_rate(dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """FLOP/s of one n×n×n `torch.mm` in `dtype` (float32 accumulation for bfloat16), best of repeats
    after a warm-up (bench/gpu.py's CPU peak)."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    torch.mm(a, b)
    return 2 * n**3 / min(_time(lambda: torch.mm(a, b)) for _ in range(repeats))


@contextmanager
def as_before(head_rows: int):
    """`token_ce` as the eval ran it before HEAD_ROWS and CE_ROWS_BUDGET: head calls of ``head_rows``
    rows, the loss over each whole call at once."""
    saved = downstream.HEAD_ROWS, downstream.CE_ROWS_BUDGET
    downstream.HEAD_ROWS, downstream.CE_ROWS_BUDGET = head_rows, 1 << 62
    try:
        yield
    finally:
        downstream.HEAD_ROWS, downstream.CE_ROWS_BUDGET = saved


def block_flops_per_token(model, first: int, T: int) -> float:
    """Multiply-adds ×2 of every Linear in blocks first.. plus causal attention (QKᵀ and AV:
    4·heads·head_dim per token and attended position, (T + 1) / 2 positions on average)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    blocks = decoder_layers(model)[first:]
    linear = sum(m.in_features * m.out_features for b in blocks for m in b.modules() if isinstance(m, torch.nn.Linear))
    return 2 * linear + len(blocks) * 4 * heads * head_dim * (T + 1) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="pipeline.toml")
    ap.add_argument("--contexts", type=int, help="contexts in the pass (default 16; --quick 4)")
    ap.add_argument(
        "--repeats", type=int, help="rounds, each timing every part once; the best kept (default 5; --quick 1)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: torch's); 1 is immune to the stalls "
        "other processes cause at every multi-threaded op's barrier on a loaded machine",
    )
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke check in seconds")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    c = {**(QUICK if args.quick else FULL)}
    c["contexts"] = args.contexts or c["contexts"]
    c["repeats"] = args.repeats or c["repeats"]
    print(f"command: python -m bench.eval_floor {shlex.join(sys.argv[1:])}".rstrip())
    cfg = load_config(args.config)
    lm = load_configured(cfg.model, "cpu")
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
    batches = [ctx[i : i + bs] for i in range(0, len(ctx), bs)]
    step, step_before = max(1, HEAD_ROWS // bs), _chunk_len(model, bs)  # positions a head call: now, before
    ce_rows = max(1, CE_ROWS_BUDGET // vocab)

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

        def chunks(n: int = step):
            for h, ids in zip(hidden, batches):
                for s in range(0, T - 1, n):
                    yield h[:, s : min(s + n, T - 1)].contiguous(), ids[:, s + 1 : min(s + n, T - 1) + 1]

        logits = {n: [head(h) for h, _ in chunks(n)] for n in (step, step_before)}

        def head_gemm(n: int = step):
            for h, _ in chunks(n):
                head(h)

        def loss(rows: int | None = None, n: int = step):  # rows a loss call (None: the whole head call)
            for z, (_, tgt) in zip(logits[n], chunks(n)):
                z, tgt = z.flatten(0, 1), tgt.flatten()
                n = rows or len(z)
                for r in range(0, len(z), n):
                    F.cross_entropy(softcap(model, z[r : r + n].float()), tgt[r : r + n], reduction="none")

        def whole():
            with splice(model, layer, edit):
                _ce_per_context(model, ctx, bs, prefix=prefix)

        def whole_before():  # the same pass with the head calls and loss calls the eval made before
            with as_before(bs * step_before):
                whole()

        a32, b32 = (torch.randn(c["gemm"], c["gemm"], generator=g) for _ in range(2))
        a16, b16 = a32.bfloat16(), b32.bfloat16()
        src = torch.ones(c["copy_mib"] * 2**20 // 4)
        dst = torch.empty_like(src)
        # every round times each part once, the rates included; the best round of each is kept, so
        # bursts of outside load hit a part only if they hit it in every round
        parts = {
            "gemm float32": lambda: torch.mm(a32, b32),
            "gemm bfloat16": lambda: torch.mm(a16, b16),
            "copy": lambda: dst.copy_(src),
            "blocks": blocks,
            "sae": sae_edit,
            "head": head_gemm,
            "head, as before": lambda: head_gemm(step_before),
            "loss": lambda: loss(ce_rows),
            "loss, as before": lambda: loss(None, step_before),
            "pass": whole,
            "pass, as before": whole_before,
        }
        for fn in parts.values():
            fn()  # warm-up: first calls pay for allocation and kernel selection
        times = {k: [] for k in parts}
        for _ in range(c["repeats"]):
            for k, fn in parts.items():
                times[k].append(_time(fn))
        sec = {k: min(v) for k, v in times.items()}
        # the numbers themselves: token_ce against the eval's computation before this bench's changes
        with as_before(bs * step_before):
            before = [token_ce(model, ids, hidden=h) for h, ids in zip(hidden, batches)]
        diff = max(
            (token_ce(model, ids, hidden=h) - b).abs().max().item() for h, ids, b in zip(hidden, batches, before)
        )
    rates = {dt: 2 * c["gemm"] ** 3 / sec[f"gemm {dtype_name(dt)}"] for dt in (torch.float32, torch.bfloat16)}
    bandwidth = 2 * src.numel() * 4 / sec["copy"]

    n_tok = c["contexts"] * T  # the model runs every position; the loss reads T - 1 of them
    n_pred = c["contexts"] * (T - 1)
    sae_dtype = sae.W_dec.dtype
    flops = {
        "blocks": n_tok * block_flops_per_token(model, layer + 1, T),
        "sae": n_pred * 3 * 2 * lm.d_model * sae.d_sae,  # encode, decode f, decode the clamped f
        "head": n_pred * 2 * lm.d_model * vocab,
    }
    floor = {
        "blocks": flops["blocks"] / rates[dtype],
        "sae": flops["sae"] / rates[sae_dtype],
        "head": flops["head"] / rates[dtype],
        "loss": n_pred * vocab * dtype.itemsize / bandwidth,
    }
    floor["pass"] = sum(floor.values())
    total_flops = sum(flops.values())
    floor["loss, as before"], floor["head, as before"], floor["pass, as before"] = (
        floor["loss"],
        floor["head"],
        floor["pass"],
    )
    flops["head, as before"] = flops["head"]
    notes = {
        "blocks": f"{len(decoder_layers(model)) - layer - 1} blocks after layer {layer}, {dtype_name(dtype)}",
        "sae": f"{run.type} SAE {lm.d_model}×{sae.d_sae}, {dtype_name(sae_dtype)}, clamp of {N_FEATURES} features",
        "head": f"{lm.d_model}×{vocab:,}, {dtype_name(dtype)}, {bs * min(step, T - 1)} rows a call (`token_ce`)",
        "head, as before": f"the same, {bs * min(step_before, T - 1)} rows a call (the eval before HEAD_ROWS)",
        "loss": f"logits to float32, soft-cap, cross-entropy, {ce_rows} rows a call (`token_ce`); "
        "floor: one read of the logits",
        "loss, as before": f"the same on the whole head call, {bs * min(step_before, T - 1)} rows at once "
        "(the eval before CE_ROWS_BUDGET)",
        "pass": "`_ce_per_context` under the clamp, prefix cache warm",
        "pass, as before": "the same with the head and loss calls as the eval made them before",
    }
    print(
        f"{c['contexts']} contexts × {T} tokens, batch {bs}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU, load average {os.getloadavg()[0]:.2f}\n"
        f"measured rates: GEMM {c['gemm']}³ float32 {rates[torch.float32] / 1e9:,.1f} GFLOP/s, bfloat16 "
        f"{rates[torch.bfloat16] / 1e9:,.1f} GFLOP/s; copy {bandwidth / 1e9:,.1f} GB/s\n"
    )
    print("| part | seconds | GFLOP | floor s | × the floor | what |")
    print("|---|---:|---:|---:|---:|---|")
    for part in ("blocks", "sae", "head", "head, as before", "loss", "loss, as before", "pass", "pass, as before"):
        gf = f"{total_flops / 1e9:,.1f}" if part.startswith("pass") else f"{flops.get(part, 0) / 1e9:,.1f}"
        print(
            f"| {part} | {sec[part]:.3f} | {gf} | {floor[part]:.3f} | ×{sec[part] / floor[part]:.2f} | {notes[part]} |"
        )
    parts = sum(sec[p] for p in ("blocks", "sae", "head", "loss"))
    print(
        f"\nthe parts sum to {parts:.3f} s of the pass's {sec['pass']:.3f} s; "
        f"the pass is ×{sec['pass'] / floor['pass']:.2f} the floor (before: ×{sec['pass, as before'] / floor['pass']:.2f}); "
        f"speed-up ×{sec['pass, as before'] / sec['pass']:.2f}"
    )
    print(
        f"token_ce against the eval before HEAD_ROWS and CE_ROWS_BUDGET, every token of these contexts: "
        f"max |ΔCE| {diff:.2e} nats ({'bit-identical' if diff == 0 else 'NOT bit-identical'})"
    )


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


if __name__ == "__main__":
    main()
