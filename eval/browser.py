"""`pipe inspect`: a static HTML feature browser per run, from held-out rows and the model's weights.

Output, per run, in ``<reports_dir>/<eval name>/inspect/<run>/`` (opens from disk, no server, no
network: CSS and JS are inline; per-feature data is loaded by ``<script>`` tags, which browsers
allow on ``file://`` where ``fetch`` of JSON is blocked)::

    index.html  index.json          every feature: group, forget share, frequencies, activations, cosines
    feature.html#<i>                one page for all features; it loads features/<i>.js
    features/<i>.json (+ .js)       one feature: top contexts, histogram, neighbours, logit effects
    groups.html groups.json         group sizes, cross-group overlap, SAEBench's unlearning selection

What is computed, and from what:

- **One streaming pass over the held-out rows** (corpora with ``split = "heldout"``), in batches of
  whole contexts. Per feature it keeps: activation counts and mass per role (forget / retain), the
  max, a log-binned histogram per role, and the **top-k contexts** by the feature's max activation
  in the context (``torch.topk`` over the batch's contexts merged with the running top-k; a batch
  holds whole contexts, so each context appears once), each with the feature's activations on a
  window of tokens around its max token (``WINDOW`` before / after, never crossing the context).
  Memory is k·d_sae·window floats, whatever the number of rows. Tokens, context and position come from the store's per-row arrays; BOS is not
  stored, so a window that reaches position 0 shows ``BOS`` unshaded (the SAE never saw it).
- **Groups**: a grouped SAE's own ``groups``; otherwise the training rule applied post hoc
  (``assign_groups`` on the forget share of activation mass per row on held-out forget vs retain
  rows). Features silent on every held-out row have no share and are flagged ``silent``.
- **Decoder cosines** between unit decoder rows, in row blocks (never a d_sae² matrix at once): the
  nearest features in the feature's group and in the other groups, and the max cosine within the group.
- **Direct logit effect** of feature i: ``(W_dec[i] ⊙ g) @ W_Uᵀ``, with ``W_U`` the output embedding
  and ``g`` the final norm's elementwise gain (for RMSNorm, incl. Gemma's ``1 + weight``, ``g`` is the
  norm applied to a vector of ones). A residual-stream vector passes the final norm before the
  unembedding; the norm's ``1/rms(x)`` factor is a positive per-token scalar and Gemma's logit
  soft-capping is monotone, so neither changes which tokens a direction promotes or suppresses. The
  model is never run on text.
- **Unlearning selection**: ``eval.unlearning.select_features`` (SAEBench's ranking) on the held-out
  frequencies, at each ``[eval.unlearning] retain_thresholds``; ``pipe eval`` ranks on train rows,
  so the selection there can differ where the two frequency estimates differ.

Activations are in the SAE's own units (what ``sae.encode`` returns on raw rows).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from common.config import Config, ConfigError
from common.model import final_norm, load_model, pick_device
from common.progress import console, progress
from common.store import StoreError, StoreReader, open_store_for
from eval import browser_html
from eval.unlearning import select_features
from train.export import load_sae
from train.verify import read_summary, require_intact_export
from train.sae import is_grouped
from train.sae.grouping import assign_groups, forget_share

TOP_K = 20
WINDOW = (16, 4)  # tokens shown before / after each top-activating token
ROW_BATCH = 4096  # rows per encode, rounded down to whole contexts
HIST_LOG10 = (-4.0, 4.0)  # histogram of log10(activation); values outside land in the end bins
HIST_PER_DECADE = 10
N_NEAREST = 8
N_LOGITS = 12
COS_BLOCK = 1024  # decoder rows per block of cosines
LOGIT_BLOCK = 128  # features per block of logit effects ([block, vocab] floats at a time)
ROLES = ("forget", "retain")


# ---------------------------------------------------------------------------- the streaming pass

@dataclass(frozen=True)
class Corpus:
    name: str
    role: str
    n_rows: int  # rows scanned (whole contexts)
    rows_per_context: int
    offset: int  # global row id of its first row: ids are offset + row


@dataclass
class Scan:
    """What one pass over the held-out rows keeps per feature (tensors on the CPU)."""
    corpora: list[Corpus]
    n_rows: dict[str, int]  # role -> rows
    count: dict[str, Tensor]  # role -> [d_sae] int64 rows with f > 0
    mass: dict[str, Tensor]  # role -> [d_sae] float64 Σ f
    hist: dict[str, Tensor]  # role -> [d_sae, n_bins] int64
    max_act: Tensor  # [d_sae]
    top_vals: Tensor  # [k, d_sae] max activation in each of the top-k contexts, descending (-inf: none)
    top_ids: Tensor  # [k, d_sae] int64 global row id of that max (-1: none)
    top_win: Tensor  # [k, d_sae, before + 1 + after] activations around it (nan: outside the context)
    window: tuple[int, int]

    def corpus_of(self, gid: int) -> tuple[Corpus, int]:
        for c in self.corpora:
            if c.offset <= gid < c.offset + c.n_rows:
                return c, gid - c.offset
        raise IndexError(gid)


def n_hist_bins() -> int:
    return int(round((HIST_LOG10[1] - HIST_LOG10[0]) * HIST_PER_DECADE))


def _hist_bins(v: Tensor) -> Tensor:
    b = torch.floor((torch.log10(v) - HIST_LOG10[0]) * HIST_PER_DECADE)
    return b.clamp_(0, n_hist_bins() - 1).long()


def _windows(f: Tensor, idx: Tensor, rpc: int, before: int, after: int) -> Tensor:
    """f's values around rows ``idx [k, d_sae]`` (same feature), within each row's context.

    The batch holds whole contexts, so row r is at row r % rpc of its context."""
    offs = torch.arange(-before, after + 1, device=f.device)
    rows = idx[..., None] + offs  # [k, d_sae, W]
    inner = (idx % rpc)[..., None] + offs
    valid = (inner >= 0) & (inner < rpc)
    feat = torch.arange(f.shape[1], device=f.device)[None, :, None]
    vals = f[rows.clamp(0, f.shape[0] - 1), feat.expand_as(rows)]
    return torch.where(valid, vals, torch.full_like(vals, math.nan))


def plan_corpora(info: dict, names: list[str], max_rows: int = 0) -> list[Corpus]:
    """The rows to scan of each corpus: all, or the first ``max_rows`` in whole contexts (≥ 1)."""
    corpora, offset = [], 0
    for name in names:
        g = info[name]
        rpc = g.rows_per_context
        n = g.n_rows if max_rows <= 0 else min(g.n_rows, max(1, max_rows // rpc) * rpc)
        corpora.append(Corpus(name, g.role, n, rpc, offset))
        offset += n
    return corpora


@torch.no_grad()
def scan_heldout(sae: nn.Module, reader: StoreReader, names: list[str], *, top_k: int = TOP_K,
                 window: tuple[int, int] = WINDOW, max_rows: int = 0, device: torch.device | str = "cpu",
                 on_rows: Callable[[int], None] | None = None) -> Scan:
    """One pass over the rows of corpora ``names`` (all rows, or the first ``max_rows`` of each,
    rounded down to whole contexts), keeping per-feature statistics and the top-k contexts (each
    context once, at its max-activating row)."""
    info = reader.corpora()
    d_sae = sae.W_dec.shape[0]
    dev = torch.device(device)
    before, after = window
    corpora = plan_corpora(info, names, max_rows)
    nb = n_hist_bins()
    count = {r: torch.zeros(d_sae, dtype=torch.int64, device=dev) for r in ROLES}
    mass = {r: torch.zeros(d_sae, dtype=torch.float64, device=dev) for r in ROLES}
    hist = {r: torch.zeros(d_sae * nb, dtype=torch.int64, device=dev) for r in ROLES}
    n_rows = {r: 0 for r in ROLES}
    top_vals = torch.full((top_k, d_sae), -math.inf, device=dev)
    top_ids = torch.full((top_k, d_sae), -1, dtype=torch.int64, device=dev)
    top_win = torch.full((top_k, d_sae, before + 1 + after), math.nan, device=dev)
    for c in corpora:
        step = max(1, ROW_BATCH // c.rows_per_context) * c.rows_per_context
        for start in range(0, c.n_rows, step):
            stop = min(start + step, c.n_rows)
            x = reader.read_rows(c.name, start, stop).to(device=dev, dtype=sae.W_dec.dtype)
            f = sae.encode(x).float()
            active = f > 0
            count[c.role] += active.sum(dim=0)
            mass[c.role] += f.sum(dim=0, dtype=torch.float64)
            n_rows[c.role] += f.shape[0]
            rows, feats = active.nonzero(as_tuple=True)
            hist[c.role] += torch.bincount(feats * nb + _hist_bins(f[rows, feats]), minlength=d_sae * nb)
            # top-k contexts: each context's max row per feature (a batch holds whole contexts, so
            # no context is seen twice), this batch's best contexts merged with the running best
            rpc = c.rows_per_context
            cmax, carg = f.reshape(-1, rpc, d_sae).max(dim=1)  # [contexts, d_sae]
            vals, cidx = torch.topk(cmax, min(top_k, cmax.shape[0]), dim=0)
            idx = cidx * rpc + carg.gather(0, cidx)  # the max row of each chosen context
            win = _windows(f, idx, rpc, before, after)
            all_vals = torch.cat([top_vals, vals])
            all_ids = torch.cat([top_ids, idx + c.offset + start])
            all_win = torch.cat([top_win, win])
            top_vals, sel = torch.topk(all_vals, top_k, dim=0)
            top_ids = all_ids.gather(0, sel)
            top_win = all_win.gather(0, sel[..., None].expand(-1, -1, all_win.shape[-1]))
            if on_rows:
                on_rows(f.shape[0])
    cpu = lambda t: t.cpu()  # noqa: E731
    return Scan(corpora=corpora, n_rows=n_rows, count={r: cpu(v) for r, v in count.items()},
                mass={r: cpu(v) for r, v in mass.items()},
                hist={r: cpu(v).reshape(d_sae, nb) for r, v in hist.items()},
                max_act=cpu(top_vals[0]).clamp_min(0), top_vals=cpu(top_vals), top_ids=cpu(top_ids),
                top_win=cpu(top_win), window=window)


# ---------------------------------------------------------------------------- weights-only analyses

def _unit_rows(W: Tensor) -> Tensor:
    W = W.detach().float()
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def decoder_neighbours(W_dec: Tensor, groups: Tensor, n: int = N_NEAREST) -> dict[str, Tensor]:
    """Per feature: the n nearest features by decoder cosine in its own group and in the others
    (ids, cosines; id -1 where a group has fewer), and the max cosine within its group."""
    U = _unit_rows(W_dec)
    d_sae = U.shape[0]
    groups = groups.to(U.device)
    k = min(n, max(d_sae - 1, 1))
    out = {key: [] for key in ("in_ids", "in_cos", "out_ids", "out_cos", "max_in")}
    for s in range(0, d_sae, COS_BLOCK):
        cos = U[s:s + COS_BLOCK] @ U.T  # [b, d_sae]
        rows = torch.arange(s, s + cos.shape[0], device=U.device)
        cos[torch.arange(cos.shape[0]), rows] = -math.inf  # not its own neighbour
        same = groups[rows][:, None] == groups[None, :]
        for key, mask in (("in", same), ("out", ~same)):
            c = torch.where(mask, cos, torch.full_like(cos, -math.inf))
            v, i = torch.topk(c, k, dim=1)
            out[f"{key}_ids"].append(torch.where(torch.isfinite(v), i, torch.full_like(i, -1)))
            out[f"{key}_cos"].append(v)
            if key == "in":
                out["max_in"].append(v[:, 0])
    return {key: torch.cat(v).cpu() for key, v in out.items()}


def final_norm_gain(model: nn.Module, d_model: int) -> tuple[Tensor, str]:
    """Elementwise gain of the final norm (see the module doc) and a line saying what it is."""
    norm = final_norm(model)  # beside the blocks, in every family (common/model.py)
    if norm is None:
        return torch.ones(d_model), "no final norm found: W_dec @ W_Uᵀ"
    w = getattr(norm, "weight", None)
    # LayerNorm (with or without bias, as MPT's): gain is its weight; a ones vector would centre to 0
    if w is not None and (isinstance(norm, nn.LayerNorm) or getattr(norm, "bias", None) is not None):
        return w.detach().float().cpu(), f"final {type(norm).__name__} weight folded into W_U"
    with torch.no_grad():
        p = next(norm.parameters(), None)
        ones = torch.ones(1, d_model, device=p.device if p is not None else "cpu")  # float32: RMSNorms upcast
        gain = norm(ones)[0].float().cpu()
    return gain, f"final {type(norm).__name__} gain (norm of a ones vector) folded into W_U"


@torch.no_grad()
def logit_effects(W_dec: Tensor, W_U: Tensor, gain: Tensor, n: int = N_LOGITS,
                  on_features: Callable[[int], None] | None = None) -> dict[str, Tensor]:
    """Top-n promoted and suppressed token ids and values of ``(W_dec[i] ⊙ gain) @ W_Uᵀ``, per feature."""
    dev = W_U.device
    WU = W_U.detach()
    Wg = (W_dec.detach().float().to(dev) * gain.to(dev)).to(WU.dtype)
    out = {key: [] for key in ("up_ids", "up_vals", "down_ids", "down_vals")}
    for s in range(0, Wg.shape[0], LOGIT_BLOCK):
        eff = (Wg[s:s + LOGIT_BLOCK] @ WU.T).float()  # [b, vocab]
        v, i = torch.topk(eff, n, dim=1)
        out["up_ids"].append(i.cpu())
        out["up_vals"].append(v.cpu())
        v, i = torch.topk(eff, n, dim=1, largest=False)
        out["down_ids"].append(i.cpu())
        out["down_vals"].append(v.cpu())
        if on_features:
            on_features(eff.shape[0])
    return {key: torch.cat(v) for key, v in out.items()}


@torch.no_grad()
def group_overlaps(W_dec: Tensor, groups: Tensor, n_groups: int) -> list[dict]:
    """Per pair g < h of non-empty groups: ‖W_gᵀW_h‖_F over unit decoder rows, also divided by
    ‖W_g‖_F‖W_h‖_F (= √(n_g·n_h)); from d_model² Grams, never the n_g × n_h product."""
    U = _unit_rows(W_dec).double()
    grams = [U[groups == g].T @ U[groups == g] for g in range(n_groups)]
    sizes = [int((groups == g).sum()) for g in range(n_groups)]
    out = []
    for g in range(n_groups):
        for h in range(g + 1, n_groups):
            if sizes[g] and sizes[h]:
                fro = math.sqrt(max((grams[g] * grams[h]).sum().item(), 0.0))
                out.append({"groups": [g, h], "overlap_fro": fro,
                            "overlap_fro_normalized": fro / math.sqrt(sizes[g] * sizes[h])})
    return out


def group_label(g: int, n_groups: int) -> str:
    if n_groups == 2:
        return ("retain-leaning", "forget-leaning")[g]
    if n_groups == 1:
        return "all features"
    return f"group {g} (forget share {g / n_groups:.2f}-{(g + 1) / n_groups:.2f})"


# ---------------------------------------------------------------------------- assembling the site

def _num(x, sig: int = 4):
    """A JSON number rounded to `sig` significant digits; None for nan/inf."""
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{sig}g}")


class TokenText:
    """Display text of token ids, decoded one at a time and cached."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, i: int) -> str:
        i = int(i)
        if i not in self.cache:
            try:
                self.cache[i] = self.tokenizer.decode([i], skip_special_tokens=False)
            except Exception:  # noqa: BLE001 - a token the tokenizer cannot decode alone
                self.cache[i] = f"<{i}>"
        return self.cache[i]


