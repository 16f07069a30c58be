"""The figures a GPU user asks first, each beside its goal and beside the same figures on CPU.

    python -m bench.gpu [--quick] [--only harvest|sae|stream] [--device cuda|cpu] [--peak-tflops N]

1. Harvest: tokens/s of the harvest path (forward to block 19 of a Gemma-2-2B-shaped model, random
   weights from its config, bf16; rows copied to pinned memory; zstd chunk writes by the
   ChunkWriter threads, drained at the end of each round) beside the forward alone, and the
   harvest's fraction of the GPU's peak dense bf16 FLOP/s (goal ≥ 40 %). FLOPs per token:
   2 × the matmul weights of blocks 0..19 + causal attention, 4 · heads · head_dim · (T + 1) / 2
   per block (T ≤ the 4096 sliding window); the later blocks and the LM head never run.
2. SAE step: ms per `Trainer.train_step` at 2304 × 16384, batch 4096, for each run type of
   configs/gemma-2-2b.toml (λ2 on from the first timed step), TF32 off and on; our baseline's speed
   over sae-lens' `SAETrainer._train_step` (StandardTrainingSAE) and dictionary_learning's
   `StandardTrainer.update` on the same batches (goal ≥ 1.5×; a library not installed is said so
   and skipped). Regroup: one `Trainer.regroup` over `regroup_every` adaptive steps (goal < 5 %).
3. Stream: `ActivationStream` rows/s into the GPU from a bf16 zstd store with the reference chunks
   and buffer (1,048,576 rows), across window boundaries, after the first batch (the first window's
   read is paid once per run); goal ≥ 0.7M rows/s. Also its longest wait for a batch and the
   process's peak RSS meanwhile, beside the bound (two windows as stored).

Every part runs on the GPU (when CUDA is present) and on the CPU, one table with a device column.
The CPU runs smaller sizes (its steps take seconds, not milliseconds: the CPU rows say which), and
its "peak" is the bf16 rate of a large `torch.mm` measured in the same run (`bench/eval_floor.py`),
so its fraction says how close the harvest comes to this CPU's own GEMM rate. On a machine without
CUDA it says so, measures the CPU and exits 0; `--quick` shrinks every size to a smoke check (the
test suite runs it). Contenders alternate in short rounds (order rotated each round); figures are
medians over rounds, ratios medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from bench.eval_floor import gemm_rate
from bench.peers import missing_peer, standard_trainer_class

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "configs/gemma-2-2b.toml"
LAYER = 19
# chunks: contexts per harvest chunk (the reference's 16 × 1024 tokens); steps: (per round, rounds);
# model: changes to Gemma-2-2B's config (quick sizes keep its shape of blocks, smaller); stream_ctx:
# (contexts per chunk, context length, d_model) of the streamed store
FULL = dict(
    T=1024,
    contexts=16,
    harvest_chunks=24,
    harvest_rounds=3,
    d_sae=16384,
    batch=4096,
    steps=(10, 5),
    buffer=1_048_576,
    windows=2.5,
)
QUICK = dict(
    T=256,
    contexts=16,
    harvest_chunks=4,
    harvest_rounds=2,
    d_sae=4096,
    batch=1024,
    steps=(3, 2),
    buffer=131_072,
    windows=2.5,
)
# the CPU's sizes: the same model and SAE widths, fewer tokens and rows (a 2304 × 16384 step at batch
# 4096 takes ~13 s on a 2-core CPU)
CPU = dict(
    T=256,
    contexts=2,
    harvest_chunks=2,
    harvest_rounds=2,
    d_sae=16384,
    batch=512,
    steps=(1, 2),
    buffer=65_536,
    windows=2.5,
)
CPU_QUICK = dict(
    T=32,
    contexts=2,
    harvest_chunks=2,
    harvest_rounds=1,
    d_sae=256,
    batch=64,
    steps=(1, 1),
    buffer=512,
    windows=2.5,
    layer=1,
    d=64,
    stream_ctx=(2, 32),
    model=dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        query_pre_attn_scalar=32,
        vocab_size=512,
    ),
)
SIZES = {("cuda", False): FULL, ("cuda", True): QUICK, ("cpu", False): CPU, ("cpu", True): CPU_QUICK}
# dense bf16 tensor-core peak, TFLOP/s, by device name (first match); others: --peak-tflops
PEAK_BF16_TFLOPS = [
    ("H200", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
]


def gemma2_2b_config(**changes):
    """Gemma-2-2B's architecture (google/gemma-2-2b config.json), without downloading anything;
    ``changes`` shrink it for a smoke check."""
    from transformers import Gemma2Config

    return Gemma2Config(
        **{
            **dict(
                vocab_size=256000,
                hidden_size=2304,
                intermediate_size=9216,
                num_hidden_layers=26,
                num_attention_heads=8,
                num_key_value_heads=4,
                head_dim=256,
                hidden_activation="gelu_pytorch_tanh",
                query_pre_attn_scalar=256,
                sliding_window=4096,
                attn_logit_softcapping=50.0,
                final_logit_softcapping=30.0,
                bos_token_id=2,
                eos_token_id=1,
                pad_token_id=0,
            ),
            **changes,
        }
    )


def flops_per_token(cfg, blocks: int, T: int) -> float:
    d, h, kv, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    weights = d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * cfg.intermediate_size  # q, k, v, o, MLP
    return blocks * (2 * weights + 4 * h * hd * (T + 1) / 2)


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((tf for key, tf in PEAK_BF16_TFLOPS if key in name), None)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleave(contenders: dict, steps: int, rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per step of each contender per round; order rotated every round."""
    for run in contenders.values():
        run(warmup)
    names, out = list(contenders), {k: [] for k in contenders}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            out[name].append(contenders[name](steps) / steps)
    return out


