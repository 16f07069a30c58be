"""eval.browser_scan: the streaming pass keeps what one pass over all held-out rows would."""

import math

import pytest
import torch

from orthosae.common.store import open_store_for
from tests._browser_site import TOP_K, direct


@pytest.mark.parametrize("max_rows", [0, 40])
def test_streaming_top_k_equals_top_k_over_all_contexts(site, monkeypatch, max_rows):
    """Small batches (2 contexts each) so the running top-k is merged many times."""
    import orthosae.eval.browser_scan as browser_scan

    path, _, _ = site
    cfg, sae, rows = direct(path, "adaptive")
    reader = open_store_for(cfg)
    monkeypatch.setattr(browser_scan, "ROW_BATCH", 2 * (cfg.harvest.context_length - 1))
    calls = []
    scan = browser_scan.scan_heldout(
        sae, reader, list(rows), top_k=TOP_K, window=(3, 2), max_rows=max_rows, on_rows=calls.append
    )
    rpc = cfg.harvest.context_length - 1
    keep = {n: len(r["f"]) if not max_rows else max_rows // rpc * rpc for n, r in rows.items()}
    assert len(calls) > (4 if not max_rows else 1) and sum(calls) == sum(keep.values())
    f = torch.cat([r["f"][: keep[n]] for n, r in rows.items()])  # global row ids follow this order
    ctx_max = f.reshape(-1, rpc, f.shape[1]).amax(1)
    kk = min(TOP_K, ctx_max.shape[0])  # fewer contexts than k: the rest stay empty
    assert torch.equal(scan.top_vals[:kk], torch.topk(ctx_max, kk, dim=0).values)
    assert (scan.top_vals[kk:] == -math.inf).all() and (scan.top_ids[kk:] == -1).all()
    # ties may order contexts differently: every kept row must hold the value it claims, each
    # context at most once per feature
    assert torch.equal(f.gather(0, scan.top_ids[:kk]), scan.top_vals[:kk])
    for i in range(f.shape[1]):
        live = scan.top_ids[scan.top_vals[:, i] > 0, i]
        assert len(set((live // rpc).tolist())) == len(live)
    for j in range(kk):
        for i in range(f.shape[1]):
            g = int(scan.top_ids[j, i])
            for k, off in enumerate(range(-3, 3)):
                same_ctx = 0 <= g % rpc + off < rpc
                got = float(scan.top_win[j, i, k])
                assert (float(f[g + off, i]) == got) if same_ctx else math.isnan(got)
    for role in ("forget", "retain"):
        fr = torch.cat([r["f"][: keep[n]] for n, r in rows.items() if r["role"] == role])
        assert torch.equal(scan.count[role], (fr > 0).sum(0))
        assert torch.allclose(scan.mass[role], fr.double().sum(0))
        assert int(scan.hist[role].sum()) == int((fr > 0).sum())