@dataclass
class RunSite:
    """Everything the pages of one run are made from."""
    run: str
    run_type: str
    meta: dict
    features: list[dict]  # index rows
    details: Iterator[dict]  # per-feature pages, made as they are written
    groups: dict


def _store_arrays(reader: StoreReader, corpora: list[Corpus]) -> dict[str, dict[str, np.ndarray]]:
    return {c.name: {a: reader.root[c.name][a][: c.n_rows] for a in ("tokens", "context", "position")}
            for c in corpora}


def heldout_frequencies(scan: Scan) -> dict[str, Tensor]:
    """Per-feature frequency (forget, retain, all), mass share and mean activation when active."""
    n_f, n_r = scan.n_rows["forget"], scan.n_rows["retain"]
    count = scan.count["forget"] + scan.count["retain"]
    share = forget_share(scan.mass["forget"] / max(n_f, 1), scan.mass["retain"] / max(n_r, 1))
    if not (n_f and n_r):
        share = torch.full_like(share, math.nan)
    return {"freq_forget": scan.count["forget"].double() / max(n_f, 1),
            "freq_retain": scan.count["retain"].double() / max(n_r, 1),
            "freq": count.double() / max(n_f + n_r, 1), "forget_share": share,
            "mean_act": (scan.mass["forget"] + scan.mass["retain"]) / count.clamp_min(1),
            "silent": count == 0}


