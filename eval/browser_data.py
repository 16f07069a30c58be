"""`pipe inspect`'s per-feature data (eval/browser.py has the overview): weights-only analyses
(decoder neighbours, direct logit effects, cross-group RMS cosines) and ``assemble``, which joins
them with a held-out ``Scan`` (eval/browser_scan.py) into one run's ``RunSite`` for the pages;
``eval_roles`` reads from ``pipe eval``'s report.json which latents its probing evals recorded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from orthosae.common.model import final_norm
from orthosae.common.report_json import ReportUnreadable, read_report
from orthosae.common.store import StoreReader
from orthosae.eval.browser_scan import HIST_LOG10, HIST_PER_DECADE, ROLES, Scan, ScanRange, heldout_frequencies
from orthosae.eval.conditioning import feature_groups
from orthosae.eval.unlearning import select_features
from orthosae.train.sae.ortho import unit_rows

N_NEAREST = 8
N_LOGITS = 12
COS_BLOCK = 1024  # decoder rows per block of cosines
LOGIT_BLOCK = 128  # features per block of logit effects ([block, vocab] floats at a time)


@torch.no_grad()
def decoder_neighbours(W_dec: Tensor, groups: Tensor, n: int = N_NEAREST) -> dict[str, Tensor]:
    """Per feature: the n nearest features by decoder cosine in its own group and in the others
    (ids, cosines; id -1 where a group has fewer), and the max cosine within its group."""
    U = unit_rows(W_dec.detach().float())
    d_sae = U.shape[0]
    groups = groups.to(U.device)
    k = min(n, max(d_sae - 1, 1))
    out = {key: [] for key in ("in_ids", "in_cos", "out_ids", "out_cos", "max_in")}
    for s in range(0, d_sae, COS_BLOCK):
        cos = U[s : s + COS_BLOCK] @ U.T  # [b, d_sae]
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
def logit_effects(
    W_dec: Tensor, W_U: Tensor, gain: Tensor, n: int = N_LOGITS, on_features: Callable[[int], None] | None = None
) -> dict[str, Tensor]:
    """Top-n promoted and suppressed token ids and values of ``(W_dec[i] ⊙ gain) @ W_Uᵀ``, per feature."""
    dev = W_U.device
    WU = W_U.detach()
    Wg = (W_dec.detach().float().to(dev) * gain.to(dev)).to(WU.dtype)
    out = {key: [] for key in ("up_ids", "up_vals", "down_ids", "down_vals")}
    for s in range(0, Wg.shape[0], LOGIT_BLOCK):
        eff = (Wg[s : s + LOGIT_BLOCK] @ WU.T).float()  # [b, vocab]
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
    """Per pair g < h of non-empty groups: ‖W_gᵀW_h‖_F over unit decoder rows, and divided by
    ‖W_g‖_F‖W_h‖_F (= √(n_g·n_h)), the RMS cross-group cosine (``rms_cross_cos``, as in
    eval/conditioning.py); from d_model² Grams, never the n_g × n_h product."""
    U = unit_rows(W_dec.detach().float()).double()
    grams = [U[groups == g].T @ U[groups == g] for g in range(n_groups)]
    sizes = [int((groups == g).sum()) for g in range(n_groups)]
    out = []
    for g in range(n_groups):
        for h in range(g + 1, n_groups):
            if sizes[g] and sizes[h]:
                fro = math.sqrt(max((grams[g] * grams[h]).sum().item(), 0.0))
                out.append(
                    {"groups": [g, h], "overlap_fro": fro, "rms_cross_cos": fro / math.sqrt(sizes[g] * sizes[h])}
                )
    return out


def group_label(g: int, n_groups: int) -> str:
    if n_groups == 2:
        return ("retain-leaning", "forget-leaning")[g]
    if n_groups == 1:
        return "all features"
    return f"group {g} (forget share {g / n_groups:.2f}-{(g + 1) / n_groups:.2f})"


# ---------------------------------------------------------------------------- pipe eval's latent roles


def _ints(x) -> list[int]:
    """A report's list of latent ids (anything else: none)."""
    return [int(i) for i in x if isinstance(i, int) and not isinstance(i, bool)] if isinstance(x, list) else []


def _where(eval_: str, role: str, dataset: str | None, cls: str) -> dict:
    """The start of a latent's role: which eval, which role in it, on which dataset and class."""
    return {"eval": eval_, "role": role, "dataset": dataset, "class": cls}


def _listed(roles: dict[int, list[dict]], ids: list[int], where: dict, text: str) -> None:
    """Latents an eval recorded as a set (no rank), each with the same text."""
    for i in ids:
        roles.setdefault(i, []).append({**where, "text": text, "rank": None, "of": len(ids)})


