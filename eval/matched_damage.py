"""Unlearning at matched damage: F(b), cross-fitted best settings, and document-bootstrap replicates.

A clamp sweep gives one point (retain ΔCE, forget ΔCE) per setting. ``best_selectivity`` (the
largest ΔCE_f − ΔCE_r) grows with the size of the edit, so the headline figure here is **F(b)**:
the forget ΔCE reached at retain ΔCE = b, read off the sweep's upper frontier (below). Every figure
is computed from per-*document* sums, so the same code gives the point estimate (every document
once) and each bootstrap replicate (documents drawn with replacement).

- **Documents**: held-out contexts are consecutive cuts of the corpus's documents joined with EOS
  (``common.corpora.tokenize_contexts``); a context belongs to the document holding most of its
  tokens (``document_ids``). Neighbouring windows of one document are correlated, so the eval's error
  is resampled by document, never by window.
- **F(b)** (``f_at_budget``): the points of the sweep plus the unedited model (0, 0); the upper
  frontier is the points no other point beats in both (less or equal retain damage, more or equal
  forget damage), sorted by retain damage; F(b) interpolates linearly between the two frontier
  points around b. Where no setting reaches retain damage b, F(b) is "not reached" (nan), never
  extrapolated. Beside it the same interpolation of the forget ΔCE on the forget text's domain
  tokens and on the rest (``domain_tokens``). F(b) is **cross-fitted**: the bracketing points and
  weight are found on one half of the documents and the forget damage scored on the other, both
  ways averaged (nan unless both halves reach b). ``F_<b>_origin`` (0, 0.5, 1): on how many halves
  the lower bracketing point is the unedited model itself — the chord the sweep's ladder of smaller
  edits (``eval/unlearning.py`` ``bracket_ladder``) exists to avoid; ``bracket_points`` describes
  the measured points around b.
- **Cross-fitting** (``crossfit``): documents of each corpus are split in two halves by a seeded
  permutation; the best setting is chosen on one half and scored on the other, then the halves
  swap and the two scores are averaged. No setting is ever scored on the documents that chose it.
- **Replicates**: ``bootstrap_weights`` draws B resamples of documents (counts per document) from a
  fixed seed, so every run evaluated on the same documents gets the same draws: replicate i of run A
  and replicate i of run B saw the same documents, and ``eval/aggregate.py`` combines replicates
  across seeds (a seeds × documents bootstrap).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

from orthosae.common.config import budget_key

BOOTSTRAP_B = 500
BOOTSTRAP_SEED = 0
CROSSFIT_SEED = 1
RETAIN_CE_TOLERANCE = 0.01  # loss_unlearning_score: retain CE may rise by 1 % (eval/unlearning.py)
SELECTIVITY_EPS = 1e-3  # nats: the selectivity ratio's floor on retain damage
PARTS = ("all", "domain", "rest")


# ---- documents and domain tokens ----


def document_ids(contexts: np.ndarray, eos: int) -> np.ndarray:
    """Per context (``[n, T]`` ids, BOS first, consecutive cuts of one EOS-joined stream), the index
    of the document that holds most of its tokens (ties: the earlier document)."""
    toks = np.asarray(contexts)[:, 1:]
    doc_of_token = np.cumsum((toks == eos).ravel()).reshape(toks.shape)  # EOS opens the next document
    out = np.empty(len(toks), dtype=np.int64)
    for i, row in enumerate(doc_of_token):
        values, counts = np.unique(row, return_counts=True)
        out[i] = values[np.argmax(counts)]
    _, dense = np.unique(out, return_inverse=True)
    return dense.astype(np.int64)


def domain_tokens(forget_counts: np.ndarray, retain_counts: np.ndarray, ratio: float, min_count: int) -> np.ndarray:
    """Token ids much more frequent in forget than in retain training text: counted at least
    ``min_count`` times in the forget text, and with a forget frequency at least ``ratio`` times the
    retain frequency (the retain count smoothed by +1, so a token absent from retain text needs
    ``ratio`` × 1/N_retain, not any count at all)."""
    f = np.asarray(forget_counts, dtype=np.float64)
    r = np.asarray(retain_counts, dtype=np.float64)
    n = max(len(f), len(r))
    f, r = np.pad(f, (0, n - len(f))), np.pad(r, (0, n - len(r)))
    pf = f / max(f.sum(), 1.0)
    pr = (r + 1.0) / max(r.sum(), 1.0)
    return np.flatnonzero((f >= min_count) & (pf >= ratio * pr))


# ---- the bootstrap ----


def bootstrap_weights(groups: np.ndarray, n_boot: int = BOOTSTRAP_B, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """``[n_boot, n_groups]`` counts: each row draws n_groups groups with replacement. Rows depend
    on (seed, n_groups) only, so runs scored on the same documents share their draws."""
    n = int(np.max(groups)) + 1 if len(groups) else 0
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64) if n else np.zeros((n_boot, 0))


def interval(replicates: Sequence[float]) -> list[float]:
    """95 % percentile interval of finite replicates (nan when fewer than half are finite)."""
    x = np.asarray(replicates, dtype=np.float64)
    ok = x[np.isfinite(x)]
    if len(ok) < max(2, len(x) // 2):
        return [math.nan, math.nan]
    return [float(np.percentile(ok, 2.5)), float(np.percentile(ok, 97.5))]


def halves(n_docs: int, seed: int = CROSSFIT_SEED) -> np.ndarray:
    """0/1 per document: a seeded split into two halves (sizes differ by at most one)."""
    h = np.zeros(n_docs, dtype=np.int64)
    h[np.random.default_rng(seed).permutation(n_docs)[n_docs // 2 :]] = 1
    return h


# ---- per-document sums -> figures ----


def per_document(values: np.ndarray, docs: np.ndarray, n_docs: int) -> np.ndarray:
    """Sum ``values`` (``[..., n_contexts]``) over the contexts of each document -> ``[..., n_docs]``."""
    onehot = np.zeros((len(docs), n_docs))
    onehot[np.arange(len(docs)), docs] = 1.0
    return np.asarray(values, dtype=np.float64) @ onehot


def increases(edited: np.ndarray, clean: np.ndarray, counts: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mean CE increase per token under document weights: edited ``[S, D]``, clean and counts ``[D]``,
    w ``[B, D]`` -> ``[B, S]``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ edited.T - (w @ clean)[:, None]) / (w @ counts)[:, None]


def frontier(retain: np.ndarray, forget: np.ndarray) -> np.ndarray:
    """Indices of the upper frontier of points (retain[i], forget[i]) sorted by retain: the points
    no other point beats with retain <= and forget >= (one of equal points kept)."""
    order = np.lexsort((-forget, retain))  # by retain, then the larger forget first
    keep, best = [], -math.inf
    for i in order:
        if forget[i] > best:
            keep.append(i)
            best = forget[i]
    return np.asarray(keep, dtype=np.int64)


def budget_weights(retain: np.ndarray, forget: np.ndarray, b: float) -> tuple[int, int, float] | None:
    """(i, j, t): F(b) = (1 − t)·forget[i] + t·forget[j] on the frontier; None where no point
    reaches retain damage b."""
    if not np.all(np.isfinite(retain)) or not np.all(np.isfinite(forget)) or np.max(retain) < b:
        return None
    front = frontier(retain, forget)
    r = retain[front]
    if b <= r[0]:
        return int(front[0]), int(front[0]), 0.0  # the least damaging frontier point already costs b
    if b >= r[-1]:
        return int(front[-1]), int(front[-1]), 0.0  # the budget is not binding: the best point costs less
    k = int(np.searchsorted(r, b, side="right")) - 1
    i, j = int(front[k]), int(front[k + 1])
    t = (b - retain[i]) / (retain[j] - retain[i])
    return i, j, float(t)


def f_at_budget(retain: np.ndarray, forget: np.ndarray, b: float, *others: np.ndarray) -> list[float]:
    """F(b) and the same interpolation of each array in ``others``; nan where not reached.
    ``retain`` / ``forget`` include the unedited model's (0, 0) if the caller wants it."""
    w = budget_weights(np.asarray(retain, float), np.asarray(forget, float), b)
    arrays = (forget, *others)
    if w is None:
        return [math.nan] * len(arrays)
    i, j, t = w
    return [float((1 - t) * a[i] + t * a[j]) for a in arrays]