def ratio(sec: dict, fast: str, slow: str) -> tuple[float, float, float]:
    """Median, min and max over rounds of speed(fast) / speed(slow)."""
    r = [b / a for a, b in zip(sec[fast], sec[slow])]
    return statistics.median(r), min(r), max(r)


# ------------------------------------------------------------------------------------------ harvest


def bench_harvest(c: dict, device, tmp: Path, peak: float | None) -> list[tuple]:
    from transformers import AutoModelForCausalLM

    from orthosae.common.capture import residual_after_block
    from orthosae.common.store import CorpusPlan, StoreWriter
    from orthosae.harvest.runner import _chunk_activations
    from orthosae.harvest.writer import ChunkWriter

    mcfg, layer = gemma2_2b_config(**c.get("model", {})), c.get("layer", LAYER)
    with torch.device(device):  # random weights made on the GPU: seconds, not minutes
        model = AutoModelForCausalLM.from_config(mcfg, dtype=torch.bfloat16)
    model.eval().requires_grad_(False)
    T, n_ctx, chunks = c["T"], c["contexts"], c["harvest_chunks"]
    g = torch.Generator().manual_seed(0)
    ctx = torch.randint(3, mcfg.vocab_size, (chunks, n_ctx, T), generator=g, dtype=torch.int32).numpy()
    ctx[..., 0] = mcfg.bos_token_id
    cfg = SimpleNamespace(harvest=SimpleNamespace(batch_size=16, layer=layer, storage_dtype="bfloat16"))
    ident = {
        "model_id": "bench",
        "revision": None,
        "file_sha256": None,
        "layer": layer,
        "hook": "resid_post",
        "d_model": mcfg.hidden_size,
        "storage_dtype": "bfloat16",
        "context_length": T,
        "tokenizer": "t",
        "bos_policy": "x",
    }
    store = StoreWriter(str(tmp / "harvest.zarr"), ident)
    plan = CorpusPlan(
        name="c",
        role="retain",
        split="train",
        source="x",
        fingerprint="f",
        tokens_fingerprint="t",
        n_contexts=chunks * n_ctx,
        context_length=T,
        contexts_per_chunk=n_ctx,
    )
    store.ensure_corpus(plan)

    def harvest_round(n: int) -> float:  # n: rounds of all chunks, the writer drained at the end
        t = time.perf_counter()
        for _ in range(n):
            with ChunkWriter(store) as writer:
                for k in range(chunks):
                    writer.submit(plan, k, _chunk_activations(model, cfg, ctx[k], device, [layer])[layer], ctx[k])  # noqa: F821 - called before `del model`
        return time.perf_counter() - t

    def forward_round(n: int) -> float:
        sync(device)
        t = time.perf_counter()
        for _ in range(n):
            for k in range(chunks):
                for i in range(0, n_ctx, 16):
                    residual_after_block(model, layer, torch.from_numpy(ctx[k, i : i + 16].astype(np.int64)).to(device))  # noqa: F821
        sync(device)
        return time.perf_counter() - t

    sec = interleave({"harvest": harvest_round, "forward": forward_round}, 1, c["harvest_rounds"])
    tokens = chunks * n_ctx * T
    harvest_tok_s, forward_tok_s = (
        tokens / statistics.median(sec["harvest"]),
        tokens / statistics.median(sec["forward"]),
    )
    flops = flops_per_token(mcfg, layer + 1, T)
    achieved = harvest_tok_s * flops / 1e12
    frac = achieved / peak if peak else None
    rel, lo, hi = ratio(sec, "harvest", "forward")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    shape = "Gemma-2-2B shape" if "model" not in c else f"Gemma-2 shape, d_model {mcfg.hidden_size}"
    size = f"{shape} to L{layer}, T {T}, {chunks * n_ctx} contexts, batch 16, bf16"
    peak_what = "peak bf16 FLOP/s" if device.type == "cuda" else "measured bf16 GEMM rate"
    return [
        (
            "1. harvest tok/s (forward + pinned copy + zstd writes)",
            size,
            f"{harvest_tok_s:,.0f} tok/s",
            "",
            None,
            f"forward alone {forward_tok_s:,.0f} tok/s; harvest / forward {rel:.3f} ({lo:.3f}–{hi:.3f})",
        ),
        (
            f"1. harvest fraction of {peak_what} (MFU)",
            size,
            f"{frac:.1%} ({achieved:,.3g} TFLOP/s)" if frac is not None else f"{achieved:,.3g} TFLOP/s",
            "≥ 40 %",
            None if frac is None else frac >= 0.40,
            f"{flops / 1e9:.2f} GFLOP/token; {peak_what} {peak:,.3g} TFLOP/s"
            if peak
            else "peak unknown for this GPU: pass --peak-tflops",
        ),
    ]