def feature_groups(sae: nn.Module, scan: Scan, n_groups_cfg: int) -> tuple[Tensor, int, str]:
    """(groups [d_sae], G, how): the SAE's own groups, else the training rule applied post hoc."""
    d_sae = sae.W_dec.shape[0]
    if is_grouped(sae):
        return sae.groups.detach().cpu().long(), sae.n_groups, "learned (the SAE's own groups)"
    if scan.n_rows["forget"] and scan.n_rows["retain"]:
        share = heldout_frequencies(scan)["forget_share"]
        groups = assign_groups(share, torch.zeros(d_sae, dtype=torch.long), n_groups_cfg)
        return groups, n_groups_cfg, ("post hoc: forget share of activation mass per row on held-out "
                                      "forget vs retain rows, binned as in training (features silent "
                                      "on held-out rows: group 0)")
    return torch.zeros(d_sae, dtype=torch.long), 1, "none (held-out rows lack a forget or a retain corpus)"


def assemble(run: str, run_type: str, sae: nn.Module, scan: Scan, arrays: dict, tok: TokenText,
             bos_id: int | None, groups: Tensor, n_groups: int, grouping: str, neighbours: dict,
             logits: dict | None, retain_thresholds: list[float], n_features_list: list[int],
             meta: dict) -> RunSite:
    d_sae = sae.W_dec.shape[0]
    n_f, n_r = scan.n_rows["forget"], scan.n_rows["retain"]
    hf = heldout_frequencies(scan)
    freq_f, freq_r, freq, share = hf["freq_forget"], hf["freq_retain"], hf["freq"], hf["forget_share"]
    mean_act, silent = hf["mean_act"], hf["silent"]
    labels = [group_label(g, n_groups) for g in range(n_groups)]

    # SAEBench's unlearning selection at each retain threshold (held-out frequencies)
    selections = []
    clamp_rank: dict[int, list[dict]] = {}
    if n_f and n_r:
        for thr in retain_thresholds:
            ranked = select_features(freq_f, freq_r, thr).tolist()
            shown = ranked[: max(n_features_list)] if n_features_list else ranked
            for rank, i in enumerate(shown):
                clamp_rank.setdefault(i, []).append({"retain_threshold": thr, "rank": rank + 1})
            selections.append({
                "retain_threshold": thr, "n_eligible": len(ranked),
                "n_features_list": list(n_features_list),
                "features": [{"id": i, "rank": r + 1, "group": int(groups[i]), "freq_forget": _num(freq_f[i]),
                              "freq_retain": _num(freq_r[i])} for r, i in enumerate(shown)],
                "forget_leaning_among_top": {str(n): int(sum(int(groups[i]) == n_groups - 1 for i in ranked[:n]))
                                             for n in n_features_list},
            })

    # index rows, then per-feature details made one at a time as they are written (at d_sae 16k
    # the details of all features would take GBs). Plain lists: per-element tensor indexing is slow.
    tv, ti = scan.top_vals.T.tolist(), scan.top_ids.T.tolist()  # [d_sae][k]
    tw = scan.top_win.permute(1, 0, 2).tolist()  # [d_sae][k][window]
    arrays = {name: {key: a.tolist() for key, a in arr.items()} for name, arr in arrays.items()}
    col = {key: t.tolist() for key, t in {
        "groups": groups, "silent": silent, "share": share, "freq": freq, "freq_f": freq_f, "freq_r": freq_r,
        "mean_act": mean_act, "max_act": scan.max_act, "max_in": neighbours["max_in"],
        "count_f": scan.count["forget"], "count_r": scan.count["retain"],
        "mass_f": scan.mass["forget"] / max(n_f, 1), "mass_r": scan.mass["retain"] / max(n_r, 1)}.items()}
    before, _ = scan.window

    def top_token(i: int) -> str | None:
        if not tv[i][0] > 0:
            return None
        c, row = scan.corpus_of(ti[i][0])
        return tok(arrays[c.name]["tokens"][row])

    features = [{"id": i, "group": col["groups"][i], "silent": col["silent"][i],
                 "forget_share": _num(col["share"][i]), "freq": _num(col["freq"][i]),
                 "freq_forget": _num(col["freq_f"][i]), "freq_retain": _num(col["freq_r"][i]),
                 "mean_act": _num(col["mean_act"][i]), "max_act": _num(col["max_act"][i]),
                 "max_cos_in_group": _num(col["max_in"][i]), "top_token": top_token(i)}
                for i in range(d_sae)]

    def top_contexts(i: int) -> list[dict]:
        tops = []
        for j, v in enumerate(tv[i]):
            if not v > 0:
                break
            c, row = scan.corpus_of(ti[i][j])
            arr = arrays[c.name]
            pos = arr["position"][row]
            bos = pos <= before and bos_id is not None  # the window reaches position 0
            ids, acts = ([int(bos_id)], [None]) if bos else ([], [])
            focus = len(ids) + before
            for k, a in enumerate(tw[i][j]):
                if math.isnan(a):  # outside the context
                    focus -= k < before
                    continue
                ids.append(arr["tokens"][row - before + k])
                acts.append(_num(a))
            tops.append({"act": _num(v), "corpus": c.name, "role": c.role, "row": row,
                         "context": arr["context"][row], "position": pos, "focus": focus, "bos": bos,
                         "tokens": [tok(t) for t in ids], "token_ids": ids, "acts": acts})
        return tops

    def details():
        near_cols = {key: neighbours[key].tolist() for key in ("in_ids", "in_cos", "out_ids", "out_cos")}
        hist = {r: scan.hist[r].tolist() for r in ROLES}
        logit_cols = {key: t.tolist() for key, t in logits.items()} if logits is not None else None
        for i, row in enumerate(features):
            hf_i, hr_i = hist["forget"][i], hist["retain"][i]
            nz = [b for b in range(len(hf_i)) if hf_i[b] or hr_i[b]]
            lo_b, hi_b = (nz[0], nz[-1] + 1) if nz else (0, 0)
            near = {key: [{"id": k, "cos": _num(c), "group": col["groups"][k]}
                          for k, c in zip(near_cols[f"{key}_ids"][i], near_cols[f"{key}_cos"][i]) if k >= 0]
                    for key in ("in", "out")}
            detail = {
                **row, "run": run, "group_label": labels[row["group"]],
                "count_forget": col["count_f"][i], "count_retain": col["count_r"][i],
                "mass_forget_per_row": _num(col["mass_f"][i]), "mass_retain_per_row": _num(col["mass_r"][i]),
                "histogram": {"log10_lo": HIST_LOG10[0] + lo_b / HIST_PER_DECADE,
                              "bins_per_decade": HIST_PER_DECADE,
                              "forget": hf_i[lo_b:hi_b], "retain": hr_i[lo_b:hi_b]},
                "top": top_contexts(i),
                "nearest_in_group": near["in"], "nearest_other_groups": near["out"],
                "unlearning_selection": clamp_rank.get(i, []),
            }
            if logit_cols is not None:
                detail["logits"] = {
                    "promoted": [{"t": tok(t), "id": t, "v": _num(v)}
                                 for t, v in zip(logit_cols["up_ids"][i], logit_cols["up_vals"][i])],
                    "suppressed": [{"t": tok(t), "id": t, "v": _num(v)}
                                   for t, v in zip(logit_cols["down_ids"][i], logit_cols["down_vals"][i])]}
            yield detail

    sizes = torch.bincount(groups, minlength=n_groups).tolist()
    alive = torch.bincount(groups[~silent], minlength=n_groups).tolist()
    gdata = {
        "run": run, "grouping": grouping, "n_groups": n_groups, "labels": labels,
        "sizes": sizes, "alive_on_heldout": alive,
        "mean_forget_share": [_num(share[(groups == g) & ~silent].nanmean()) if alive[g] else None
                              for g in range(n_groups)],
        "overlap": [{**o, "overlap_fro": _num(o["overlap_fro"]),
                     "overlap_fro_normalized": _num(o["overlap_fro_normalized"])}
                    for o in group_overlaps(sae.W_dec, groups, n_groups)],
        "random_overlap_level": _num(1 / math.sqrt(sae.W_dec.shape[1])),
        "unlearning": selections,
        "unlearning_note": ("SAEBench get_top_features on held-out frequencies: features with retain "
                            "frequency below the threshold, by forget frequency; the top n are clamped "
                            "for each n in [eval.unlearning] n_features_list"),
    }
    meta = {**meta, "run": run, "run_type": run_type, "d_sae": d_sae, "grouping": grouping,
            "n_groups": n_groups, "group_labels": labels, "rows": {"forget": n_f, "retain": n_r},
            "corpora": [{"name": c.name, "role": c.role, "rows": c.n_rows} for c in scan.corpora],
            "top_k": int(scan.top_vals.shape[0]), "window": list(scan.window)}
    return RunSite(run=run, run_type=run_type, meta=meta, features=features, details=details(), groups=gdata)