def crossfit(score_a: np.ndarray, score_b: np.ndarray, choose_a: np.ndarray, choose_b: np.ndarray) -> np.ndarray:
    """``[B]``: the setting chosen by ``choose_*`` (``[B, S]``, argmax; rows all nan -> no setting,
    score 0) on one half, scored by ``score_*`` on the other; the two directions averaged."""

    def pick(choose, score):
        ok = np.isfinite(choose).any(axis=1)
        idx = np.argmax(np.where(np.isfinite(choose), choose, -np.inf), axis=1)
        return np.where(ok, score[np.arange(len(score)), idx], 0.0)

    return 0.5 * (pick(choose_a, score_b) + pick(choose_b, score_a))


def loss_matrices(clean: dict, edited: list[dict], docs: dict, quality: dict | None = None) -> dict:
    """Per-document sums of one run's sweep. ``clean[corpus]`` / ``edited[s][corpus]``: per-context
    arrays ``sum_<part>``, ``n_<part>`` and (edited) ``fired``, ``positions``; ``docs[corpus]``: the
    context -> document index. ``quality[corpus]`` (optional): per-context sums with the SAE's
    reconstruction spliced in — ``recon_all`` (CE), ``zero_all`` (CE zero-ablated), ``sse``, ``sx``
    ``[n, d]``, ``sxx``, ``npos`` (explained variance) — for the quality figures on these documents."""
    out = {}
    for name in ("forget", "retain"):
        d = docs[name]
        n_docs = int(d.max()) + 1
        m = {"docs": n_docs}
        for part in PARTS:
            m[f"clean_{part}"] = per_document(clean[name][f"sum_{part}"], d, n_docs)
            m[f"n_{part}"] = per_document(clean[name][f"n_{part}"], d, n_docs)
            m[f"edit_{part}"] = per_document(np.stack([e[name][f"sum_{part}"] for e in edited]), d, n_docs)
        m["fired"] = per_document(np.stack([e[name]["fired"] for e in edited]), d, n_docs)
        m["positions"] = per_document(clean[name]["positions"], d, n_docs)
        for k, v in (quality or {}).get(name, {}).items():
            m[k] = (
                per_document(np.asarray(v, dtype=np.float64).T, d, n_docs).T
                if np.ndim(v) == 2
                else per_document(v, d, n_docs)
            )
        out[name] = m
    return out