# ------------------------------------------------------------------------------------------ SAE step


def reference_runs(c: dict) -> dict:
    """baseline / fixed / adaptive as configs/gemma-2-2b.toml sets them; λ2 on from step 1 (t0 = 1)."""
    from orthosae.common.config import load_config

    cfg = load_config(REFERENCE)
    out = {}
    for name in ("baseline", "fixed-a0.01", "adaptive-a0.0"):
        run = cfg.run(name)
        out[run.type] = dataclasses.replace(
            run,
            ortho=dataclasses.replace(run.ortho, t0=1),
            train=dataclasses.replace(run.train, d_sae=c["d_sae"], batch_size=c["batch"]),
        )
    return out


def sae_lens_step(d: int, d_sae: int, batch: int, lr: float, l1: float, device):
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = StandardTrainingSAE(
        StandardTrainingSAEConfig(d_in=d, d_sae=d_sae, l1_coefficient=l1, l1_warm_up_steps=100, device=str(device))
    )
    cfg = SAETrainerConfig(
        total_training_samples=10**9 * batch,
        train_batch_size_samples=batch,
        lr=lr,
        lr_end=lr,
        lr_warm_up_steps=100,
        device=str(device),
    )
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))

    def step(x):  # SAETrainer.fit's per-batch work, less logging, evals and checkpoints
        trainer._train_step(trainer.sae, x)
        trainer.n_training_steps += 1
        trainer.n_training_samples += batch

    return step


def dictionary_learning_step(d: int, d_sae: int, lr: float, l1: float, device):
    trainer = standard_trainer_class()(
        steps=10**9,
        activation_dim=d,
        dict_size=d_sae,
        layer=0,
        lm_name="bench",
        lr=lr,
        l1_penalty=l1,
        warmup_steps=100,
        sparsity_warmup_steps=100,
        seed=0,
        device=str(device),
        wandb_name=None,
    )
    count = [0]

    def step(x):
        trainer.update(count[0], x)
        count[0] += 1

    return step


def timed(step, batches, device):
    """run(n) -> seconds for n steps, the GPU drained before and after."""
    count = [0]

    def run(n: int) -> float:
        sync(device)
        t = time.perf_counter()
        for _ in range(n):
            step(*batches[count[0] % len(batches)])
            count[0] += 1
        sync(device)
        return time.perf_counter() - t

    return run


