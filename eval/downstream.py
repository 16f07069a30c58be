"""Splice an SAE into the model: CE loss and KL with the reconstruction in place of the residual.

Definitions match ``sae_bench/evals/core/main.py::get_downstream_reconstruction_metrics`` /
``get_recons_loss`` (same as ``sae_lens/evals.py``), run the way SAEBench recommends
(``exclude_special_tokens_from_reconstruction`` with BOS among the ignored tokens):

- the SAE replaces block ``layer``'s output at positions 1.. only. Position 0 is BOS: its residual
  is a ~10⁵-norm outlier that SAEBench excludes and the store never holds, so the SAE never saw it;
- CE: next-token loss at positions 1..T-2 (the prediction made *at* BOS is left out, as SAEBench's
  token mask does), averaged over all those tokens of all contexts;
- KL(clean ‖ spliced) per position over the full vocabulary, averaged over positions 1..T-1;
- ``ce_loss_score = (ce_zero − ce_sae) / (ce_zero − ce_clean)``,
  ``kl_div_score = (kl_zero − kl_sae) / kl_zero``.

One deliberate difference: by default zero-ablation zeroes the same positions the SAE replaces
(1..), so an SAE that outputs zeros scores exactly 0. SAEBench/SAELens zero every position,
BOS included; ``ablate_bos=True`` reproduces that.

Logits are never held for the whole context: the model runs up to its final hidden states and
the LM head is applied in position chunks (Gemma 3's head has 262k outputs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orthosae.common.model import decoder_layers
from orthosae.eval.prefix import PrefixCache

ResidFn = Callable[[Tensor], Tensor]
LOGIT_BUDGET = 1 << 24  # elements of one [batch, chunk, vocab] logits tensor on CPU (64 MiB float32)
# On a GPU a 64 MiB slice is a few positions of a 256k vocabulary: hundreds of small head calls per
# batch. There the budget is a fraction of the free memory: spliced_ce keeps about 8 logits-sized float32
# tensors alive at once (log-probs, probs, their temporaries), so 1/32 of it each leaves room to spare.
GPU_LOGIT_DIVISOR = 32
GPU_LOGIT_MAX = 1 << 30
# float32 logits of one loss call in `token_ce`: 16 MiB (16 rows of a 262k vocabulary) stays in
# cache, where a whole chunk's 64 MiB went through memory on each of its three passes
CE_ROWS_BUDGET = 1 << 22
# rows (batch x positions) of one LM-head call in `token_ce` on CPU. Each call reads the whole head
# (335 MB in bf16 for Gemma 3's 262k x 640), so more rows a call cost less: 256 rows took half the
# time of 64; at 512 and more rows oneDNN's bf16 GEMM left its fast path here (8x slower, other
# roundings). Up to 256 the logits are bit-identical to those of 64-row calls (bench/eval_floor.py).
HEAD_ROWS = 256


def logit_budget(device: torch.device) -> int:
    """Elements of one float32 logits tensor on `device` (see GPU_LOGIT_DIVISOR)."""
    if device.type != "cuda":
        return LOGIT_BUDGET
    free, _total = torch.cuda.mem_get_info(device)
    return int(min(GPU_LOGIT_MAX, max(LOGIT_BUDGET, free // (4 * GPU_LOGIT_DIVISOR))))


@contextmanager
def splice(model: nn.Module, layer: int, fn: ResidFn, start: int = 1) -> Iterator[None]:
    """Within the block, block ``layer``'s output at positions ``start..`` is replaced by ``fn(resid)``.

    ``fn`` gets and returns ``[batch, T - start, d_model]``. Handles blocks that return a tensor
    (transformers ≥ 5) or a tuple whose first element is the hidden state. The hook is removed on
    exit, also after an exception.
    """

    def hook(_module, _inputs, output):
        h = output[0] if isinstance(output, tuple) else output
        new = h.clone()
        new[:, start:] = fn(h[:, start:]).to(h.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def sae_fn(sae: nn.Module) -> ResidFn:
    """resid -> SAE reconstruction, computed in the SAE's dtype and device."""
    w = sae.W_dec

    def fn(r: Tensor) -> Tensor:
        return sae.decode(sae.encode(r.to(device=w.device, dtype=w.dtype))).to(device=r.device, dtype=r.dtype)

    return fn


def zero_fn(r: Tensor) -> Tensor:
    return torch.zeros_like(r)


def final_hidden(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None, prefix=None) -> Tensor:
    """Hidden states after the final norm, ``[batch, T, d_model]`` (everything but the LM head).

    ``prefix`` (an ``eval.prefix.PrefixCache``): blocks up to its layer come from its cache when
    this batch was run before, so only the later blocks run."""

    def run() -> Tensor:
        out = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    return prefix.hidden(run, input_ids, attention_mask) if prefix is not None else run()