def _half_figures(f: dict, r: dict, wfh: np.ndarray, wrh: np.ndarray) -> dict[str, np.ndarray]:
    """One half's selectivity, relative forget increase (and where retain qualifies), and the
    frontier's points: the sweep plus the unedited model at (0, 0), for F(b)."""
    z = np.zeros((len(wfh), 1))
    fi = {p: increases(f[f"edit_{p}"], f[f"clean_{p}"], f[f"n_{p}"], wfh) for p in PARTS}
    ri = increases(r["edit_all"], r["clean_all"], r["n_all"], wrh)
    with np.errstate(invalid="ignore", divide="ignore"):
        clean_f = (wfh @ f["clean_all"]) / (wfh @ f["n_all"])
        clean_r = (wrh @ r["clean_all"]) / (wrh @ r["n_all"])
        rel = fi["all"] / clean_f[:, None]
        qualifies = ri <= RETAIN_CE_TOLERANCE * clean_r[:, None]
    return {
        "sel": fi["all"] - ri,
        "rel": rel,
        "rel_ok": np.where(qualifies, rel, np.nan),
        "R": np.hstack([z, ri]),
        **{f"F_{p}": np.hstack([z, fi[p]]) for p in PARTS},
    }


def _crossfit_budget(half: dict, b: float) -> tuple[np.ndarray, np.ndarray]:
    """F(b), cross-fitted: the frontier's bracketing points and weight found on one half, the forget
    damage of that same interpolation scored on the other half; the two directions averaged.
    Returns ``[B, len(PARTS)]`` and the share of halves resting on the origin chord ``[B]``."""
    B = len(half[0]["R"])
    scored = np.full((2, B, len(PARTS)), np.nan)
    origin = np.zeros((2, B))
    for h in (0, 1):
        sel, other = half[h], half[1 - h]
        for k in range(B):
            w = budget_weights(sel["R"][k], sel["F_all"][k], b)
            if w is None:
                continue
            i, j, t = w
            origin[h, k] = i == 0 and t > 0
            scored[h, k] = [(1 - t) * other[f"F_{p}"][k, i] + t * other[f"F_{p}"][k, j] for p in PARTS]
    return scored.mean(axis=0), origin.mean(axis=0)