def bench_sae(c: dict, device) -> list[tuple]:
    from orthosae.train.sae import make_sae
    from orthosae.train.trainer import Trainer

    runs, d, batch = reference_runs(c), c.get("d", 2304), c["batch"]
    g = torch.Generator(device=device).manual_seed(0)
    batches = [
        (torch.randn(batch, d, device=device, generator=g), torch.rand(batch, device=device, generator=g) < 0.5)
        for _ in range(4)
    ]

    def trainers_at(precision: str) -> dict:
        """Each run type at ``[train] matmul_precision`` (the Trainer sets it around its step)."""
        out = {}
        for kind, run in runs.items():
            run = dataclasses.replace(run, train=dataclasses.replace(run.train, matmul_precision=precision))
            out[kind] = Trainer(run, make_sae(run, d, device=device), total_steps=10**6)
        return out

    base = runs["baseline"].train
    refs, missing = {}, []
    for name, make in (
        ("sae_lens", lambda: sae_lens_step(d, c["d_sae"], batch, base.lr, base.l1_coefficient, device)),
        ("dictionary_learning", lambda: dictionary_learning_step(d, c["d_sae"], base.lr, base.l1_coefficient, device)),
    ):
        try:
            refs[name] = make()
        except ImportError as e:
            missing.append(missing_peer(name, e))
        except Exception as e:  # noqa: BLE001 - another version's API: say so, measure the rest
            missing.append(f"{name} could not be set up ({type(e).__name__}: {e}): its ratio is skipped")
    size = f"{d}×{c['d_sae']}, batch {batch}"
    out = []
    for tf32 in (False, True) if device.type == "cuda" else (False,):  # no TF32 on a CPU
        precision = "high" if tf32 else "highest"
        torch.set_float32_matmul_precision(precision)  # for the reference libraries' steps
        trainers = trainers_at(precision)
        contenders = {
            kind: timed(lambda x, f, t=t: t.train_step(x, f), batches, device) for kind, t in trainers.items()
        }
        contenders.update({name: timed(lambda x, f, s=s: s(x), batches, device) for name, s in refs.items()})
        sec = interleave(contenders, *c["steps"], warmup=2)
        mode = f"TF32 {'on' if tf32 else 'off'}" if device.type == "cuda" else "float32"
        for kind in trainers:
            assert trainers[kind].running, trainers[kind].message
            out.append(
                (
                    f"2. {kind} step, {mode}",
                    size,
                    f"{batch / statistics.median(sec[kind]):,.0f} tok/s",
                    "",
                    None,
                    f"{statistics.median(sec[kind]) * 1e3:.1f} ms a step",
                )
            )
        for name in refs:
            med, lo, hi = ratio(sec, "baseline", name)
            out.append(
                (
                    f"2. baseline vs {name} step, {mode}",
                    size,
                    f"×{med:.2f} ({lo:.2f}–{hi:.2f})",
                    "≥ 1.5×",
                    med >= 1.5,
                    f"{name} {statistics.median(sec[name]) * 1e3:.1f} ms",
                )
            )
        trainer = trainers["adaptive"]
        every = trainer.run.ortho.regroup_every
        x, fm = batches[0]
        with torch.no_grad():
            trainer.group_stats.update(trainer.sae.encode(x), fm)
        regroup = []
        for _ in range(3):
            sync(device)
            t = time.perf_counter()
            trainer.regroup()
            sync(device)
            regroup.append(time.perf_counter() - t)
        cost = statistics.median(regroup) / (every * statistics.median(sec["adaptive"]))
        out.append(
            (
                f"2. regroup cost per {every} adaptive steps, {mode}",
                size,
                f"{cost:.2%}",
                "< 5 %",
                cost < 0.05,
                f"one regroup {statistics.median(regroup) * 1e3:.0f} ms",
            )
        )
    torch.set_float32_matmul_precision("highest")
    return out + [(f"2. {m}", size, "skipped", "", None, "") for m in missing]