def _ranked(roles: dict[int, list[dict]], ids: list[int], where: dict, text: Callable[[int], str]) -> None:
    """Latents an eval recorded in rank order; ``text(rank)`` says where each stands."""
    for r, i in enumerate(ids):
        roles.setdefault(i, []).append({**where, "rank": r + 1, "of": len(ids), "text": text(r + 1)})


def _sparse_probing_roles(entry: dict, roles: dict[int, list[dict]]) -> bool:
    """Sparse probing's top latents per dataset and class; whether the entry records them."""
    datasets = (entry.get("probing") or {}).get("datasets")
    if not (isinstance(datasets, dict) and any(isinstance(d, dict) and "top_latents" in d for d in datasets.values())):
        return False
    for name, d in datasets.items():
        for cls, ids in ((d or {}).get("top_latents") or {}).items():
            ids = _ints(ids)
            text = (
                f"sparse probing, {name}: one of the {len(ids)} latents of largest class mean "
                f"difference for class {cls!r} (the SAE top-k probes pick among them)"
            )
            _listed(roles, ids, _where("sparse_probing", "top_latent", name, cls), text)
    return True


def _tpp_roles(entry: dict, roles: dict[int, list[dict]]) -> bool:
    """TPP's ablated latents per class, by probe effect; whether the entry records them."""
    tpp = entry.get("tpp") or {}
    if not isinstance(tpp.get("ablated_latents"), dict):
        return False
    dataset = tpp.get("dataset")
    for cls, ids in tpp["ablated_latents"].items():

        def text(r: int) -> str:
            return (
                f"TPP, {dataset}: ablated for class {cls!r}, rank {r} "
                f"by probe effect (in the ablation for every n \u2265 {r})"
            )

        _ranked(roles, _ints(ids), _where("tpp", "ablated", dataset, cls), text)
    return True


def _absorption_roles(entry: dict, roles: dict[int, list[dict]]) -> bool:
    """Absorption's split and absorbing latents per letter; whether the entry records them."""
    letters = (entry.get("absorption") or {}).get("letters")
    if not (
        isinstance(letters, dict)
        and any(isinstance(v, dict) and ("split_latents" in v or "absorbing_latents" in v) for v in letters.values())
    ):
        return False
    for L, v in letters.items():
        v = v or {}
        split = _ints(v.get("split_latents"))
        text = (
            f"absorption: main latent of letter {L.upper()!r} (the k-sparse probe's "
            f"{len(split)} split latent{'s' if len(split) != 1 else ''})"
        )
        _listed(roles, split, _where("absorption", "split", "first_letter", L), text)

        def absorbing(r: int) -> str:
            return (
                f"absorption: absorbing latent of letter {L.upper()!r}, rank "
                f"{r} (fires on its words where the main latents do not)"
            )

        where = _where("absorption", "absorbing", "first_letter", L)
        _ranked(roles, _ints(v.get("absorbing_latents")), where, absorbing)
    return True


def _roles_of_entry(entry: dict) -> tuple[dict[int, list[dict]], list[str]]:
    """Feature id -> its roles in one run's report.json entry, and the evals that recorded latents."""
    roles: dict[int, list[dict]] = {}
    recorded = {  # in this order: a feature's roles are listed as its page shows them
        "sparse_probing": _sparse_probing_roles(entry, roles),
        "tpp": _tpp_roles(entry, roles),
        "absorption": _absorption_roles(entry, roles),
    }
    return roles, [family for family, found in recorded.items() if found]