def figures(mats: dict, wf: np.ndarray, wr: np.ndarray, budgets: Sequence[float]) -> dict[str, np.ndarray]:
    """Every summary figure of one run's sweep under document weights ``wf`` ``[B, Df]`` and ``wr``
    ``[B, Dr]`` (a point estimate is B = 1 with all weights 1). Returns name -> ``[B]``."""
    f, r = mats["forget"], mats["retain"]
    B = len(wf)
    inc = {
        (c, p): increases(m[f"edit_{p}"], m[f"clean_{p}"], m[f"n_{p}"], w)
        for c, m, w in (("forget", f, wf), ("retain", r, wr))
        for p in PARTS
    }
    fa, ra = inc[("forget", "all")], inc[("retain", "all")]
    sel = fa - ra
    out: dict[str, np.ndarray] = {"best_selectivity": np.nanmax(sel, axis=1)}  # loss_matrices: >= 1 setting
    best = np.argmax(np.where(np.isfinite(sel), sel, -np.inf), axis=1)
    rows = np.arange(B)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["selectivity_ratio_at_best"] = fa[rows, best] / (np.maximum(ra[rows, best], 0.0) + SELECTIVITY_EPS)
        cov_f = (wf @ f["fired"].T) / (wf @ f["positions"])[:, None]
        cov_r = (wr @ r["fired"].T) / (wr @ r["positions"])[:, None]
    out["forget_coverage_at_best"], out["retain_coverage_at_best"] = cov_f[rows, best], cov_r[rows, best]
    if "recon_all" in f:
        out.update(quality_figures(f, r, wf, wr))
    # cross-fitting: choose on one half of the documents, score on the other
    hf, hr = halves(f["docs"]), halves(r["docs"])
    # a draw may hold no document of a half: its figures are nan there
    half = {h: _half_figures(f, r, wf * (hf == h), wr * (hr == h)) for h in (0, 1)}
    for b in budgets:
        vals, origin = _crossfit_budget(half, b)
        out[budget_key(b)], out[budget_key(b, "domain")], out[budget_key(b, "rest")] = vals.T
        out[budget_key(b, "origin")] = origin  # 0, 0.5 or 1: halves whose F(b) rests on the origin chord
    out["best_selectivity_crossfit"] = crossfit(half[0]["sel"], half[1]["sel"], half[0]["sel"], half[1]["sel"])
    out["loss_unlearning_score_crossfit"] = crossfit(
        half[0]["rel"], half[1]["rel"], half[0]["rel_ok"], half[1]["rel_ok"]
    )
    return out


def quality_figures(f: dict, r: dict, wf: np.ndarray, wr: np.ndarray) -> dict[str, np.ndarray]:
    """CE-loss score and explained variance of the SAE on the forget and retain documents pooled,
    under the same document weights as the unlearning figures (so a replicate of each is paired):
    (CE_zero − CE_sae) / (CE_zero − CE_clean) and 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²."""

    def pooled(key):
        return wf @ f[key] + wr @ r[key]

    with np.errstate(invalid="ignore", divide="ignore"):
        zero, recon, clean = pooled("zero_all"), pooled("recon_all"), pooled("clean_all")
        ce_score = (zero - recon) / (zero - clean)
        sx = pooled("sx")  # [B, d]
        total = pooled("sxx") - (sx**2).sum(axis=1) / pooled("npos")
        ev = 1.0 - pooled("sse") / total
    return {"ce_loss_score_docs": ce_score, "explained_variance_docs": ev}