def _dump(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def write_site(site: RunSite, out: Path) -> Path:
    """Write one run's pages and JSON into ``out`` (replaced whole)."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "features").mkdir(parents=True)
    index = {"meta": site.meta, "features": site.features}
    (tmp / "index.json").write_text(_dump(index))
    (tmp / "groups.json").write_text(_dump(site.groups))
    (tmp / "index.html").write_text(browser_html.index_page(site.run, _dump(index)))
    (tmp / "feature.html").write_text(browser_html.feature_page(site.run, _dump(site.meta)))
    (tmp / "groups.html").write_text(browser_html.groups_page(site.run, _dump(site.groups)))
    width = len(str(len(site.features) - 1))
    for d in site.details:
        text = _dump(d)
        stem = f"{d['id']:0{width}d}"
        (tmp / "features" / f"{stem}.json").write_text(text)
        # the same JSON, as a script the feature page can load from file:// (fetch cannot)
        (tmp / "features" / f"{stem}.js").write_text(f"orthosaeFeature({text});\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def inspect_root(cfg: Config) -> Path:
    return Path(cfg.eval.reports_dir) / cfg.eval.name / "inspect"


def browser_hint(cfg: Config) -> str:
    """One line for `pipe run`: where the browser is, or how to make it."""
    index = inspect_root(cfg) / "index.html"
    if index.exists():
        return f"feature browser: {index}"
    return f"feature browser: `pipe inspect` writes {index}"


def _trained_runs(cfg: Config, run_names: list[str] | None) -> list[tuple]:
    runs = [cfg.run(n) for n in run_names] if run_names else list(cfg.runs)
    out = []
    for run in runs:
        run_dir = Path(cfg.train.runs_dir) / run.name
        summary = run_dir / "summary.json"
        if not summary.exists():
            if run_names:
                raise StoreError(f"{run_dir}: run {run.name!r} is not trained yet (run `pipe train`)")
            continue
        s = read_summary(run_dir)
        if s.get("status") == "failed":
            console.print(f"[yellow]{run.name}: training failed ({s.get('message')}); left out")
            continue
        require_intact_export(run_dir, s)
        out.append((run, run_dir, s))
    if not out:
        raise StoreError(f"{cfg.train.runs_dir}: no trained run to inspect (run `pipe train`)")
    return out


def build_browser(cfg: Config, *, run_names: list[str] | None = None, top_k: int = TOP_K,
                  max_rows: int = 0, show_progress: bool = True) -> Path:
    """Write the feature browser of each trained run; returns the inspect root (its index.html
    lists the runs)."""
    heldout = [n for n, c in cfg.corpora.items() if c.split == "heldout"]
    if not heldout:
        raise ConfigError(f"{cfg.path}: [corpora]: inspect needs a corpus with split = \"heldout\"")
    reader = open_store_for(cfg)
    runs = _trained_runs(cfg, run_names)
    root = inspect_root(cfg)
    t0 = time.perf_counter()
    lm = load_model(cfg.model.id, revision=cfg.model.revision, dtype=cfg.model.dtype,
                    device=cfg.model.device, trust_remote_code=cfg.model.trust_remote_code)
    W_U = lm.model.get_output_embeddings().weight.detach().float()  # [vocab, d_model]
    gain, logit_note = final_norm_gain(lm.model, lm.d_model)
    tok = TokenText(lm.tokenizer)
    device = pick_device(cfg.model.device)
    un = cfg.eval.unlearning
    model_s = time.perf_counter() - t0
    total_rows = sum(c.n_rows for c in plan_corpora(reader.corpora(), heldout, max_rows))
    with progress("row", disable=not show_progress) as bar:
        for run, run_dir, summary in runs:
            timings = {"model_load_s": round(model_s, 2)}
            sae, sae_cfg = load_sae(run_dir, device=device)
            sae.eval().requires_grad_(False)
            t = time.perf_counter()
            task = bar.add_task(f"{run.name}: held-out rows", total=total_rows)
            scan = scan_heldout(sae, reader, heldout, top_k=top_k, max_rows=max_rows, device=device,
                                on_rows=lambda k: bar.advance(task, k))
            timings["scan_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            task = bar.add_task(f"{run.name}: logit effects", total=sae.W_dec.shape[0])
            logits = logit_effects(sae.W_dec, W_U, gain, on_features=lambda k: bar.advance(task, k))
            timings["logits_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            groups, n_groups, grouping = feature_groups(sae, scan, cfg.ortho.groups)
            neighbours = decoder_neighbours(sae.W_dec, groups.to(sae.W_dec.device))
            meta = {"config": str(cfg.path), "store": cfg.harvest.store, "run_dir": str(run_dir),
                    "model": cfg.model.id, "layer": cfg.harvest.layer, "hook": cfg.harvest.hook,
                    "fingerprint": summary.get("fingerprint"), "status": summary.get("status"),
                    "logit_effect": logit_note, "activation_units": "sae.encode on raw rows",
                    "histogram": f"log10(activation), {HIST_PER_DECADE} bins per decade",
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            site = assemble(run.name, run.type, sae.cpu(), scan, _store_arrays(reader, scan.corpora), tok,
                            lm.tokenizer.bos_token_id, groups, n_groups, grouping, neighbours, logits,
                            list(un.retain_thresholds), list(un.n_features_list), meta)
            timings["assemble_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            site.meta["timings"] = timings
            write_site(site, root / run.name)
            timings["write_s"] = round(time.perf_counter() - t, 2)
            (root / run.name / "timings.json").write_text(json.dumps(timings, indent=2))
            console.print(f"  {run.name}: {root / run.name / 'index.html'} "
                          f"({sum(timings.values()) - model_s:.0f} s)", highlight=False)
    present = sorted(p.name for p in root.iterdir() if (p / "index.json").is_file())
    (root / "index.html").write_text(browser_html.runs_page(cfg.eval.name, present))
    return root