def eval_roles(report_path: Path, run: str, fingerprint: str | None) -> tuple[dict[int, list[dict]], dict]:
    """(feature id -> roles, the site's ``meta.eval_roles``): the latents ``pipe eval`` recorded for
    ``run`` in report.json (sparse probing's top latents per class, TPP's ablated latents per class,
    absorption's split and absorbing latents per letter). No report, no entry for the run, an entry
    of another training (fingerprint) or one without these fields: no roles, and a note saying why
    they are unknown."""
    info = {"report": str(report_path), "known": False, "evals": []}

    def unknown(why: str):
        return {}, {**info, "note": f"roles in pipe eval's probing evals unknown: {why}"}

    if not report_path.is_file():
        return unknown(f"no {report_path} (run `pipe eval`)")
    try:
        runs = read_report(report_path)["runs"]
    except ReportUnreadable as e:
        return unknown(f"{e}; `pipe eval` writes it again")
    entry = runs.get(run) if isinstance(runs, dict) else None
    if not isinstance(entry, dict):
        return unknown(f"{report_path} has no entry for run {run!r}")
    reported = (entry.get("summary") or {}).get("fingerprint")
    if fingerprint is not None and reported != fingerprint:
        return unknown(
            f"{report_path} is of another training of {run!r} (fingerprint {reported}, "
            f"now {fingerprint}); run `pipe eval` again"
        )
    roles, families = _roles_of_entry(entry)
    if not families:
        return unknown(
            f"{report_path} records no latents for run {run!r} (sparse probing, TPP and "
            f"absorption off, or a report from before they were recorded)"
        )
    note = (
        f"from {report_path}: "
        + ", ".join(families)
        + (
            f"; not recorded: {', '.join(f for f in ('sparse_probing', 'tpp', 'absorption') if f not in families)}"
            if len(families) < 3
            else ""
        )
    )
    return roles, {**info, "known": True, "evals": families, "note": note}


# ---------------------------------------------------------------------------- assembling the site


def _rounded(x, sig: int = 4):
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


def store_arrays(reader: StoreReader, ranges: list[ScanRange]) -> dict[str, dict[str, np.ndarray]]:
    """Token id, context and position of every scanned row, per corpus (what the pages show)."""
    return {
        c.name: {a: reader.read_array(c.name, a, 0, c.n_rows) for a in ("tokens", "context", "position")}
        for c in ranges
    }


def scan_groups(sae: nn.Module, scan: Scan, n_groups: int) -> tuple[Tensor, int, str]:
    """(groups [d_sae], G, how): eval/conditioning.py ``feature_groups`` on the held-out rows scanned
    (features silent on held-out rows: group 0)."""
    both = scan.n_rows["forget"] and scan.n_rows["retain"]
    mass = [scan.mass[r] / scan.n_rows[r] for r in ROLES] if both else [None, None]
    return feature_groups(sae, *mass, n_groups, rows=" per row on held-out forget vs retain rows")


def _unlearning_selections(
    hf: dict[str, Tensor], groups: Tensor, n_groups: int, retain_thresholds: list[float], n_features_list: list[int]
) -> tuple[list[dict], dict[int, list[dict]]]:
    """SAEBench's unlearning selection at each retain threshold (held-out frequencies): the groups
    page's tables, and feature id -> its rank at each threshold where it is shown."""
    freq_f, freq_r = hf["freq_forget"], hf["freq_retain"]
    selections = []
    clamp_rank: dict[int, list[dict]] = {}
    for thr in retain_thresholds:
        ranked = select_features(freq_f, freq_r, thr).tolist()
        shown = ranked[: max(n_features_list)] if n_features_list else ranked
        for rank, i in enumerate(shown):
            clamp_rank.setdefault(i, []).append({"retain_threshold": thr, "rank": rank + 1})
        selections.append(
            {
                "retain_threshold": thr,
                "n_eligible": len(ranked),
                "n_features_list": list(n_features_list),
                "features": [
                    {
                        "id": i,
                        "rank": r + 1,
                        "group": int(groups[i]),
                        "freq_forget": _rounded(freq_f[i]),
                        "freq_retain": _rounded(freq_r[i]),
                    }
                    for r, i in enumerate(shown)
                ],
                "forget_leaning_among_top": {
                    str(n): int(sum(int(groups[i]) == n_groups - 1 for i in ranked[:n])) for n in n_features_list
                },
            }
        )
    return selections, clamp_rank