def rests_on_origin(mats: dict, budgets: Sequence[float]) -> bool:
    """Whether some budget's F(b), on either half of the documents (every document once), would be
    interpolated from the unedited model's (0, 0): no measured edit at or below b there. A budget no
    setting reaches does not count (F(b) is then n/a, and smaller edits cannot help)."""
    ones_f, ones_r = np.ones((1, mats["forget"]["docs"])), np.ones((1, mats["retain"]["docs"]))
    point = figures(mats, ones_f, ones_r, budgets)
    return any(point[budget_key(b, "origin")][0] > 0 for b in budgets)


def bracket_points(rows: Sequence[dict], b: float) -> dict:
    """The measured sweep points around retain ΔCE b (every held-out document once): each with its
    setting, ΔCE forget and retain, their ratio and the forget ΔCE per clamped feature (a fractional
    clamp counts its strength), so concentration (large edits per feature) and specificity (forget
    per unit of retain) can be told apart. ``"origin"`` where the lower point is the unedited model."""
    retain = np.array([0.0] + [x["retain_ce_increase"] for x in rows])
    forget = np.array([0.0] + [x["forget_ce_increase"] for x in rows])
    w = budget_weights(retain, forget, b)
    if w is None:
        return {"reached": False}

    def point(k: int):
        if k == 0:
            return "origin"
        x = rows[k - 1]
        feats = max(x.get("n_features_used", x.get("n_features", 0)) - 1 + x.get("strength", 1.0), 1e-12)
        ratio = x["forget_ce_increase"] / x["retain_ce_increase"] if x["retain_ce_increase"] > 0 else math.inf
        return {
            "n_features": x.get("n_features"),
            "strength": x.get("strength", 1.0),
            "retain_ce_increase": x["retain_ce_increase"],
            "forget_ce_increase": x["forget_ce_increase"],
            "forget_over_retain": ratio,
            "forget_per_feature": x["forget_ce_increase"] / feats,
        }

    i, j, t = w
    return {"reached": True, "lower": point(i), "upper": point(j), "t": t}


def summarise(mats: dict, budgets: Sequence[float], n_boot: int = BOOTSTRAP_B) -> dict:
    """Point estimates (every document once), 95 % document-bootstrap intervals and the replicates."""
    ones_f, ones_r = np.ones((1, mats["forget"]["docs"])), np.ones((1, mats["retain"]["docs"]))
    point = {k: float(v[0]) for k, v in figures(mats, ones_f, ones_r, budgets).items()}
    wf = bootstrap_weights(np.arange(mats["forget"]["docs"]), n_boot, BOOTSTRAP_SEED)
    wr = bootstrap_weights(np.arange(mats["retain"]["docs"]), n_boot, BOOTSTRAP_SEED + 1)
    reps = figures(mats, wf, wr, budgets)
    return {
        "values": point,
        "ci95": {k: interval(v) for k, v in reps.items()},
        "se": {k: float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else math.nan for k, v in reps.items()},
        "replicates": {k: [round(float(x), 6) if math.isfinite(x) else None for x in v] for k, v in reps.items()},
    }


def draws_fingerprint(docs: dict[str, np.ndarray]) -> str:
    """Identifies the documents behind the draws: runs with equal fingerprints share replicates."""
    h = hashlib.sha1()
    for name in sorted(docs):
        h.update(name.encode())
        h.update(np.asarray(docs[name], dtype=np.int64).tobytes())
    h.update(f"{BOOTSTRAP_B}:{BOOTSTRAP_SEED}".encode())
    return h.hexdigest()[:16]