# ------------------------------------------------------------------------------------------ stream


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak_rss() -> bool:
    try:  # Linux: "5" resets the peak RSS (VmHWM) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def bench_stream(c: dict, device, tmp: Path) -> list[tuple]:
    from orthosae.common.store import CorpusPlan, StoreReader, StoreWriter, to_storage
    from orthosae.train.stream import ActivationStream

    (n_ctx, T), d = c.get("stream_ctx", (16, 1024)), c.get("d", 2304)
    batch, buffer = c["batch"], c["buffer"]
    rows_per_chunk = n_ctx * (T - 1)
    chunks = int(c["windows"] * buffer // rows_per_chunk)
    ident = {
        "model_id": "bench",
        "revision": None,
        "file_sha256": None,
        "layer": LAYER,
        "hook": "resid_post",
        "d_model": d,
        "storage_dtype": "bfloat16",
        "context_length": T,
        "tokenizer": "t",
        "bos_policy": "x",
    }
    writer = StoreWriter(str(tmp / "stream.zarr"), ident)
    plan = CorpusPlan(
        name="retain",
        role="retain",
        split="train",
        source="x",
        fingerprint="f",
        tokens_fingerprint="t",
        n_contexts=chunks * n_ctx,
        context_length=T,
        contexts_per_chunk=n_ctx,
    )
    writer.ensure_corpus(plan)
    tokens = np.full((n_ctx, T), 7, dtype=np.int32)

    def write(k: int) -> None:
        g = torch.Generator(device=device).manual_seed(k)
        rows = torch.randn(rows_per_chunk, d, device=device, generator=g) * (1 + torch.arange(d, device=device) / d)
        writer.write_chunk(plan, k, to_storage(rows, "bfloat16"), tokens)

    with ThreadPoolExecutor(8) as pool:  # disjoint chunks: writers never share an object
        list(pool.map(write, range(chunks)))
    writer.finish_corpus("retain")
    writer.finish()
    reader = StoreReader(str(tmp / "stream.zarr"))
    n_batches = plan.n_rows // batch
    stream = ActivationStream(
        reader, ["retain"], batch_size=batch, buffer_rows=buffer, seed=0, device=device, total_batches=n_batches
    )
    rss_before, reset = _rss_bytes("VmRSS"), _reset_peak_rss()
    it = iter(stream)
    next(it)  # the first window's read: paid once per training run
    sync(device)
    t0 = last = time.perf_counter()
    waits = []
    for _x, _f in it:
        now = time.perf_counter()
        waits.append(now - last)
        last = now
    sync(device)
    rate = (n_batches - 1) * batch / (time.perf_counter() - t0)
    peak = _rss_bytes("VmHWM") if reset else 0
    bound = 2 * stream.chunks_per_window * rows_per_chunk * d * 2
    size = f"d {d}, batch {batch}, buffer {buffer:,} rows, {chunks} chunks"
    peak_note = (
        f"peak RSS {peak / 2**30:.1f} GiB (before {rss_before / 2**30:.1f} GiB; two windows as stored "
        f"{bound / 2**30:.1f} GiB)"
        if reset
        else "peak RSS not measurable here (no /proc/self/clear_refs)"
    )
    into = "the GPU" if device.type == "cuda" else "the CPU's tensors"
    return [
        (
            f"3. ActivationStream rows/s into {into}",
            size,
            f"{rate:,.0f} rows/s",
            "≥ 700,000",
            rate >= 7e5,
            f"longest wait for a batch {max(waits) * 1e3:.1f} ms over {len(waits)} batches "
            f"({(len(waits) * batch) / (stream.chunks_per_window * rows_per_chunk):.1f} windows); {peak_note}",
        )
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke check, ~1 min)")
    ap.add_argument("--only", choices=["harvest", "sae", "stream"], help="run one part")
    ap.add_argument("--device", choices=["cuda", "cpu"], help="measure one device (default: the GPU, then the CPU)")
    ap.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak when it is not in the table")
    args = ap.parse_args()
    print(f"command: python -m bench.gpu {shlex.join(sys.argv[1:])}".rstrip())
    devices = [args.device] if args.device else ["cuda", "cpu"]
    if "cuda" in devices and not torch.cuda.is_available():
        print(
            "no CUDA GPU here (torch.cuda.is_available() is False): the GPU rows are not measured; "
            "run this on a GPU machine for them"
        )
        devices.remove("cuda")
    start, table = time.perf_counter(), []
    for kind in devices:
        device, c = torch.device(kind), SIZES[(kind, args.quick)]
        if kind == "cuda":
            name = torch.cuda.get_device_name(device)
            peak = peak_tflops(name, args.peak_tflops)
            print(
                f"cuda: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
                f"peak bf16 {f'{peak:,.0f} TFLOP/s' if peak else 'unknown'}"
            )
        else:
            peak = gemm_rate(torch.bfloat16, 256 if args.quick else 2048) / 1e12
            print(
                f"cpu: {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, torch {torch.__version__}; "
                f"measured bf16 GEMM rate {peak:,.3g} TFLOP/s"
            )
        with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
            for part, bench in (
                ("harvest", lambda: bench_harvest(c, device, Path(tmp), peak)),
                ("sae", lambda: bench_sae(c, device)),
                ("stream", lambda: bench_stream(c, device, Path(tmp))),
            ):
                if args.only in (None, part):
                    table += [(kind, *row) for row in bench()]
    print("\n| device | measurement | size | result | goal | met | notes |")
    print("|---|---|---|---|---|---|---|")
    for kind, what, size, result, goal, met, note in table:
        print(
            f"| {kind} | {what} | {size} | {result} | {goal} | {'' if met is None else ('yes' if met else 'NO')} "
            f"| {note} |"
        )
    print(f"\nTotal {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