def softcap(model: nn.Module, logits: Tensor) -> Tensor:
    """Gemma's final logit soft-capping ``cap·tanh(z/cap)`` when the model configures it."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    cap = getattr(cfg, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def head_logits(model: nn.Module, hidden: Tensor) -> Tensor:
    """The model's LM head (with Gemma's final logit soft-capping when configured), in float32."""
    # contiguous: on CPU a strided bf16 slice (hidden[:, s:e]) hits a ~150x slower matmul path
    return softcap(model, model.get_output_embeddings()(hidden.contiguous()).float())


def _chunk_len(model: nn.Module, batch: int) -> int:
    """Positions per LM-head call so one float32 logits tensor stays within the device's budget."""
    weight = model.get_output_embeddings().weight
    return max(1, logit_budget(weight.device) // max(1, batch * weight.shape[0]))


def token_ce(model: nn.Module, input_ids: Tensor, hidden: Tensor | None = None, prefix=None) -> Tensor:
    """Per-token next-token CE ``[batch, T-1]`` (entry p is the loss of predicting token p+1).

    On CPU the head runs on HEAD_ROWS rows (batch x positions) at a time and its logits, kept in
    the model's dtype, go to float32 (soft-capped, then the loss) CE_ROWS_BUDGET at a time, so the
    float32 rows stay in cache (``bench/eval_floor.py``); on a GPU a logits budget's worth of
    positions goes through both at once. Each row's loss is computed alone either way: the numbers
    equal ``head_logits`` + ``cross_entropy`` over the same head calls."""
    if hidden is None:
        hidden = final_hidden(model, input_ids, prefix=prefix)
    B, T = input_ids.shape
    head = model.get_output_embeddings()
    on_gpu = head.weight.device.type == "cuda"  # cache sizes and oneDNN's fast path are the CPU's
    step = _chunk_len(model, B) if on_gpu else max(1, HEAD_ROWS // B)
    rows = B * step if on_gpu else max(1, CE_ROWS_BUDGET // head.weight.shape[0])
    out = []
    for s in range(0, T - 1, step):
        e = min(s + step, T - 1)
        logits = head(hidden[:, s:e].contiguous()).flatten(0, 1)  # contiguous: see head_logits
        target = input_ids[:, s + 1 : e + 1].flatten()
        ce = torch.cat(
            [
                F.cross_entropy(softcap(model, logits[r : r + rows].float()), target[r : r + rows], reduction="none")
                for r in range(0, logits.shape[0], rows)
            ]
        )
        out.append(ce.view(B, e - s))
    return torch.cat(out, dim=1)


@torch.no_grad()
def spliced_ce(
    model: nn.Module,
    layer: int,
    saes: dict[str, nn.Module],
    contexts: Tensor,
    batch_size: int,
    *,
    ablate_bos: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, float]]:
    """CE and KL of the model clean, with each SAE spliced in, and zero-ablated (see module doc).

    ``saes`` maps a name to an SAE; the clean and zero-ablated passes run once per batch and serve
    every SAE. ``contexts`` is ``[n, T]`` token ids, each starting with BOS. ``progress(k)`` is
    called with the number of contexts finished in each batch. Returns name -> metrics.
    """
    device = next(model.parameters()).device
    prefix = PrefixCache(model, layer)  # the clean pass records block `layer`; the spliced ones reuse it
    ce: dict[str, list] = {"clean": [], "zero": [], **{n: [] for n in saes}}
    kl: dict[str, list] = {"zero": [], **{n: [] for n in saes}}
    for i in range(0, contexts.shape[0], batch_size):
        ids = torch.as_tensor(contexts[i : i + batch_size], dtype=torch.long, device=device)
        hid = {"clean": final_hidden(model, ids, prefix=prefix)}
        for name, sae in saes.items():
            with splice(model, layer, sae_fn(sae)):
                hid[name] = final_hidden(model, ids, prefix=prefix)
        with splice(model, layer, zero_fn, start=0 if ablate_bos else 1):
            hid["zero"] = final_hidden(model, ids, prefix=prefix)
        B, T = ids.shape
        step = _chunk_len(model, B)
        for s in range(0, T, step):
            e = min(s + step, T)
            pos = torch.arange(s, e, device=device)
            tgt = ids[:, torch.clamp(pos + 1, max=T - 1)]
            ce_mask = (pos >= 1) & (pos <= T - 2)  # predictions from positions 1..T-2
            kl_mask = pos >= 1
            lp_clean = F.log_softmax(head_logits(model, hid["clean"][:, s:e]), dim=-1)
            p_clean = lp_clean.exp()
            for k in ce:  # one logits tensor alive at a time (262k-vocab heads are large)
                lp = lp_clean if k == "clean" else F.log_softmax(head_logits(model, hid[k][:, s:e]), dim=-1)
                ce[k].append(-lp.gather(-1, tgt[..., None])[..., 0][:, ce_mask].flatten())
                if k in kl:
                    kl[k].append((p_clean * (lp_clean - lp)).sum(-1)[:, kl_mask].flatten())
        if progress is not None:
            progress(B)

    return _ce_metrics(ce, kl, list(saes))


def _ce_metrics(ce: dict[str, list], kl: dict[str, list], names: list[str]) -> dict[str, dict[str, float]]:
    """Per SAE: its CE and KL beside the clean and zero-ablated passes', and the scores."""

    def mean(xs: list) -> float:
        return torch.cat(xs).double().mean().item()

    ce_clean, ce_zero, kl_zero = mean(ce["clean"]), mean(ce["zero"]), mean(kl["zero"])
    out = {}
    for name in names:
        ce_sae, kl_sae = mean(ce[name]), mean(kl[name])
        out[name] = {
            "ce_loss_without_sae": ce_clean,
            "ce_loss_with_sae": ce_sae,
            "ce_loss_with_ablation": ce_zero,
            "kl_div_with_sae": kl_sae,
            "kl_div_with_ablation": kl_zero,
            "ce_loss_score": (ce_zero - ce_sae) / (ce_zero - ce_clean),
            "kl_div_score": (kl_zero - kl_sae) / kl_zero,
            "ce_loss_increase": ce_sae - ce_clean,
            "n_tokens_ce": int(sum(t.numel() for t in ce["clean"])),
        }
    return out