class _Columns:
    """A run's per-feature data as plain lists (per-element tensor indexing is slow), and what a
    feature's index row and top contexts are made from them."""

    def __init__(
        self,
        scan: Scan,
        hf: dict[str, Tensor],
        groups: Tensor,
        neighbours: dict,
        arrays: dict,
        tok: TokenText,
        bos_id: int | None,
    ):
        n_f, n_r = scan.n_rows["forget"], scan.n_rows["retain"]
        self.col = {
            key: t.tolist()
            for key, t in {
                "groups": groups,
                "silent": hf["silent"],
                "share": hf["forget_share"],
                "freq": hf["freq"],
                "freq_f": hf["freq_forget"],
                "freq_r": hf["freq_retain"],
                "mean_act": hf["mean_act"],
                "max_act": scan.max_act,
                "max_in": neighbours["max_in"],
                "count_f": scan.count["forget"],
                "count_r": scan.count["retain"],
                "mass_f": scan.mass["forget"] / max(n_f, 1),
                "mass_r": scan.mass["retain"] / max(n_r, 1),
            }.items()
        }
        self.tv, self.ti = scan.top_vals.T.tolist(), scan.top_ids.T.tolist()  # [d_sae][k]
        self.tw = scan.top_win.permute(1, 0, 2).tolist()  # [d_sae][k][window]
        self.arrays = {name: {key: a.tolist() for key, a in arr.items()} for name, arr in arrays.items()}
        self.scan, self.tok, self.bos_id, self.before = scan, tok, bos_id, scan.window[0]

    def top_token(self, i: int) -> str | None:
        if not self.tv[i][0] > 0:
            return None
        c, row = self.scan.range_of(self.ti[i][0])
        return self.tok(self.arrays[c.name]["tokens"][row])

    def index_row(self, i: int) -> dict:
        col = self.col
        return {
            "id": i,
            "group": col["groups"][i],
            "silent": col["silent"][i],
            "forget_share": _rounded(col["share"][i]),
            "freq": _rounded(col["freq"][i]),
            "freq_forget": _rounded(col["freq_f"][i]),
            "freq_retain": _rounded(col["freq_r"][i]),
            "mean_act": _rounded(col["mean_act"][i]),
            "max_act": _rounded(col["max_act"][i]),
            "max_cos_in_group": _rounded(col["max_in"][i]),
            "top_token": self.top_token(i),
        }

    def top_contexts(self, i: int) -> list[dict]:
        """Feature i's top contexts, best first, up to its first silent one."""
        return [self._context(i, j, v) for j, v in enumerate(takewhile(lambda v: v > 0, self.tv[i]))]

    def _context(self, i: int, j: int, v: float) -> dict:
        """Feature i's j-th top context: the window around its max token, BOS in front where it reaches
        position 0, tokens outside the context left out."""
        before, bos_id = self.before, self.bos_id
        c, row = self.scan.range_of(self.ti[i][j])
        arr = self.arrays[c.name]
        pos = arr["position"][row]
        bos = pos <= before and bos_id is not None  # the window reaches position 0
        ids, acts = ([int(bos_id)], [None]) if bos else ([], [])
        focus = len(ids) + before
        for k, a in enumerate(self.tw[i][j]):
            if math.isnan(a):  # outside the context
                focus -= k < before
                continue
            ids.append(arr["tokens"][row - before + k])
            acts.append(_rounded(a))
        return {
            "act": _rounded(v),
            "corpus": c.name,
            "role": c.role,
            "row": row,
            "context": arr["context"][row],
            "position": pos,
            "focus": focus,
            "bos": bos,
            "tokens": [self.tok(t) for t in ids],
            "token_ids": ids,
            "acts": acts,
        }


def _histogram(forget: list[int], retain: list[int]) -> dict:
    """A feature's histogram, cut to the bins from its first non-empty one to its last."""
    nz = [b for b in range(len(forget)) if forget[b] or retain[b]]
    lo_b, hi_b = (nz[0], nz[-1] + 1) if nz else (0, 0)
    return {
        "log10_lo": HIST_LOG10[0] + lo_b / HIST_PER_DECADE,
        "bins_per_decade": HIST_PER_DECADE,
        "forget": forget[lo_b:hi_b],
        "retain": retain[lo_b:hi_b],
    }


def _nearest(ids: list[int], cos: list[float], groups: list[int]) -> list[dict]:
    return [{"id": k, "cos": _rounded(c), "group": groups[k]} for k, c in zip(ids, cos) if k >= 0]


def _token_effects(ids: list[int], vals: list[float], tok: TokenText) -> list[dict]:
    return [{"t": tok(t), "id": t, "v": _rounded(v)} for t, v in zip(ids, vals)]


def _details(
    run: str,
    features: list[dict],
    cols: _Columns,
    labels: list[str],
    neighbours: dict,
    logits: dict | None,
    clamp_rank: dict[int, list[dict]],
    role_of: dict[int, list[dict]],
) -> Iterator[dict]:
    """Each feature's page data, made one at a time as it is written (at d_sae 16k the details of
    all features would take GBs)."""
    col, tok = cols.col, cols.tok
    near = {key: neighbours[key].tolist() for key in ("in_ids", "in_cos", "out_ids", "out_cos")}
    hist = {r: cols.scan.hist[r].tolist() for r in ROLES}
    logit_cols = {key: t.tolist() for key, t in logits.items()} if logits is not None else None
    for i, row in enumerate(features):
        detail = {
            **row,
            "run": run,
            "group_label": labels[row["group"]],
            "count_forget": col["count_f"][i],
            "count_retain": col["count_r"][i],
            "mass_forget_per_row": _rounded(col["mass_f"][i]),
            "mass_retain_per_row": _rounded(col["mass_r"][i]),
            "histogram": _histogram(hist["forget"][i], hist["retain"][i]),
            "top": cols.top_contexts(i),
            "nearest_in_group": _nearest(near["in_ids"][i], near["in_cos"][i], col["groups"]),
            "nearest_other_groups": _nearest(near["out_ids"][i], near["out_cos"][i], col["groups"]),
            "unlearning_selection": clamp_rank.get(i, []),
            "eval_roles": role_of.get(i, []),
        }
        if logit_cols is not None:
            detail["logits"] = {
                "promoted": _token_effects(logit_cols["up_ids"][i], logit_cols["up_vals"][i], tok),
                "suppressed": _token_effects(logit_cols["down_ids"][i], logit_cols["down_vals"][i], tok),
            }
        yield detail


def _groups_data(
    run: str,
    sae: nn.Module,
    groups: Tensor,
    n_groups: int,
    grouping: str,
    labels: list[str],
    hf: dict[str, Tensor],
    selections: list[dict],
) -> dict:
    """The groups page's data: sizes, mean forget share, cross-group overlap, unlearning selection."""
    silent, share = hf["silent"], hf["forget_share"]
    alive = torch.bincount(groups[~silent], minlength=n_groups).tolist()
    return {
        "run": run,
        "grouping": grouping,
        "n_groups": n_groups,
        "labels": labels,
        "sizes": torch.bincount(groups, minlength=n_groups).tolist(),
        "alive_on_heldout": alive,
        "mean_forget_share": [
            _rounded(share[(groups == g) & ~silent].nanmean()) if alive[g] else None for g in range(n_groups)
        ],
        "overlap": [
            {**o, "overlap_fro": _rounded(o["overlap_fro"]), "rms_cross_cos": _rounded(o["rms_cross_cos"])}
            for o in group_overlaps(sae.W_dec, groups, n_groups)
        ],
        "random_rms_cross_cos": _rounded(1 / math.sqrt(sae.W_dec.shape[1])),
        "unlearning": selections,
        "unlearning_note": (
            "SAEBench get_top_features on held-out frequencies: features with retain "
            "frequency below the threshold, by forget frequency; the top n are clamped "
            "for each n in [eval.unlearning] n_features_list"
        ),
    }


def _roles_not_looked_up() -> tuple[dict, dict]:
    return {}, {"known": False, "evals": [], "note": "roles in pipe eval's probing evals unknown: not looked up"}


def assemble(
    run: str,
    run_type: str,
    sae: nn.Module,
    scan: Scan,
    arrays: dict,
    tok: TokenText,
    bos_id: int | None,
    groups: Tensor,
    n_groups: int,
    grouping: str,
    neighbours: dict,
    logits: dict | None,
    retain_thresholds: list[float],
    n_features_list: list[int],
    meta: dict,
    roles: tuple[dict[int, list[dict]], dict] | None = None,
) -> RunSite:
    """One run's site; ``roles``: ``eval_roles``'s answer (None: not looked up, so unknown)."""
    d_sae = sae.W_dec.shape[0]
    role_of, roles_info = roles if roles is not None else _roles_not_looked_up()
    n_f, n_r = scan.n_rows["forget"], scan.n_rows["retain"]
    hf = heldout_frequencies(scan)
    labels = [group_label(g, n_groups) for g in range(n_groups)]
    # the selection ranks on both frequencies: none without forget and retain rows
    thresholds = retain_thresholds if n_f and n_r else []
    selections, clamp_rank = _unlearning_selections(hf, groups, n_groups, thresholds, n_features_list)
    cols = _Columns(scan, hf, groups, neighbours, arrays, tok, bos_id)
    features = [cols.index_row(i) for i in range(d_sae)]
    details = _details(run, features, cols, labels, neighbours, logits, clamp_rank, role_of)
    meta = {
        **meta,
        "run": run,
        "run_type": run_type,
        "d_sae": d_sae,
        "grouping": grouping,
        "n_groups": n_groups,
        "group_labels": labels,
        "rows": {"forget": n_f, "retain": n_r},
        "corpora": [{"name": c.name, "role": c.role, "rows": c.n_rows} for c in scan.ranges],
        "top_k": int(scan.top_vals.shape[0]),
        "window": list(scan.window),
        "eval_roles": roles_info,
    }
    gdata = _groups_data(run, sae, groups, n_groups, grouping, labels, hf, selections)
    return RunSite(run=run, run_type=run_type, meta=meta, features=features, details=details, groups=gdata)
